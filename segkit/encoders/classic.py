"""The classic classifiers, built as their papers describe them (classifier-only names).

``lenet5`` — LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document
Recognition", Section II.B, for 32x32 images:

====  ==========================================================  =========  ==========
layer what                                                         output     parameters
====  ==========================================================  =========  ==========
C1    6 maps, 5x5 convolution                                     28x28x6    156
S2    2x2 sum x trainable coefficient + trainable bias, per map   14x14x6    12
C3    16 maps, 5x5, partial connection table (Table I)            10x10x16   1,516
S4    as S2                                                       5x5x16     32
C5    120 maps, 5x5 convolution                                   1x1x120    48,120
F6    84 units, fully connected                                   84         10,164
out   fully connected to ``num_classes``                          classes    85 x classes
====  ==========================================================  =========  ==========

Every layer up to F6 is followed by the paper's squashing function ``1.7159 tanh(2a/3)``
(Appendix A). C3's table is implemented with exactly one weight per connection (60 kernels of
5x5), scattered into a dense kernel at run time. Weights start uniform in ``±2.4 / fan_in``
(Appendix A). The paper's output layer is 10 Euclidean RBF units with fixed, hand-designed
parameters (stylised 7x12 bitmaps); segkit uses an ordinary trainable ``nn.Linear(84,
num_classes)`` with logits for cross-entropy instead, so any class count works. LeNet-5 takes
exactly 32x32 images; ``num_classes`` defaults to 10.

``alexnet`` — Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", Section 3 and Figure 2, as one network (the paper split every
layer over two GPUs, with conv2, conv4 and conv5 seeing only their own GPU's half; here every layer
sees all its inputs, which gives the 62,378,344 parameters usually quoted; torchvision's
``alexnet`` is the different "one weird trick" variant with 64-192-384-256-256 filters):

====================================================  ==========
layer                                                  output at 227x227
====================================================  ==========
conv1 96 @ 11x11 / 4, ReLU, LRN                        55x55x96
max-pool 3x3 / 2 (overlapping)                         27x27x96
conv2 256 @ 5x5 pad 2, ReLU, LRN                       27x27x256
max-pool 3x3 / 2                                       13x13x256
conv3 384, conv4 384, conv5 256 @ 3x3 pad 1, ReLU      13x13x...
max-pool 3x3 / 2                                       6x6x256
fc6 4096, ReLU, dropout 0.5; fc7 4096, ReLU, dropout   4096
fc8 ``num_classes``                                    classes
====================================================  ==========

Local response normalisation with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75 in the
paper's formula ``a / (k + alpha * sum a^2) ^ beta``; PyTorch's ``LocalResponseNorm`` divides
alpha by n, so it is given ``alpha * n``. Dropout follows fc6 and fc7, where the paper puts it.
Initialisation is the paper's: weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7
and 0 elsewhere. The paper's 224x224 crops do not fit its own arithmetic (55x55 after conv1
needs 227x227); 227x227 is the input, and other sizes of at least 67x67 are average-pooled to
6x6 before fc6 (torchvision's convention; the identity at 227x227).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import Classifier, check_input, register_classifier

__all__ = ["AlexNet", "LeNet5", "PartialConv2d", "Subsampling", "LENET5_C3_TABLE", "lenet_squash"]

# Table I of LeCun et al. 1998: the S2 maps each C3 map takes, column by column. Maps 0-5 take three
# neighbouring S2 maps, 6-11 four neighbouring ones, 12-14 four non-neighbouring ones, 15 all six.
LENET5_C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


def lenet_squash(x: Tensor) -> Tensor:
    """The squashing function of LeCun et al. 1998, Appendix A: ``1.7159 tanh(2x / 3)``."""
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


def _uniform_fan_in_(tensor: Tensor, fan_in: int) -> None:
    bound = 2.4 / fan_in
    nn.init.uniform_(tensor, -bound, bound)


class Subsampling(nn.Module):
    """LeNet-5's S layers: per map, the sum of each 2x2 cell times a trainable coefficient, plus a
    trainable bias. ``(N, C, H, W)`` -> ``(N, C, H / 2, W / 2)``; 2 parameters per map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        _uniform_fan_in_(self.weight, 4)
        _uniform_fan_in_(self.bias, 4)

    def forward(self, x: Tensor) -> Tensor:
        total = F.avg_pool2d(x, 2) * 4
        return total * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv2d(nn.Module):
    """A valid convolution in which output map ``j`` sees only the input maps ``table[j]``.

    One ``k x k`` kernel per connection (``weight``: ``(connections, k, k)``) and one bias per output
    map, so the parameter count is the table's: ``connections * k * k + len(table)``.
    """

    def __init__(self, in_channels: int, table: tuple[tuple[int, ...], ...], kernel_size: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel_size
        # Flat positions (j * in_channels + i) of the connections in the dense (out, in) kernel grid,
        # row-major: all connections of output map 0, then map 1, ... (the order of ``weight``).
        rows = [[j * in_channels + i for i in sorted(set(inputs))] for j, inputs in enumerate(table)]
        self.register_buffer("connections", torch.tensor([p for row in rows for p in row]), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(self.connections), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        start = 0
        for j, row in enumerate(rows):
            fan_in = len(row) * kernel_size * kernel_size
            _uniform_fan_in_(self.weight.data[start : start + len(row)], fan_in)
            _uniform_fan_in_(self.bias.data[j : j + 1], fan_in)
            start += len(row)

    def dense_weight(self) -> Tensor:
        """The equivalent ``(out, in, k, k)`` kernel, zero where the table has no connection."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        dense = dense.index_copy(0, self.connections, self.weight)
        return dense.view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class LeNet5(Classifier):
    """LeNet-5 (module doc): ``(N, C, 32, 32)`` -> logits ``(N, num_classes)``."""

    first_conv = "c1"
    head_prefixes = ("output.",)
    input_size = 32

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.s2 = Subsampling(6)
        self.c3 = PartialConv2d(6, LENET5_C3_TABLE, kernel_size=5)
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        for layer in (self.c1, self.c5, self.f6, self.output):
            fan_in = layer.weight[0].numel()
            _uniform_fan_in_(layer.weight.data, fan_in)
            _uniform_fan_in_(layer.bias.data, fan_in)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.input_size, exact=True)
        x = lenet_squash(self.c1(x))
        x = lenet_squash(self.s2(x))
        x = lenet_squash(self.c3(x))
        x = lenet_squash(self.s4(x))
        x = lenet_squash(self.c5(x))
        x = lenet_squash(self.f6(torch.flatten(x, 1)))
        return self.output(x)


class AlexNet(Classifier):
    """AlexNet as one network (module doc): ``(N, C, 227, 227)`` -> logits ``(N, num_classes)``."""

    first_conv = "features.conv1"
    head_prefixes = ("classifier.fc8.",)
    min_input_size = 67

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        n = 5
        lrn = dict(size=n, alpha=1e-4 * n, beta=0.75, k=2.0)  # the paper's alpha, see module doc
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 96, kernel_size=11, stride=4)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("norm1", nn.LocalResponseNorm(**lrn)),  # type: ignore[arg-type]
                    ("pool1", nn.MaxPool2d(kernel_size=3, stride=2)),
                    ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("norm2", nn.LocalResponseNorm(**lrn)),  # type: ignore[arg-type]
                    ("pool2", nn.MaxPool2d(kernel_size=3, stride=2)),
                    ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1)),
                    ("relu5", nn.ReLU(inplace=True)),
                    ("pool5", nn.MaxPool2d(kernel_size=3, stride=2)),
                ]
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(256 * 6 * 6, 4096)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop6", nn.Dropout(p=dropout)),
                    ("fc7", nn.Linear(4096, 4096)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(p=dropout)),
                    ("fc8", nn.Linear(4096, num_classes)),
                ]
            )
        )
        ones = {"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"}
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.min_input_size)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_classifier("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, **kwargs: Any) -> LeNet5:
    """lenet5: LeCun et al. 1998, 32x32 input, C3's partial connection table; 10 classes by default."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_classifier("alexnet")
def alexnet(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> AlexNet:
    """alexnet: Krizhevsky et al. 2012 as one network, 227x227 input, 62,378,344 parameters."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, **kwargs)

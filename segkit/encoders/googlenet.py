"""GoogLeNet (Inception v1) of Szegedy et al. 2014 ("Going Deeper with Convolutions").

Built as torchvision's ``models/googlenet.py`` builds it, so a state dict saved from
``torchvision.models.googlenet(aux_logits=True)`` — and the file torchvision publishes,
``googlenet-1378be20.pth`` — loads without conversion and gives the same logits:

* ``conv1`` (7x7/2), ``conv2`` (1x1), ``conv3`` (3x3) as convolution + BatchNorm (eps 0.001) +
  ReLU blocks (the paper had no batch norm and a local response normalisation instead; the
  ported weights are for this BN variant); ``maxpool1..4`` with ``ceil_mode`` as in Caffe;
* nine Inception modules ``inception3a`` .. ``inception5b`` with Table 1's widths. Their "5x5"
  branch is a 3x3 convolution, as in torchvision (pytorch/vision#906): the released weights
  have that shape;
* two auxiliary classifiers, ``aux1`` on ``inception4a``'s output and ``aux2`` on
  ``inception4d``'s (4x4 average pool, 1x1 conv (128), fc 1024, dropout 0.7, fc), dropout 0.2 and
  ``fc`` on the main head.

In training mode the classifier returns ``(logits, aux1_logits, aux2_logits)`` — aux1 is the
shallower head (note: torchvision's namedtuple has the order ``(logits, aux_logits2,
aux_logits1)``); in eval mode, or with ``aux_logits=False``, only the logits. The paper weights
each auxiliary loss by 0.3. Inputs of at least 15x15 (224x224 is the paper's size).

Encoder features: ``conv1`` (/2, 64), ``conv3`` (/4, 192), ``inception3b`` (/8, 480),
``inception4e`` (/16, 832), ``inception5b`` (/32, 1024); exactly ``H / r`` for sides that are
multiples of 32 (the ceil-mode pools round up otherwise). Switches: a 2x2 max over the image for
the strided ``conv1``, then the indices of ``maxpool1`` .. ``maxpool4``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import (
    Classifier,
    Encoder,
    check_input,
    register_classifier,
    register_encoder,
    switches_2x2,
)
from segkit.encoders.inception import (
    BasicConv2d,
    apply_transform_input,
    max_pool_with_switches,
    trunc_normal_init,
)

__all__ = ["GoogLeNet", "GoogLeNetEncoder", "Inception", "InceptionAux"]


class Inception(nn.Module):
    """Inception module: 1x1, 1x1 -> 3x3, 1x1 -> "5x5" (3x3, see module doc), 3x3 max-pool -> 1x1.

    ``(N, C_in, H, W)`` -> ``(N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1), BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1), BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True), BasicConv2d(in_channels, pool_proj, kernel_size=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 adaptive average pool, 1x1 conv (128), fc 1024 + ReLU, dropout, fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class _GoogLeNetBody(nn.Module):
    """Stem and the nine Inception modules (Table 1 of the paper), torchvision's names."""

    first_conv = "conv1.conv"

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.transform_input = False
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)


class GoogLeNetEncoder(_GoogLeNetBody, Encoder):
    """GoogLeNet feature extractor: reductions (2, 4, 8, 16, 32), channels (64, 192, 480, 832, 1024).

    ``transform_input`` (set by ``create_encoder`` when 3-channel weights are loaded) rescales
    ImageNet-normalised RGB to the [-1, 1] range the ported checkpoint expects.
    """

    out_channels = (64, 192, 480, 832, 1024)
    reductions = (2, 4, 8, 16, 32)
    checkpoint_ignore = ("aux1.", "aux2.", "fc.")

    def __init__(self, in_channels: int = 3, transform_input: bool = False) -> None:
        super().__init__(in_channels)
        self.transform_input = transform_input
        trunc_normal_init(self, 0.01)

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        if self.transform_input:
            x = apply_transform_input(x)
        switches: list[Tensor | None] = []
        if record_switches:  # conv1 is strided: 2x2 max over the image
            switches.append(switches_2x2(x))
        f0 = self.conv1(x)
        x, indices = max_pool_with_switches(self.maxpool1, f0, record_switches)
        switches.append(indices)
        f1 = self.conv3(self.conv2(x))
        x, indices = max_pool_with_switches(self.maxpool2, f1, record_switches)
        switches.append(indices)
        f2 = self.inception3b(self.inception3a(x))
        x, indices = max_pool_with_switches(self.maxpool3, f2, record_switches)
        switches.append(indices)
        f3 = self.inception4e(self.inception4d(self.inception4c(self.inception4b(self.inception4a(x)))))
        x, indices = max_pool_with_switches(self.maxpool4, f3, record_switches)
        switches.append(indices)
        f4 = self.inception5b(self.inception5a(x))
        return [f0, f1, f2, f3, f4], [s for s in switches if s is not None]


class GoogLeNet(_GoogLeNetBody, Classifier):
    """GoogLeNet classifier, torchvision's: ``(N, C, H, W)`` -> logits ``(N, num_classes)``.

    Training mode with ``aux_logits``: ``(logits, aux1_logits, aux2_logits)``.
    """

    head_prefixes = ("fc.", "aux1.fc2.", "aux2.fc2.")
    # torchvision's googlenet(weights=...) has no auxiliary heads unless asked: a file of a fine-tuned
    # copy lacks them, and they start fresh (logged) instead of refusing the file.
    optional_prefixes = ("aux1.", "aux2.")
    min_input_size = 15

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__(in_channels)
        self.aux_logits = bool(aux_logits)
        self.aux1: InceptionAux | None = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2: InceptionAux | None = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None
        # For loading a file that has the auxiliary heads into a model without them.
        self.checkpoint_ignore: tuple[str, ...] = () if aux_logits else ("aux1.", "aux2.")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.transform_input = transform_input
        trunc_normal_init(self, 0.01)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        check_input(self, x, self.min_input_size)
        if self.transform_input:
            x = apply_transform_input(x)
        # ``aux_logits`` may be switched off after construction, as in torchvision.
        with_aux = self.training and self.aux_logits and self.aux1 is not None and self.aux2 is not None
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if with_aux else None  # type: ignore[misc]
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if with_aux else None  # type: ignore[misc]
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        # Same order of random draws as torchvision (aux1, aux2, main): same dropout masks per seed.
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if aux1 is not None and aux2 is not None:
            return x, aux1, aux2
        return x


@register_encoder("googlenet")
def googlenet_encoder(in_channels: int = 3, **kwargs: Any) -> GoogLeNetEncoder:
    """googlenet: GoogLeNet (Inception v1) features, reductions 2..32."""
    return GoogLeNetEncoder(in_channels=in_channels, **kwargs)


@register_classifier("googlenet")
def googlenet(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> GoogLeNet:
    """googlenet: torchvision's GoogLeNet with its two auxiliary classifiers (``aux_logits=True``)."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, **kwargs)

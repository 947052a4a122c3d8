"""Inception-v3 of Szegedy et al. 2015 ("Rethinking the Inception Architecture for Computer Vision").

Built as torchvision's ``models/inception.py`` builds it (module names ``Conv2d_1a_3x3`` ...
``Mixed_7c``, ``AuxLogits``, ``fc``; every convolution followed by BatchNorm with eps 0.001), so a
state dict saved from ``torchvision.models.inception_v3(aux_logits=True)`` — and the file
torchvision publishes, ``inception_v3_google-0cc3c7bd.pth`` — loads without conversion and gives
the same logits. The classifier takes inputs of at least 75x75 (299x299 is the paper's size); in
training mode it returns ``(logits, aux_logits)``, and its auxiliary head then needs at least
299x299 (its 5x5 convolution runs on the 17x17 ``Mixed_6e`` map pooled to 5x5).

The encoder and "same" padding. The network uses *valid* (unpadded) convolutions and pools in its
stem and in its two grid reductions (``Mixed_6a``, ``Mixed_7a``), so its maps are 149, 147, 73, 71,
35, 17, 8 pixels at 299x299: no stride is exact. For segmentation the encoder pads those layers
as smp's Inception encoders do: ``padding = k // 2`` on the stride-1 valid convolutions
(``Conv2d_2a_3x3``, ``Conv2d_4a_3x3``) and ``padding = 1`` on the 3x3 stride-2 convolutions and
max-pools. Padding has no parameters, so the same checkpoint files load; an input whose sides are
multiples of 32 then gives maps of exactly ``H / r`` for r = 2, 4, 8, 16, 32. The encoder's
activations are thus not the classifier's (its borders see zeros the classifier never saw), which
is the usual price of this adaptation; the classifier itself is torchvision's, unpadded.

Encoder features: ``Conv2d_2b_3x3`` (/2, 64), ``Conv2d_4a_3x3`` (/4, 192), ``Mixed_5d`` (/8, 288),
``Mixed_6e`` (/16, 768), ``Mixed_7c`` (/32, 2048). Switches: a 2x2 max over the image for the
strided stem convolution, the indices of ``maxpool1`` and ``maxpool2``, and a 2x2 max over the
inputs of the strided ``Mixed_6a`` and ``Mixed_7a``.

This module also holds the pieces GoogLeNet (:mod:`segkit.encoders.googlenet`) shares:
:class:`BasicConv2d`, the ``transform_input`` rescaling and the classifier input check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import Classifier, Encoder, check_input, register_classifier, register_encoder, switches_2x2
from segkit.errors import SegkitError

__all__ = [
    "BasicConv2d",
    "Inception3",
    "Inception3Encoder",
    "apply_transform_input",
    "max_pool_with_switches",
]


# --- shared with GoogLeNet ---------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Convolution (no bias), BatchNorm (eps 0.001, as the TensorFlow originals), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def apply_transform_input(x: Tensor) -> Tensor:
    """torchvision's ``transform_input``: ImageNet-normalised RGB ``(N, 3, H, W)`` -> the [-1, 1] scaling.

    The Inception checkpoints were ported from TensorFlow, whose nets take ``(pixel - 0.5) / 0.5``;
    this undoes torchvision's mean/std normalisation and applies that scaling instead. The
    arithmetic is torchvision's, term for term, so results are bit-identical.
    """
    if x.shape[1] != 3:
        raise SegkitError(
            f"transform_input rescales the three ImageNet RGB channels but the batch has {x.shape[1]} channels; "
            f"set model.transform_input = False (or pass transform_input=False)."
        )
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)


def max_pool_with_switches(pool: nn.MaxPool2d, x: Tensor, record: bool) -> tuple[Tensor, Tensor | None]:
    """``pool(x)``, plus its argmax indices when ``record`` (the same pooling, so the same values)."""
    if not record:
        return pool(x), None
    out, indices = F.max_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode, return_indices=True
    )
    return out, indices


def trunc_normal_init(module: nn.Module, std: float) -> None:
    """torchvision's Inception initialisation: truncated normal weights, unit/zero BatchNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=getattr(m, "stddev", std), a=-2, b=2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- Inception-v3 blocks (torchvision's names; ``same`` pads the valid layers, see module doc) ----


class InceptionA(nn.Module):
    """35x35 block (Figure 5 of the paper, 5x5 kept as in the released model): 1x1, 5x5, double 3x3, pool."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``): strided 3x3, strided double 3x3, strided max-pool."""

    def __init__(self, in_channels: int, same: bool = False) -> None:
        super().__init__()
        p = 1 if same else 0
        self.pool_padding = p
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2, padding=p)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2, padding=p)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2, padding=self.pool_padding)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1; Figure 6 of the paper)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``): strided 3x3, 7x7 then strided 3x3, strided max-pool."""

    def __init__(self, in_channels: int, same: bool = False) -> None:
        super().__init__()
        p = 1 if same else 0
        self.pool_padding = p
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2, padding=p)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2, padding=p)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2, padding=self.pool_padding)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (1x3 and 3x1 side by side; Figure 7 of the paper)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 map: 5x5/3 average pool, 1x1 (128), 5x5 (768), fc."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        # The paper's smaller init for the head. torchvision tags conv1's block instead of its conv, so
        # its init loop never sees the 0.01 there (BN follows; only the fc's 0.001 matters much).
        self.conv1.conv.stddev = 0.01  # type: ignore[assignment]
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class _Inception3Body(nn.Module):
    """Stem and the eleven Inception blocks, torchvision's module names; ``same`` for the encoder."""

    first_conv = "Conv2d_1a_3x3.conv"

    def __init__(self, in_channels: int, same: bool) -> None:
        super().__init__()
        p = 1 if same else 0
        self._same = same
        self.transform_input = False
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, kernel_size=3, stride=2, padding=p)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3, padding=p)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=p)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3, padding=p)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=p)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288, same=same)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)

    def _add_top(self) -> None:
        """The 8x8 blocks, registered after the auxiliary head as torchvision orders its state dict."""
        self.Mixed_7a = InceptionD(768, same=self._same)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)

    def _stem(self, x: Tensor) -> Tensor:
        return self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))


class Inception3Encoder(_Inception3Body, Encoder):
    """Inception-v3 feature extractor with "same" padding (module doc): reductions (2, 4, 8, 16, 32).

    ``forward(x)`` ``(N, C, H, W)`` -> maps of 64, 192, 288, 768, 2048 channels. ``transform_input``
    (set by ``create_encoder`` when 3-channel weights are loaded) rescales ImageNet-normalised RGB
    to the [-1, 1] range the ported checkpoints expect.
    """

    out_channels = (64, 192, 288, 768, 2048)
    reductions = (2, 4, 8, 16, 32)
    checkpoint_ignore = ("AuxLogits.", "fc.")

    def __init__(self, in_channels: int = 3, transform_input: bool = False) -> None:
        super().__init__(in_channels, same=True)
        self._add_top()
        self.transform_input = transform_input
        trunc_normal_init(self, 0.1)

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        if self.transform_input:
            x = apply_transform_input(x)
        switches: list[Tensor | None] = []
        if record_switches:  # strided stem convolution: 2x2 max over the image
            switches.append(switches_2x2(x))
        f0 = self._stem(x)
        x, indices = max_pool_with_switches(self.maxpool1, f0, record_switches)
        switches.append(indices)
        f1 = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x, indices = max_pool_with_switches(self.maxpool2, f1, record_switches)
        switches.append(indices)
        f2 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if record_switches:  # Mixed_6a and Mixed_7a reduce by strided convolutions
            switches.append(switches_2x2(f2))
        f3 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(f2)))))
        if record_switches:
            switches.append(switches_2x2(f3))
        f4 = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(f3)))
        return [f0, f1, f2, f3, f4], [s for s in switches if s is not None]


class Inception3(_Inception3Body, Classifier):
    """Inception-v3 classifier, torchvision's: ``(N, C, H, W)`` -> logits ``(N, num_classes)``.

    Eval mode: logits. Training mode with ``aux_logits``: ``(logits, aux_logits)``. Inputs of at
    least 75x75 (299x299 in training mode with the auxiliary head).
    """

    head_prefixes = ("fc.", "AuxLogits.fc.")
    optional_prefixes = ("AuxLogits.",)  # a file saved without the auxiliary head (aux_logits=False): it starts fresh
    min_input_size = 75
    min_aux_input_size = 299

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_channels, same=False)
        self.aux_logits = bool(aux_logits)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        # For loading a file that has the auxiliary head into a model without it.
        self.checkpoint_ignore: tuple[str, ...] = () if aux_logits else ("AuxLogits.",)
        self._add_top()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        self.transform_input = transform_input
        trunc_normal_init(self, 0.1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        # ``aux_logits`` may be switched off after construction, as in torchvision.
        with_aux = self.training and self.aux_logits and self.AuxLogits is not None
        check_input(self, x, self.min_aux_input_size if with_aux else self.min_input_size)
        if self.transform_input:
            x = apply_transform_input(x)
        x = self.maxpool1(self._stem(x))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        aux = self.AuxLogits(x) if with_aux else None  # type: ignore[misc]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        # Dropout before flattening, as torchvision: the same random mask for the same seed.
        x = self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))
        if aux is not None:
            return x, aux
        return x


@register_encoder("inception_v3")
def inception_v3_encoder(in_channels: int = 3, **kwargs: Any) -> Inception3Encoder:
    """inception_v3: Inception-v3 features with "same" padding, reductions 2..32."""
    return Inception3Encoder(in_channels=in_channels, **kwargs)


@register_classifier("inception_v3")
def inception_v3(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> Inception3:
    """inception_v3: torchvision's Inception-v3 with its auxiliary head (``aux_logits=True``)."""
    return Inception3(num_classes=num_classes, in_channels=in_channels, **kwargs)

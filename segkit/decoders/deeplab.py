"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) decoders, and torchvision's FCN head.

* **ASPP** (atrous spatial pyramid pooling, Chen et al. 2017, Section 3.3): on the encoder's deepest
  features, in parallel, a 1x1 convolution, three 3x3 convolutions with atrous rates 6, 12, 18 at
  output stride 16 (doubled, 12, 24, 36, at 8) and image pooling (global average, 1x1 convolution,
  broadcast back); each branch conv-BN-ReLU with ``aspp_channels`` (256) filters; concatenated,
  projected by a 1x1 conv-BN-ReLU, dropout 0.5. Module names are torchvision's
  (``convs.0`` ... ``convs.4``, ``project``).
* **DeepLabV3** (:class:`DeepLabV3Decoder`): ASPP, a 3x3 conv-BN-ReLU (``aspp_conv``:
  torchvision's ``DeepLabHead`` and smp's ``DeepLabV3`` have it), a 1x1 classifier, then the logits
  upsampled from the output stride to the image (bilinear in the paper).
* **DeepLabV3+** (:class:`DeepLabV3PlusDecoder`): ASPP upsampled to stride 4 (x4 from output
  stride 16, x2 from 8), concatenated with the encoder's stride-4 features projected to 48
  channels by a 1x1 conv-BN-ReLU, ``refine_convs`` (the paper's two) 3x3 conv-BN-ReLU of
  ``aspp_channels``, a 1x1 classifier, and the logits upsampled x4.
  ``separable=True`` makes the ASPP's atrous convolutions and the decoder's 3x3 convolutions
  depthwise-separable (a depthwise 3x3, then a 1x1; the paper's Xception setting). smp's
  ``DeepLabV3Plus`` is ``separable=True, refine_convs=1, aspp_conv=True`` (its extra separable 3x3
  after the ASPP), parameter for parameter; the defaults are the paper's ResNet decoder.
* **FCN head** (:class:`FCNHead`): torchvision's simplified FCN, a 3x3 conv-BN-ReLU to a quarter
  of the channels, dropout 0.1 and a 1x1 classifier on the deepest features of a dilated encoder
  (arch ``fcn_head``), and torchvision's auxiliary head on the level before it (``aux_head="fcn"``).

Upsampling: DeepLab's steps are x4 or larger (the logits from output stride 8 or 16 to the image,
ASPP from 16 to 4), apart from V3+'s x2 at output stride 8, and one mode serves all of them:
``"bilinear"`` (the papers', default), ``"nearest"`` or ``"transposed"`` (a learnt deconvolution
that starts as bilinear interpolation, kernel ``2s``, stride ``s``, as FCN's).
``"bed_of_nails"`` and ``"max_unpool"`` undo one 2x2 step at a time and would leave 15 of every
16 logits without a value: a ``SegkitError`` names the three that work.

Initialisation (:mod:`segkit.decoders.init`): every conv-BN-ReLU He (fan_in, ReLU), BatchNorm 1/0,
depthwise convolutions too (smp's ``initialize_decoder``); classifiers Xavier (:mod:`segkit.heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor, nn

from segkit.decoders.init import init_conv_bn_relu
from segkit.decoders.upsample import Upsample, check_choice
from segkit.errors import SegkitError
from segkit.heads import SegmentationHead

__all__ = ["ASPP", "DEEPLAB_MODES", "DeepLabV3Decoder", "DeepLabV3PlusDecoder", "FCNHead", "SeparableConv2d", "atrous_rates"]

DEEPLAB_MODES = ("bilinear", "nearest", "transposed")


def check_deeplab_mode(mode: str, arch: str, step: str = "its logits to the image", hint: str = "") -> str:
    """``mode`` if DeepLab's x4 (and larger) steps can take it, else a SegkitError naming those that can."""
    if mode in ("bed_of_nails", "max_unpool"):
        raise SegkitError(
            f"{arch} upsamples by 4 or more in one step ({step}), which {mode!r} cannot fill: it undoes one "
            f"2x2 step and would leave 15 of every 16 logits empty; choose upsampling bilinear (the paper's), nearest or transposed{hint}."
        )
    return check_choice(mode, DEEPLAB_MODES, f"{arch} upsampling mode")


def atrous_rates(output_stride: int, rates: Sequence[int] | None = None) -> tuple[int, int, int]:
    """ASPP rates: ``rates`` if given, else Chen et al.'s (6, 12, 18) at output stride 16, scaled by ``16 / output_stride``."""
    if rates is None:
        return tuple(r * 16 // output_stride for r in (6, 12, 18))  # type: ignore[return-value]
    rates = tuple(rates)
    if len(rates) != 3 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise SegkitError(f"atrous_rates must be three positive integers (the paper's 6, 12, 18 at output stride 16); got {rates!r}.")
    return rates  # type: ignore[return-value]


class SeparableConv2d(nn.Sequential):
    """Depthwise ``k x k`` (dilated) convolution, then a pointwise 1x1: ``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``.

    smp's layout (``0``: depthwise, ``1``: pointwise; no norm between them).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """Convolution (bias-free; separable on request), BatchNorm, ReLU; the spatial size is kept. He init."""
    conv: nn.Module
    if separable and kernel_size > 1:
        conv = SeparableConv2d(in_channels, out_channels, kernel_size, dilation)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False)
    norm = nn.BatchNorm2d(out_channels)
    convs = [m for m in conv.modules() if isinstance(m, nn.Conv2d)]
    for layer in convs[:-1]:  # the depthwise half of a separable convolution
        init_conv_bn_relu(layer)
    init_conv_bn_relu(convs[-1], norm)
    return nn.Sequential(conv, norm, nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image pooling: global average, 1x1 conv-BN-ReLU, broadcast back: ``(N, C, H, W)`` -> ``(N, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        branch = conv_bn_relu(in_channels, out_channels, 1)
        super().__init__(nn.AdaptiveAvgPool2d(1), branch[0], branch[1], branch[2])

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return x.expand(-1, -1, size[0], size[1])  # what bilinear interpolation of a 1x1 map gives


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``(N, in_channels, h, w)`` -> ``(N, out_channels, h, w)``.

    Five branches (1x1; 3x3 at each of ``rates``; image pooling), concatenated, 1x1 conv-BN-ReLU,
    dropout. ``separable``: the three atrous branches depthwise-separable.
    """

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, separable: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, rate, separable) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        project = conv_bn_relu(len(branches) * out_channels, out_channels, 1)
        self.project = nn.Sequential(project[0], project[1], project[2], nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def _check_channels(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SegkitError(f"{name} must be a positive integer; got {value!r}.")
    return value


def _check_dropout(value: object, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise SegkitError(f"{name} must be in [0, 1); got {value!r}.")
    return float(value)


def _logits_upsample(mode: str, num_classes: int, scale: int) -> Upsample:
    return Upsample(mode, num_classes, num_classes, scale, bilinear_init=mode == "transposed")


class DeepLabV3Decoder(nn.Module):
    """DeepLabV3: encoder features -> logits ``(N, num_classes, H, W)``.

    Args:
        encoder_channels: the encoder's ``out_channels``; the ASPP takes the deepest.
        num_classes: output channels.
        output_stride: the deepest feature's stride (8 or 16 in the paper; 32 works for any encoder).
        upsampling: ``"bilinear"``, ``"nearest"`` or ``"transposed"``: logits from ``output_stride`` to the image.
        rates: ASPP rates (default :func:`atrous_rates`).
        aspp_channels: ASPP width (256).
        aspp_conv: the 3x3 conv-BN-ReLU after the ASPP (torchvision's and smp's; not in the paper).
        separable: depthwise-separable atrous convolutions.
        dropout: after the ASPP projection.

    ``forward(features, switches=None, size=None)``, ``size`` the image's ``[H, W]``.
    """

    def __init__(self, encoder_channels: Sequence[int], num_classes: int, output_stride: int = 8, upsampling: str = "bilinear",
                 rates: Sequence[int] | None = None, aspp_channels: int = 256, aspp_conv: bool = True, separable: bool = False,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.upsampling = check_deeplab_mode(upsampling, "deeplabv3")
        self.output_stride = output_stride
        _check_channels(aspp_channels, "aspp_channels")
        self.aspp = ASPP(encoder_channels[-1], atrous_rates(output_stride, rates), aspp_channels, separable, _check_dropout(dropout, "dropout"))
        self.aspp_conv = conv_bn_relu(aspp_channels, aspp_channels, 3, separable=separable) if aspp_conv else None
        self.classifier = SegmentationHead(aspp_channels, num_classes, kernel_size=1)
        self.up = _logits_upsample(upsampling, num_classes, output_stride)
        self.out_channels = num_classes

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        x = self.aspp(features[-1])
        if self.aspp_conv is not None:
            x = self.aspp_conv(x)
        x = self.classifier(x)
        if size is None:
            size = [x.shape[-2] * self.output_stride, x.shape[-1] * self.output_stride]
        return self.up(x, None, size)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+: encoder features -> logits ``(N, num_classes, H, W)``.

    Args as :class:`DeepLabV3Decoder` (``output_stride`` 8 or 16, default 16; ``aspp_conv`` default
    False, the paper's), plus ``reductions`` (the encoder's: the stride-4 level is the decoder's
    skip), ``low_level_channels`` (48, the paper's) and ``refine_convs`` (the 3x3 convolutions
    after the concatenation: 2 in the paper, 1 in smp).
    """

    def __init__(self, encoder_channels: Sequence[int], reductions: Sequence[int], num_classes: int, output_stride: int = 16,
                 upsampling: str = "bilinear", rates: Sequence[int] | None = None, aspp_channels: int = 256, aspp_conv: bool = False,
                 separable: bool = False, dropout: float = 0.5, low_level_channels: int = 48, refine_convs: int = 2,
                 final_upsampling: str | None = None) -> None:
        super().__init__()
        # ``upsampling``: the ASPP features' step to stride 4 (x4 at output stride 16, x2 at 8, where the
        # x2-only modes bed_of_nails and max_unpool work too); ``final_upsampling``: the logits' x4 step
        # (default: ``upsampling`` where it can take x4, else bilinear).
        if output_stride == 8 and upsampling in ("bed_of_nails", "max_unpool"):
            self.upsampling = upsampling
        else:
            self.upsampling = check_deeplab_mode(upsampling, "deeplabv3plus", f"at output_stride {output_stride}, its features to stride 4",
                                                 " (or output_stride=8, where that step is x2 and takes every mode)")
        if final_upsampling is None:
            final_upsampling = "bilinear" if upsampling in ("bed_of_nails", "max_unpool") else upsampling
        self.final_upsampling = check_deeplab_mode(final_upsampling, "deeplabv3plus", "final_upsampling: its logits to the image")
        reductions = tuple(reductions)
        if 4 not in reductions or reductions[-1] <= 4:
            raise SegkitError(f"deeplabv3plus fuses the encoder's stride-4 features and needs a deeper level; this encoder's strides are "
                              f"{reductions}: choose an encoder with a stride-4 level (every ResNet, VGG, timm's ConvNeXt), or deeplabv3.")
        _check_channels(aspp_channels, "aspp_channels")
        _check_channels(low_level_channels, "low_level_channels")
        if not isinstance(refine_convs, int) or isinstance(refine_convs, bool) or refine_convs < 1:
            raise SegkitError(f"refine_convs must be a positive integer (2: the paper's decoder, 1: smp's); got {refine_convs!r}.")
        self.low_level = reductions.index(4)
        self.output_stride = output_stride
        self.aspp = ASPP(encoder_channels[-1], atrous_rates(output_stride, rates), aspp_channels, separable, _check_dropout(dropout, "dropout"))
        self.aspp_conv = conv_bn_relu(aspp_channels, aspp_channels, 3, separable=separable) if aspp_conv else None
        self.up = Upsample(upsampling, aspp_channels, aspp_channels, output_stride // 4, bilinear_init=upsampling == "transposed",
                           reuse_switches=upsampling == "max_unpool")
        self.switch_index = int(output_stride // 2).bit_length() - 1  # the encoder's switches of its step to output_stride
        self.project = conv_bn_relu(encoder_channels[self.low_level], low_level_channels, 1)
        widths = [aspp_channels + low_level_channels] + [aspp_channels] * refine_convs
        self.refine = nn.Sequential(*(conv_bn_relu(a, b, 3, separable=separable) for a, b in zip(widths, widths[1:])))
        self.classifier = SegmentationHead(aspp_channels, num_classes, kernel_size=1)
        self.up_logits = _logits_upsample(self.final_upsampling, num_classes, 4)
        self.out_channels = num_classes

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        skip = features[self.low_level]
        x = self.aspp(features[-1])
        if self.aspp_conv is not None:
            x = self.aspp_conv(x)
        indices = switches[self.switch_index] if switches is not None and self.upsampling == "max_unpool" else None
        x = self.up(x, indices, [skip.shape[-2], skip.shape[-1]])
        x = self.refine(torch.cat([x, self.project(skip)], dim=1))  # smp's order: ASPP first
        x = self.classifier(x)
        if size is None:
            size = [4 * skip.shape[-2], 4 * skip.shape[-1]]
        return self.up_logits(x, None, size)


class FCNHead(nn.Module):
    """torchvision's ``FCNHead``: 3x3 conv-BN-ReLU to ``in_channels // 4``, dropout 0.1, 1x1 classifier.

    ``(N, in_channels, h, w)`` -> ``(N, num_classes, h, w)``; module names ``block`` (conv, BN,
    ReLU, dropout) and ``classifier``.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        block = conv_bn_relu(in_channels, in_channels // 4, 3)
        self.block = nn.Sequential(block[0], block[1], block[2], nn.Dropout(_check_dropout(dropout, "dropout")))
        self.classifier = SegmentationHead(in_channels // 4, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.block(x))


class FCNHeadDecoder(nn.Module):
    """Arch ``fcn_head``: :class:`FCNHead` on the deepest features, logits upsampled ``output_stride`` x to the image."""

    def __init__(self, encoder_channels: Sequence[int], num_classes: int, output_stride: int = 8, upsampling: str = "bilinear",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.upsampling = check_deeplab_mode(upsampling, "fcn_head")
        self.output_stride = output_stride
        self.head = FCNHead(encoder_channels[-1], num_classes, dropout)
        self.up = _logits_upsample(upsampling, num_classes, output_stride)
        self.out_channels = num_classes

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        x = self.head(features[-1])
        if size is None:
            size = [x.shape[-2] * self.output_stride, x.shape[-1] * self.output_stride]
        return self.up(x, None, size)

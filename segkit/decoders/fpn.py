"""FPN decoder: Lin et al. 2017's feature pyramid with Kirillov et al. 2019's semantic segmentation branch, as smp's ``FPN``.

* **Pyramid** (Lin et al., "Feature Pyramid Networks for Object Detection"): the deepest encoder
  level (C5, stride 32) projected by a 1x1 convolution to ``pyramid_channels`` (256) is P5; each
  shallower level ``Pk`` is ``P(k+1)`` upsampled x2 plus a 1x1 projection ("lateral") of ``Ck``,
  down to P2 at stride 4.
* **Semantic branch** (Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks"): each
  of P5..P2 goes through 3, 2, 1, 0 stages of 3x3 conv (``segmentation_channels``, 128),
  GroupNorm (32 groups), ReLU and x2 upsampling (P2: one conv stage, no upsampling), so all four
  reach stride 4; they are merged by ``"add"`` (the paper) or ``"cat"`` (smp's option, 4x the
  channels), then 2D dropout (0.2, smp's), a 1x1 classifier, and the logits are upsampled x4 to
  the image.

Module names are smp's (``p5``, ``p4.skip_conv``, ``seg_blocks.0.block.0.block.0``, ...), so an
smp ``FPN`` decoder's state dict loads (the classifier is smp's ``segmentation_head.0``); the
parameter count is smp's for every mode but ``transposed``, which adds the up-convolutions.

Upsampling. ``upsampling=None`` (the default of ``create_model("fpn")``) is the papers': nearest
in the pyramid (Lin et al.), bilinear in the semantic branch (Kirillov et al.), as smp. A mode
(``transposed``, ``nearest``, ``bilinear``, ``bed_of_nails``, ``max_unpool``) sets every x2 step
of both: the pyramid's three and the branch's six. Every one of them is followed by a convolution
(or, in the pyramid, by a sum and then a convolution) that can fill what bed-of-nails and
unpooling leave empty. ``max_unpool`` takes, for the step from stride ``2s`` to ``s``, the
encoder's switches of that step, channel ``c`` those of channel ``c mod C`` (the decoder keeps its
widths). ``transposed`` is U-Net's 2x2 up-convolution (starting as a 1x1 projection followed by
nearest upsampling). ``final_upsampling`` is the logits' x4 step, where nothing follows to fill
holes: ``"bilinear"`` (default, Kirillov et al. and smp), ``"nearest"`` or ``"transposed"``
(starting as bilinear interpolation, as FCN's).

Initialisation (:mod:`segkit.decoders.init`): P5 and the lateral 1x1 convolutions are linear
projections (variance ``1 / fan_in``, bias 0); the conv-GN-ReLU stages He (fan_in, ReLU) with
GroupNorm 1/0; the classifier Xavier (:mod:`segkit.heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor, nn

from segkit.decoders.deeplab import DEEPLAB_MODES
from segkit.decoders.init import init_conv_bn_relu, init_projection
from segkit.decoders.upsample import MODES, Upsample, check_choice
from segkit.errors import SegkitError
from segkit.heads import SegmentationHead

__all__ = ["FPNDecoder", "MERGE_POLICIES"]

MERGE_POLICIES = ("add", "cat")


def _upsample(mode: str, channels: int) -> Upsample:
    """One x2 step that keeps ``channels`` (see the module docstring)."""
    return Upsample(mode, channels, channels, 2, reuse_switches=mode == "max_unpool")


class FPNBlock(nn.Module):
    """One top-down step: ``P(k+1)`` ``(N, P, h, w)`` upsampled x2 plus the 1x1 lateral of ``Ck`` ``(N, C, 2h, 2w)``."""

    def __init__(self, mode: str, pyramid_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = _upsample(mode, pyramid_channels)
        self.skip_conv = nn.Conv2d(skip_channels, pyramid_channels, kernel_size=1)
        init_projection(self.skip_conv)

    def forward(self, x: Tensor, skip: Tensor, indices: Optional[Tensor]) -> Tensor:
        # In place into the lateral's fresh output (a convolution's backward does not need its output).
        return self.skip_conv(skip).add_(self.up(x, indices, [skip.shape[-2], skip.shape[-1]]))


class Conv3x3GNReLU(nn.Module):
    """3x3 conv (no bias), GroupNorm(32), ReLU, then x2 upsampling in ``mode`` (None: none).

    ``target``: index (0: the finest pyramid level) of the level the upsampling reaches, whose
    size and switches it takes; -1 without upsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: Optional[str], target: int = -1) -> None:
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        norm = nn.GroupNorm(32, out_channels)
        init_conv_bn_relu(conv, norm)  # type: ignore[arg-type]  (GroupNorm: weight 1, bias 0 likewise)
        self.block = nn.Sequential(conv, norm, nn.ReLU(inplace=True))
        self.up = _upsample(mode, out_channels) if mode is not None else None
        self.target = target

    def forward(self, x: Tensor, switches: Optional[List[Tensor]], sizes: List[List[int]]) -> Tensor:
        x = self.block(x)
        up = self.up
        if up is not None:
            indices: Optional[Tensor] = None
            if switches is not None:
                indices = switches[self.target]
            x = up(x, indices, sizes[self.target])
        return x


class SegmentationBlock(nn.Module):
    """Pyramid level ``level`` (0: the finest) to the finest level's stride: ``level`` conv-GN-ReLU-x2
    stages (level 0: one conv stage, no upsampling)."""

    def __init__(self, in_channels: int, out_channels: int, level: int, mode: str) -> None:
        super().__init__()
        stages = [Conv3x3GNReLU(in_channels, out_channels, mode if level else None, level - 1)]
        stages += [Conv3x3GNReLU(out_channels, out_channels, mode, level - 1 - i) for i in range(1, level)]
        self.block = nn.ModuleList(stages)

    def forward(self, x: Tensor, switches: Optional[List[Tensor]], sizes: List[List[int]]) -> Tensor:
        """``switches[i]`` and ``sizes[i]``: those of the step up to pyramid level ``i`` (0: the finest)."""
        for stage in self.block:
            x = stage(x, switches, sizes)
        return x


class FPNDecoder(nn.Module):
    """FPN decoder: encoder features -> logits ``(N, num_classes, H, W)``.

    Args:
        encoder_channels: the encoder's ``out_channels``; the last four levels (C2..C5) are used.
        reductions: the encoder's ``reductions``; the last four must double (4, 8, 16, 32).
        num_classes: output channels.
        upsampling: None (the papers': nearest in the pyramid, bilinear in the branch) or one of ``MODES``.
        final_upsampling: the logits' x4 step: ``"bilinear"``, ``"nearest"`` or ``"transposed"``.
        pyramid_channels: P2..P5 width (256).
        segmentation_channels: semantic-branch width (128; a multiple of 32 for GroupNorm).
        merge: ``"add"`` or ``"cat"``.
        dropout: 2D dropout after the merge.

    ``forward(features, switches=None, size=None)``: ``switches`` as the encoder's
    ``forward_with_switches`` gives them (``"max_unpool"``), ``size`` the image's ``[H, W]``.
    """

    def __init__(self, encoder_channels: Sequence[int], reductions: Sequence[int], num_classes: int, upsampling: Optional[str] = None,
                 final_upsampling: str = "bilinear", pyramid_channels: int = 256, segmentation_channels: int = 128,
                 merge: str = "add", dropout: float = 0.2) -> None:
        super().__init__()
        if upsampling is not None:
            check_choice(upsampling, MODES, "upsampling mode")
        if final_upsampling in ("bed_of_nails", "max_unpool"):
            raise SegkitError(f"fpn's final_upsampling is the logits' x4 step, with no convolution after it to fill what {final_upsampling!r} "
                              f"leaves empty; choose bilinear (the paper's), nearest or transposed.")
        check_choice(final_upsampling, DEEPLAB_MODES, "fpn final_upsampling")
        check_choice(merge, MERGE_POLICIES, "fpn merge policy")
        for name, value in (("pyramid_channels", pyramid_channels), ("segmentation_channels", segmentation_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SegkitError(f"{name} must be a positive integer; got {value!r}.")
        if segmentation_channels % 32:
            raise SegkitError(f"segmentation_channels must be a multiple of 32 (GroupNorm with 32 groups); got {segmentation_channels}.")
        if not 0.0 <= dropout < 1.0:
            raise SegkitError(f"dropout must be in [0, 1); got {dropout!r}.")
        reductions = tuple(reductions)
        last = reductions[-4:]
        if len(last) < 4 or any(b != 2 * a for a, b in zip(last, last[1:])) or last[0] & (last[0] - 1):
            raise SegkitError(f"fpn builds its pyramid from four encoder levels at doubling strides (4, 8, 16, 32); this encoder's strides are "
                              f"{reductions}: use output_stride=32 (no dilation) or another encoder.")
        self.upsampling = upsampling
        top_down = upsampling or "nearest"
        branch = upsampling or "bilinear"
        channels = list(encoder_channels[-4:])[::-1]  # C5, C4, C3, C2
        # x2 step k goes from stride 2**(k+1) to 2**k: the top-down steps end at C4, C3, C2's strides.
        self.finest = last[0]
        self.steps = [last[i].bit_length() - 1 for i in (2, 1, 0)]  # switches of the top-down steps to C4, C3, C2
        self.p5 = nn.Conv2d(channels[0], pyramid_channels, kernel_size=1)
        init_projection(self.p5)
        self.p4 = FPNBlock(top_down, pyramid_channels, channels[1])
        self.p3 = FPNBlock(top_down, pyramid_channels, channels[2])
        self.p2 = FPNBlock(top_down, pyramid_channels, channels[3])
        self.seg_blocks = nn.ModuleList(SegmentationBlock(pyramid_channels, segmentation_channels, level, branch) for level in (3, 2, 1, 0))
        self.merge = merge
        merged = segmentation_channels * (4 if merge == "cat" else 1)
        self.dropout = nn.Dropout2d(p=dropout, inplace=True)  # on the merged map, which nothing else reads (smp's)
        self.classifier = SegmentationHead(merged, num_classes, kernel_size=1)
        self.up = Upsample(final_upsampling, num_classes, num_classes, self.finest, bilinear_init=final_upsampling == "transposed")
        self.out_channels = num_classes

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        c2, c3, c4, c5 = features[-4], features[-3], features[-2], features[-1]
        # The switches of the x2 steps up to P2, P3, P4 (for the usual strides: 4 -> 8, 8 -> 16, 16 -> 32).
        steps: Optional[List[Tensor]] = None
        if switches is not None:
            steps = [switches[self.steps[2]], switches[self.steps[1]], switches[self.steps[0]]]
        sizes = [[c2.shape[-2], c2.shape[-1]], [c3.shape[-2], c3.shape[-1]], [c4.shape[-2], c4.shape[-1]]]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4, None if steps is None else steps[2])
        p3 = self.p3(p4, c3, None if steps is None else steps[1])
        p2 = self.p2(p3, c2, None if steps is None else steps[0])
        pyramid = [self.seg_blocks[0](p5, steps, sizes), self.seg_blocks[1](p4, steps, sizes),
                   self.seg_blocks[2](p3, steps, sizes), self.seg_blocks[3](p2, steps, sizes)]
        if self.merge == "add":
            x = pyramid[0] + pyramid[1]
            x += pyramid[2]  # in place: sums need none of their inputs or outputs for the backward pass
            x += pyramid[3]
        else:
            x = torch.cat(pyramid, dim=1)
        x = self.classifier(self.dropout(x))
        if size is None:
            size = [self.finest * c2.shape[-2], self.finest * c2.shape[-1]]
        return self.up(x, None, size)

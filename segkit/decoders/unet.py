"""U-Net decoder on any encoder (Ronneberger et al. 2015, in the encoder-agnostic form smp made common).

From the deepest feature up, one :class:`UnetBlock` per x2 step: upsample 2x, concatenate the
encoder feature of the same scale (the skip), then two 3x3 convolution-BatchNorm-ReLU layers. With
the classic encoders (strides 2, 4, 8, 16, 32) that is one block per level, and the last block goes
from stride 2 to the image without a skip. Encoders that start at stride 4 (ConvNeXt, Swin) get
their last two blocks without a skip, and one whose deepest stride is 16 or 64 gets 4 or 6 blocks,
as smp's ``Unet`` does (:mod:`segkit.decoders.levels`). ``decoder_channels`` are the blocks'
widths, deepest first; the default is smp's ``(256, 128, 64, 32, 16)`` for five blocks, so the
two compare directly, and in general ``16 * s`` for the block that ends at stride ``s``
(:func:`default_decoder_channels`).

What each upsampling mode hands the block's first convolution (``c_in`` = channels coming up,
``d`` = the block's width):

* ``"transposed"``: the paper's 2x2 up-conv, ``c_in -> d`` (the original halves channels the same way);
* ``"nearest"``, ``"bed_of_nails"``: no weights, ``c_in`` channels kept (with ``"nearest"`` the
  decoder is exactly smp's ``Unet`` decoder);
* ``"max_unpool"``: a 1x1 projection to the switches' channel count, then unpooling with the
  switches of the pooling that produced the level being left. Where the switches are narrower than
  the block (the last step's come from a 2x2 max over the image: 1 or 3 channels), the ``c_in``
  channels are kept and each is unpooled with the switches of channel ``c mod C``: projecting to the
  image's channel count would squeeze the decoder through 1-3 channels at full resolution
  (measured: 0.918 against 0.933 mIoU for smp's U-Net on real HeLa nuclei before this).

The decoder returns ``(N, decoder_channels[-1], H, W)`` features; the segmentation head maps them to
classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor, nn

from segkit.decoders.init import init_conv_bn_relu
from segkit.decoders.levels import check_reductions, default_reductions, level_at_stride, step_sizes
from segkit.decoders.upsample import MODES, Upsample, check_choice
from segkit.errors import SegkitError

__all__ = ["UnetBlock", "UnetDecoder", "conv_bn_relu", "default_decoder_channels"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm follows), BatchNorm, ReLU; keeps the spatial size.

    He (fan_in, ReLU) initialisation, BatchNorm 1/0 (:func:`segkit.decoders.init.init_conv_bn_relu`).
    """
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    norm = nn.BatchNorm2d(out_channels)
    init_conv_bn_relu(conv, norm)
    return nn.Sequential(conv, norm, nn.ReLU(inplace=True))


class UnetBlock(nn.Module):
    """Upsample ``(N, in_channels, h, w)`` 2x, concatenate the skip, two conv-BN-ReLU to ``out_channels``.

    ``up_channels`` is what the upsampling hands on (see the module docstring); ``skip_channels``
    may be 0 (no skip).
    """

    def __init__(self, mode: str, in_channels: int, skip_channels: int, out_channels: int, up_channels: int,
                 reuse_switches: bool = False) -> None:
        super().__init__()
        self.up = Upsample(mode, in_channels, up_channels, reuse_switches=reuse_switches)
        self.conv1 = conv_bn_relu(up_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Optional[Tensor], indices: Optional[Tensor], size: List[int]) -> Tensor:
        x = self.up(x, indices, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """U-Net decoder over an encoder's features.

    Args:
        encoder_channels: the encoder's ``out_channels``, shallow to deep (one entry per level).
        decoder_channels: block widths, deepest first; one per x2 step from the deepest stride to
            the image (default :func:`default_decoder_channels`).
        upsampling: one of ``MODES``.
        switch_channels: channel counts of the encoder's switches (``"max_unpool"`` only; see
            :func:`segkit.decoders.upsample.switch_channels`).
        reductions: the encoder's ``reductions`` (default ``(2, 4, ..., 2**levels)``): increasing
            powers of two, else a ``SegkitError``.

    ``forward(features, switches=None, size=None)``: ``features`` as the encoder returns them,
    ``switches`` as ``forward_with_switches`` does (``"max_unpool"``), ``size`` the image's
    ``[H, W]`` (default: the shallowest feature's times its reduction). Returns ``(N, decoder_channels[-1], H, W)``;
    ``forward_levels`` (same arguments) returns every block's output, deepest first.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] | None = None,
        upsampling: str = "transposed",
        switch_channels: Sequence[int] | None = None,
        reductions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice(upsampling, MODES, "upsampling mode")
        levels = len(encoder_channels)
        reductions = tuple(reductions) if reductions is not None else default_reductions(levels)
        steps = check_reductions(reductions, levels, "U-Net")
        if decoder_channels is None:
            decoder_channels = default_decoder_channels(steps)
        elif isinstance(decoder_channels, Sequence) and not isinstance(decoder_channels, str):
            decoder_channels = tuple(decoder_channels)
        if not isinstance(decoder_channels, tuple) or len(decoder_channels) != steps or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_channels):
            raise SegkitError(
                f"decoder_channels must be {steps} positive integers, one per x2 upsampling step from the encoder's "
                f"deepest stride {max(reductions)} to the image (deepest first); got {decoder_channels!r}."
            )
        if upsampling == "max_unpool" and (switch_channels is None or len(switch_channels) != steps):
            raise SegkitError(f"the max_unpool U-Net decoder needs the channel count of each of the encoder's {steps} switch tensors.")
        self.upsampling = upsampling
        self.out_channels = decoder_channels[-1]
        # What forward_levels returns, deepest first: block i ends at stride 2**(steps - 1 - i).
        self.level_channels = decoder_channels
        self.level_strides = tuple(2 ** (steps - 1 - i) for i in range(steps))
        # level_at[k]: the encoder level at stride 2**k (-1: none); block i climbs from stride
        # 2**(steps - i) to 2**(steps - 1 - i) and takes the level there as its skip, if any.
        self.level_at = level_at_stride(reductions, steps)
        self.first_reduction = reductions[0]
        blocks = []
        in_ch = encoder_channels[-1]
        for i, out_ch in enumerate(decoder_channels):
            target = steps - 1 - i  # log2 of the stride this block upsamples to; 0 is the image
            skip = self.level_at[target]
            skip_ch = encoder_channels[skip] if skip >= 0 else 0
            if upsampling == "transposed":
                up_ch = out_ch
            elif upsampling == "max_unpool":
                # Project to the switches' channels, unless they are narrower than the block (the
                # image's 1-3 at the last step): then keep the channels and reuse the switches.
                up_ch = switch_channels[target] if switch_channels[target] >= out_ch else in_ch
            else:
                up_ch = in_ch
            reuse = upsampling == "max_unpool" and up_ch != switch_channels[target]
            blocks.append(UnetBlock(upsampling, in_ch, skip_ch, out_ch, up_ch, reuse_switches=reuse))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        return self.forward_levels(features, switches, size)[-1]

    def forward_levels(self, features: List[Tensor], switches: Optional[List[Tensor]] = None,
                       size: Optional[List[int]] = None) -> List[Tensor]:
        """Every block's output, deepest first (``level_channels`` channels at ``level_strides``); the
        last is :meth:`forward`'s. Deep supervision puts a side head on the others."""
        if size is None:
            size = [self.first_reduction * features[0].shape[-2], self.first_reduction * features[0].shape[-1]]
        sizes = step_sizes(features, self.level_at, size)
        steps = len(self.level_at)
        x = features[-1]
        levels: List[Tensor] = []
        for i, block in enumerate(self.blocks):
            target = steps - 1 - i
            level = self.level_at[target]
            skip: Optional[Tensor] = None
            if level >= 0:
                skip = features[level]
            indices: Optional[Tensor] = None
            if switches is not None:
                indices = switches[target]
            x = block(x, skip, indices, sizes[target])
            levels.append(x)
        return levels


def default_decoder_channels(steps: int) -> tuple[int, ...]:
    """smp's widths ``(256, 128, 64, 32, 16)`` aligned by stride: the block that ends at stride ``s``
    is ``16 * s`` wide, so 5 steps give smp's default exactly, 4 steps (deepest stride 16) its last
    four ``(128, 64, 32, 16)`` and 6 steps (stride 64) ``(512, 256, 128, 64, 32, 16)``.
    """
    return tuple(16 * 2 ** (steps - 1 - i) for i in range(steps))

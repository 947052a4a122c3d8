"""U-Net decoder on any encoder (Ronneberger et al. 2015, in the encoder-agnostic form smp made common).

From the deepest feature up, one :class:`UnetBlock` per encoder level: upsample 2x, concatenate the
encoder feature of the same scale (the skip), then two 3x3 convolution-BatchNorm-ReLU layers. The
last block goes from stride 2 to the image and has no skip. ``decoder_channels`` are the blocks'
widths, deepest first; the default ``(256, 128, 64, 32, 16)`` is smp's, so the two compare directly.

What each upsampling mode hands the block's first convolution (``c_in`` = channels coming up,
``d`` = the block's width):

* ``"transposed"``: the paper's 2x2 up-conv, ``c_in -> d`` (the original halves channels the same way);
* ``"nearest"``, ``"bed_of_nails"``: no weights, ``c_in`` channels kept (with ``"nearest"`` the
  decoder is exactly smp's ``Unet`` decoder);
* ``"max_unpool"``: a 1x1 projection to the switches' channel count, then unpooling with the
  switches of the pooling that produced the level being left.

The decoder returns ``(N, decoder_channels[-1], H, W)`` features; the segmentation head maps them to
classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor, nn

from segkit.decoders.init import init_conv_bn_relu
from segkit.decoders.upsample import MODES, Upsample, check_choice
from segkit.errors import SegkitError

__all__ = ["UnetBlock", "UnetDecoder", "conv_bn_relu"]


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

    def __init__(self, mode: str, in_channels: int, skip_channels: int, out_channels: int, up_channels: int) -> None:
        super().__init__()
        self.up = Upsample(mode, in_channels, up_channels)
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
        decoder_channels: block widths, deepest first; one per encoder level.
        upsampling: one of ``MODES``.
        switch_channels: channel counts of the encoder's switches (``"max_unpool"`` only; see
            :func:`segkit.decoders.upsample.switch_channels`).

    ``forward(features, switches=None, size=None)``: ``features`` as the encoder returns them,
    ``switches`` as ``forward_with_switches`` does (``"max_unpool"``), ``size`` the image's
    ``[H, W]`` (default: twice the shallowest feature's). Returns ``(N, decoder_channels[-1], H, W)``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsampling: str = "transposed",
        switch_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice(upsampling, MODES, "upsampling mode")
        decoder_channels = tuple(decoder_channels)
        levels = len(encoder_channels)
        if len(decoder_channels) != levels or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_channels):
            raise SegkitError(f"decoder_channels must be {levels} positive integers, one per encoder level (deepest first); got {decoder_channels!r}.")
        if upsampling == "max_unpool" and (switch_channels is None or len(switch_channels) != levels):
            raise SegkitError(f"the max_unpool U-Net decoder needs the channel count of each of the encoder's {levels} switch tensors.")
        self.upsampling = upsampling
        self.out_channels = decoder_channels[-1]
        blocks = []
        in_ch = encoder_channels[-1]
        for i, out_ch in enumerate(decoder_channels):
            target = levels - 2 - i  # the level this block upsamples to; -1 is the image
            skip_ch = encoder_channels[target] if target >= 0 else 0
            if upsampling == "transposed":
                up_ch = out_ch
            elif upsampling == "max_unpool":
                up_ch = switch_channels[target + 1]
            else:
                up_ch = in_ch
            blocks.append(UnetBlock(upsampling, in_ch, skip_ch, out_ch, up_ch))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        if size is None:
            size = [2 * features[0].shape[-2], 2 * features[0].shape[-1]]
        levels = len(features)
        x = features[-1]
        for i, block in enumerate(self.blocks):
            target = levels - 2 - i
            skip: Optional[Tensor] = None
            target_size = size
            if target >= 0:
                skip = features[target]
                target_size = [skip.shape[-2], skip.shape[-1]]
            indices: Optional[Tensor] = None
            if switches is not None:
                indices = switches[target + 1]
            x = block(x, skip, indices, target_size)
        return x

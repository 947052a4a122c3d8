"""The original U-Net (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", 2015).

Exactly Figure 1 of the paper with ``padding="valid"`` (the default):

* contracting path: five stages of two unpadded 3x3 convolutions + ReLU (64, 128, 256, 512, 1024
  channels), 2x2 max-pooling (stride 2) between them;
* expansive path: per stage a 2x2 up-convolution halving the channels, concatenation with the
  centre crop of the contracting stage of the same scale ("copy and crop"), two unpadded 3x3
  convolutions + ReLU;
* a 1x1 convolution to the classes.

No batch normalisation; weights drawn from a Gaussian with standard deviation ``sqrt(2 / N)``,
``N`` the fan-in, as the paper says. A 572x572 input gives 388x388 logits; with 1 input channel
and 2 classes the net has 31,030,658 parameters. Valid inputs are the sides ``16 b + 60`` with
``b >= 8`` (188, 204, ..., 572, ...), and the output is 184 pixels smaller; other sizes raise a
``SegkitError`` that names the nearest valid ones. The output covers the input's centre crop.

``padding="same"`` is the modern variant: padded convolutions, the image zero-padded on the
bottom/right to a multiple of 16 and the logits cropped back, so the output has the input's size.

The other upsampling modes replace the up-convolution: ``"nearest"`` / ``"bed_of_nails"`` keep the
channel count (no weights), ``"max_unpool"`` projects to the pooled stage's channels by 1x1
convolution and unpools with the switches this net's own max-pools record; with valid
convolutions the decoder's map is smaller than the pooled map the switches belong to, so it is
zero-padded to that map's centre, unpooled into the full pre-pool grid and centre-cropped: the
values inside the crop land exactly where the crop of the switches sends them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.decoders.upsample import MODES, Upsample, check_choice, fit_to
from segkit.errors import SegkitError
from segkit.heads import ClassificationHead, SegmentationHead

__all__ = ["PADDINGS", "UNetOriginal", "unet_original_output_size"]

PADDINGS = ("valid", "same")
_WIDTHS = (64, 128, 256, 512, 1024)


def unet_original_output_size(size: int) -> int:
    """Side of the valid-padding U-Net's output for an input side ``size``, or a SegkitError."""
    if size >= 188 and (size - 60) % 16 == 0:
        return size - 184
    below = size - (size - 60) % 16
    nearest = "188" if size < 188 else f"{below} or {below + 16}"
    raise SegkitError(
        f"unet_original with valid convolutions takes sides of 16*b + 60 pixels (b >= 8: 188, 204, ..., 572); "
        f"got {size}: use {nearest}, or padding='same'."
    )


def _double_conv(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=padding),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=padding),
        nn.ReLU(inplace=True),
    )


def _center_crop(x: Tensor, size: List[int]) -> Tensor:
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class UNetOriginal(nn.Module):
    """The 2015 U-Net: ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H - 184, W - 184)`` (valid).

    With ``aux_classes=K`` the forward returns ``(logits, class_logits)``, the class logits
    ``(N, K)`` from a pooled head on the 1024-channel bottom features.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        padding: str = "valid",
        upsampling: str = "transposed",
        aux_classes: int | None = None,
        widths: Sequence[int] = _WIDTHS,
    ) -> None:
        super().__init__()
        self.padding = check_choice(padding, PADDINGS, "unet_original padding")
        self.upsampling = check_choice(upsampling, MODES, "upsampling mode")
        self.valid = padding == "valid"
        self.in_channels = in_channels
        pad = 0 if self.valid else 1
        widths = tuple(widths)
        self.down = nn.ModuleList(_double_conv(c_in, c_out, pad) for c_in, c_out in zip((in_channels, *widths[:-1]), widths))
        ups, convs = [], []
        for c_in, c_out in zip(widths[:0:-1], widths[-2::-1]):
            # transposed: the paper's 2x2 up-conv halving channels; nearest / bed-of-nails keep
            # them; max_unpool projects to the pooled stage's channels (c_out).
            up_ch = c_in if upsampling in ("nearest", "bed_of_nails") else c_out
            ups.append(Upsample(upsampling, c_in, up_ch))
            convs.append(_double_conv(up_ch + c_out, c_out, pad))
        self.ups = nn.ModuleList(ups)
        self.convs = nn.ModuleList(convs)
        self.head = SegmentationHead(widths[0], num_classes, kernel_size=1)  # the paper's 1x1 output layer
        self.aux_head = ClassificationHead(widths[-1], aux_classes) if aux_classes is not None else None
        for m in self.modules():
            # N(0, 2 / N), N = inputs of one unit: in * k * k for a convolution, in for the
            # non-overlapping up-conv.
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / m.in_channels) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        logits, deepest = self.forward_features(x)
        if self.aux_head is None:
            return logits
        return logits, self.aux_head(deepest)

    def forward_features(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(logits, bottom features)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise SegkitError(
                f"unet_original was built for batches (N, {self.in_channels}, H, W); got shape {list(x.shape)}: "
                f"create it with the image's channel count as in_channels."
            )
        h, w = x.shape[-2], x.shape[-1]
        if self.valid:
            unet_original_output_size(h)
            unet_original_output_size(w)
        else:
            x = fit_to(x, [h + (-h) % 16, w + (-w) % 16])
        unpool = self.upsampling == "max_unpool"
        skips: List[Tensor] = []
        switches: List[Tensor] = []
        for i, stage in enumerate(self.down):
            if i > 0:
                if unpool:
                    x, idx = F.max_pool2d_with_indices(x, 2, 2)
                    switches.append(idx)
                else:
                    x = F.max_pool2d(x, 2, 2)
            x = stage(x)
            skips.append(x)
        deepest = x
        for i, (up, conv) in enumerate(zip(self.ups, self.convs)):
            skip = skips[-2 - i]
            size = [2 * x.shape[-2], 2 * x.shape[-1]]
            if unpool:
                # Valid convolutions leave x smaller than the pooled map its switches index: pad it
                # back to the centre of that map, unpool into the pre-pool grid, crop the centre.
                idx = switches[-1 - i]
                dh, dw = idx.shape[-2] - x.shape[-2], idx.shape[-1] - x.shape[-1]
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
                x = _center_crop(up(x, idx, [skip.shape[-2], skip.shape[-1]]), size)
            else:
                x = up(x)
            x = conv(torch.cat([x, _center_crop(skip, size)], dim=1))
        logits = self.head(x)
        if not self.valid:
            logits = logits[..., :h, :w]
        return logits, deepest

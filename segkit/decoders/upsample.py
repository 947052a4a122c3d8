"""The upsampling modes every segkit decoder takes: the four the library is built around, and bilinear.

* ``"transposed"``: a learnable transposed convolution ("up-conv"). In U-Net it is the paper's
  2x2 / stride-2 up-conv (kernel = stride = ``scale``); in FCN it is Long et al.'s deconvolution,
  kernel ``2 * scale - scale % 2``, stride ``scale``, initialised to bilinear interpolation
  (:func:`bilinear_kernel`). Padding is chosen so the output is exactly ``scale`` times the input.
* ``"nearest"``: every value copied into its ``scale x scale`` block (:func:`nearest_upsample`).
* ``"bed_of_nails"``: every value at the top-left corner of its block, zeros elsewhere
  (:func:`bed_of_nails`).
* ``"max_unpool"``: every value put back where the encoder's max-pool found its maximum, zeros
  elsewhere (:func:`max_unpool`, SegNet's max-location unpooling). The positions are the encoder's
  *switches* (see :mod:`segkit.encoders.base`); an encoder stage that downsamples by strided
  convolution records the switches of a 2x2 max over that stage's input, so the mode works with
  every encoder. Overlapping pools (3x3 / stride 2) can send two values to one position: the
  first window's value (raster order) goes there and the other is dropped
  (:func:`unique_switches`), so the result is the same on every run and device, CUDA included,
  where a plain scatter (``F.max_unpool2d``) keeps whichever write lands last.
* ``"bilinear"``: bilinear interpolation (``align_corners=False``, torchvision's and the DeepLab
  papers'), straight to the target size when one is given (:func:`bilinear_upsample`), as smp's
  ``Unet(decoder_interpolation="bilinear")`` and torchvision's segmentation models resize.

:class:`Upsample` wraps the five behind one module ``Upsample(mode, in_channels, out_channels,
scale)``. Channel counts are changed *before* upsampling, where the map is ``scale**2`` times
smaller:

* ``"transposed"`` maps ``in_channels`` to ``out_channels`` itself;
* ``"nearest"``, ``"bilinear"`` and ``"bed_of_nails"`` have no weights; a 1x1 convolution projects to
  ``out_channels`` first when the two counts differ (for nearest the order does not matter, since a
  1x1 convolution commutes with copying; for bed-of-nails it keeps the holes exactly zero);
* ``"max_unpool"``: the switches carry one position per channel of the pooled encoder map, so the
  tensor must have the switches' channel count: ``out_channels`` *is* that count, and a 1x1
  convolution projects ``in_channels`` to it when they differ. The decoders read the counts from
  the encoder (:func:`switch_channels`). ``scale`` must be 2 (one pooling level per step).
  With ``reuse_switches=True`` the tensor keeps its channels instead and channel ``c`` is unpooled
  with the switches of channel ``c mod C``: the decoders use it where the switches are narrower
  than the decoder block (the image's 1 or 3 channels at the last step), since projecting down to
  them would squeeze the decoder through 1-3 channels at full resolution.

``forward(x, indices=None, output_size=None)``: ``indices`` are the switches (max_unpool only);
``output_size`` ``[H, W]`` is the size of the map being upsampled to. Max-unpooling needs it to tell
e.g. a 35-pixel level from a 34-pixel one; bilinear resizes to it; the other modes crop or zero-pad
their bottom/right edge to it, so a decoder's tensor always matches its skip connection whatever
rounding the encoder did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.decoders.init import init_nearest_upconv, init_projection
from segkit.errors import SegkitError

__all__ = [
    "MODES",
    "Upsample",
    "bed_of_nails",
    "bilinear_kernel",
    "bilinear_upsample",
    "check_choice",
    "cycle_switches",
    "fit_to",
    "max_unpool",
    "nearest_upsample",
    "switch_channels",
    "unique_switches",
]

MODES = ("transposed", "nearest", "bed_of_nails", "max_unpool", "bilinear")


def check_choice(value: object, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else a SegkitError that lists them all."""
    if not isinstance(value, str) or value not in choices:
        raise SegkitError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}.")
    return value


def _check_scale(scale: int) -> int:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise SegkitError(f"upsampling scale must be a positive integer; got {scale!r}.")
    return scale


def nearest_upsample(x: Tensor, scale: int = 2) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, scale*H, scale*W)``, each value copied into its ``scale x scale`` block."""
    return F.interpolate(x, scale_factor=float(scale), mode="nearest")


def bilinear_upsample(x: Tensor, scale: int = 2, size: Optional[List[int]] = None) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, scale*H, scale*W)`` (or ``size`` ``[H', W']``) by bilinear interpolation.

    ``align_corners=False``: pixel centres, as torchvision's segmentation models and the papers'
    Caffe/TensorFlow code resize logits.
    """
    if size is not None:
        return F.interpolate(x, size=[size[-2], size[-1]], mode="bilinear", align_corners=False)
    return F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=False)


def bed_of_nails(x: Tensor, scale: int = 2) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, scale*H, scale*W)``: each value at the top-left of its block, zeros elsewhere."""
    n, c, h, w = x.shape
    # (N, C, H, 1, W, 1) padded to (N, C, H, s, W, s): the value sits at offset (0, 0) of each block.
    nails = F.pad(x.reshape(n, c, h, 1, w, 1), [0, scale - 1, 0, 0, 0, scale - 1])
    return nails.reshape(n, c, h * scale, w * scale)


def _first_of_each_position(flat: Tensor, numel: int) -> Tensor:
    """Bool ``(N, C, k)``: entry ``j`` of ``flat`` (switches into a map of ``numel`` positions) is the
    first, in raster order, to name its position.

    Per plane, ``first[p]`` is the smallest ``j`` whose switch is ``p``, found by a
    ``scatter_reduce`` with ``amin``: a minimum does not depend on the order the writes arrive in,
    so this is deterministic on CUDA too (and allowed under ``torch.use_deterministic_algorithms``).
    """
    n, c, k = flat.shape
    order = torch.arange(k, device=flat.device, dtype=torch.int32).expand(n, c, k)
    first = torch.full((n, c, numel), k, device=flat.device, dtype=torch.int32)
    first = first.scatter_reduce(2, flat, order, reduce="amin", include_self=True)
    return first.gather(2, flat) == order


def unique_switches(indices: Tensor, numel: int) -> Tensor:
    """Switches ``(N, C, h, w)`` with each repeat of a position after its first (raster order) set to -1.

    ``numel`` is the size ``H * W`` of the map the switches index. Overlapping pools (3x3 / stride 2:
    the ResNet stem, GoogLeNet, Inception-v3) can find one input position as the maximum of two
    neighbouring windows, so a switch map may name a position twice in an ``(n, c)`` plane; here
    every non-negative index is distinct within its plane and every position named is still named
    once. This is the rule :func:`max_unpool` applies (it uses the mask, not the -1s).
    """
    n, c, h, w = indices.shape
    flat = indices.reshape(n, c, h * w)
    keep = _first_of_each_position(flat, numel)
    return torch.where(keep, flat, torch.full_like(flat, -1)).reshape(n, c, h, w)


def max_unpool(x: Tensor, indices: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
    """Put each value of ``x`` ``(N, C, h, w)`` where its max-pool switch says, zeros elsewhere.

    ``indices`` ``(N, C, h, w)`` are flat positions in the pooled map (as
    ``F.max_pool2d(..., return_indices=True)`` returns them); ``output_size`` ``[H, W]`` is that
    map's size, by default ``(2h, 2w)``. Where pooling windows overlap (3x3 / stride-2 pools) two
    switches may name one position: the value of the first window in raster order goes there and
    the later one is dropped (:func:`unique_switches`).

    Deterministic on every device. ``F.max_unpool2d`` is a scatter whose writes race on CUDA when
    two values share a position, so which value was kept (and the model's output) changed from run
    to run, and it refuses to run at all under ``torch.use_deterministic_algorithms(True)``. Here
    the first writer of each position is found first, and the values are scattered into a flat
    buffer with ``h * w`` spare slots in front: a kept value with switch ``p`` goes to slot
    ``h * w + p``, a dropped one to its own spare slot, and the spares are cut off. Every write has
    its own target; the gradient (a gather) gives dropped values zero, as they contributed nothing
    (``F.max_unpool2d`` gave them the gradient of the value that was kept). The cost, on the CPU:
    3 to 4 times ``F.max_unpool2d``'s time for the unpooling itself, about 15 % more for a ResNet-18
    U-Net's forward and backward in the ``max_unpool`` mode (128x128, one thread).
    """
    if indices.shape != x.shape:
        raise SegkitError(
            f"max_unpool needs one switch per value: the tensor has shape {list(x.shape)} but the "
            f"switches {list(indices.shape)}; project the tensor to the switches' channel count first (Upsample does)."
        )
    n, c, h, w = x.shape
    if output_size is None:
        size = [2 * h, 2 * w]
    else:
        # Kept as given (not int()-converted), so the ONNX exporter traces them as dynamic sizes.
        size = [output_size[-2], output_size[-1]]
    spare = h * w
    numel = size[0] * size[1]
    flat = indices.reshape(n, c, spare)
    keep = _first_of_each_position(flat, numel)
    own = torch.arange(spare, device=indices.device, dtype=indices.dtype).expand(n, c, spare)
    target = torch.where(keep, flat + spare, own)
    out = x.new_zeros(n, c, spare + numel).scatter(2, target, x.reshape(n, c, spare))
    return out[:, :, spare:].reshape(n, c, size[0], size[1])


def cycle_switches(indices: Tensor, channels: int) -> Tensor:
    """Switches ``(N, C, h, w)`` widened to ``(N, channels, h, w)``: channel ``c`` takes channel ``c mod C``'s."""
    if indices.shape[1] == channels:
        return indices
    return indices[:, torch.arange(channels, device=indices.device) % indices.shape[1]]


def fit_to(x: Tensor, size: List[int]) -> Tensor:
    """Crop or zero-pad the bottom/right edge of ``x`` ``(N, C, h, w)`` to ``size`` ``[H, W]``."""
    dh = size[0] - x.shape[-2]
    dw = size[1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, [0, dw, 0, dh])  # negative padding crops


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weight ``(channels, channels, k, k)`` of a transposed convolution that upsamples bilinearly.

    The filter of Long et al. (FCN, ``surgery.upsample_filt``): factor ``f = (k + 1) // 2``,
    ``1 - |i - c| / f`` per axis around ``c = f - 1`` (odd ``k``) or ``f - 0.5`` (even ``k``), each
    channel mapped to itself only. With stride ``f`` and padding ``(k - f) // 2`` it reproduces
    ``F.interpolate(mode="bilinear", align_corners=False)`` except within ``f`` pixels of the border
    (where interpolate clamps and the convolution sees zeros).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    filt = (taps[:, None] * taps[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class Upsample(nn.Module):
    """Upsample ``(N, in_channels, h, w)`` to ``(N, out_channels, scale*h, scale*w)`` in ``mode``.

    See the module docstring for the five modes and how channels change. ``bilinear_init=True``
    (transposed only, ``in_channels == out_channels``) gives FCN's bilinear-initialised,
    bias-free deconvolution; otherwise the up-conv is U-Net's ``scale x scale`` one with bias,
    initialised to a 1x1 projection followed by nearest upsampling (see :mod:`segkit.decoders.init`).
    """

    def __init__(self, mode: str, in_channels: int, out_channels: int, scale: int = 2, *, bilinear_init: bool = False,
                 reuse_switches: bool = False) -> None:
        super().__init__()
        self.mode = check_choice(mode, MODES, "upsampling mode")
        if reuse_switches and mode != "max_unpool":
            raise SegkitError(f"reuse_switches applies to the 'max_unpool' mode only, not {mode!r}.")
        self.reuse_switches = reuse_switches
        self.scale = _check_scale(scale)
        self.in_channels, self.out_channels = in_channels, out_channels
        # The learnable part: the up-conv itself, or a 1x1 projection applied before upsampling.
        self.conv: nn.Module
        if mode == "transposed":
            if bilinear_init:
                if in_channels != out_channels:
                    raise SegkitError(f"a bilinear-initialised up-conv maps channels to themselves; got {in_channels} -> {out_channels}.")
                kernel = 2 * scale - scale % 2
                self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=scale, padding=(kernel - scale) // 2, bias=False)
                with torch.no_grad():
                    self.conv.weight.copy_(bilinear_kernel(in_channels, kernel))
            else:
                self.conv = nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale)
                init_nearest_upconv(self.conv)  # starts as 1x1 projection + nearest upsampling
        else:
            if bilinear_init:
                raise SegkitError(f"bilinear_init applies to the 'transposed' mode only, not {mode!r}.")
            if mode == "max_unpool" and scale != 2:
                raise SegkitError(f"max_unpool undoes one 2x2 pooling at a time (scale=2); got scale={scale}: chain {scale}x as 2x steps.")
            self.conv = nn.Identity()
            if in_channels != out_channels:
                self.conv = nn.Conv2d(in_channels, out_channels, 1)
                init_projection(self.conv)

    def forward(self, x: Tensor, indices: Optional[Tensor] = None, output_size: Optional[List[int]] = None) -> Tensor:
        x = self.conv(x)
        if self.mode == "max_unpool":
            if indices is None:
                raise SegkitError("Upsample('max_unpool') needs the encoder's switches: call it with indices=...")
            if self.reuse_switches:
                indices = cycle_switches(indices, x.shape[1])
            return max_unpool(x, indices, output_size)
        if self.mode == "bilinear":
            return bilinear_upsample(x, self.scale, output_size)
        if self.mode == "nearest":
            x = nearest_upsample(x, self.scale)
        elif self.mode == "bed_of_nails":
            x = bed_of_nails(x, self.scale)
        if output_size is not None:
            x = fit_to(x, output_size)
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, in_channels={self.in_channels}, out_channels={self.out_channels}, scale={self.scale}"


def switch_channels(encoder: nn.Module) -> list[int]:
    """Channel count of each of ``encoder``'s switch tensors, read from one small forward pass.

    The contract fixes the switches' positions but not their channel count (a VGG pool's switches
    have the pooled level's channels, a ResNet stage's those of the level above it, the first one
    the image's), so decoders built for ``"max_unpool"`` ask the encoder once, in eval mode and
    without gradients, on an image of the smallest size it takes rounded up to a multiple of 32.
    An encoder that knows them without a forward pass (timm's, some of which take one image size
    only) says so with a ``switch_channels`` attribute.
    """
    known = getattr(encoder, "switch_channels", None)
    if known is not None:
        return [int(c) for c in known]
    reduction = max(encoder.reductions)
    side = -(-max(encoder.min_input_size, reduction) // reduction) * reduction
    param = next(encoder.parameters())
    probe = torch.zeros(1, encoder.in_channels, side, side, dtype=param.dtype, device=param.device)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            _, switches = encoder.forward_with_switches(probe)
    finally:
        encoder.train(was_training)
    return [int(s.shape[1]) for s in switches]

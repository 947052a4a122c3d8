"""Inference: whole-image or sliding-window logits, flip test-time augmentation, AMP on GPU.

    model, cfg = load_model("runs/quick/best.pt", device="cpu")
    logits = predict_logits(model, images)                               # whole image
    logits = predict_logits(model, images, tile=256, overlap=0.25)       # sliding window
    logits = predict_logits(model, images, tile=256, tta=("h", "v"))     # + flip TTA

Whole image: segkit's encoder models pad any input to a multiple of 32 themselves and crop the
logits back, so any image size works in one forward pass. Sliding window is for images far larger
than the training crops (whole-slide microscopy, satellite tiles): windows of ``tile`` pixels step
by ``tile * (1 - overlap)``; the last window of a row or column is shifted back inside the image,
so no window reaches past the border and nothing is padded; windows are run in batches of
``batch_size``; their logits are blended with Gaussian weights (sigma = 0.125 x tile per axis,
peak 1 at the window centre; nnU-Net's and MONAI's default), so window borders, where the model
sees the least context, count least. ``blend="constant"`` averages them with equal weights.

Flip TTA averages the logits of the image and of its flips (``"h"``: left-right, ``"v"``:
up-down, ``"hv"``: both), each flipped back. With all three flips the result is exactly
equivariant under those flips, whatever the model. AMP (autocast, bfloat16 where the GPU computes
it natively, else float16, or the dtype given) is used on CUDA only; logits are returned as
float32 on the input's device.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.errors import SegkitError

__all__ = [
    "BLENDS",
    "FLIPS",
    "flip_tta",
    "gaussian_weights",
    "load_model",
    "model_forward",
    "predict_logits",
    "sliding_window",
    "window_starts",
]

logger = logging.getLogger("segkit")

#: flip name -> the tensor dims it flips (on (N, C, H, W))
FLIPS: dict[str, tuple[int, ...]] = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
BLENDS = ("gaussian", "constant")

Forward = Callable[[Tensor], Tensor]


def load_model(checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """The model of a segkit run checkpoint in eval mode on ``device``, and its resolved config.

    ``checkpoint`` may also be a run directory (its ``best.pt``, else ``last.pt``).
    The checkpoint's weights replace everything, so ``model.encoder_weights`` (a file on the
    training machine) is not read.
    """
    from segkit.config import config_from_dict
    from segkit.engine.builders import build_model_from_config
    from segkit.engine.checkpoint import load_checkpoint

    if Path(checkpoint).is_dir():  # a run directory: its best checkpoint, else its last
        run = Path(checkpoint)
        found = [run / name for name in ("best.pt", "last.pt") if (run / name).is_file()]
        if not found:
            raise SegkitError(f"{run} is a folder without best.pt or last.pt; pass a checkpoint file or a run directory of `segkit train`.")
        checkpoint = found[0]
    state = load_checkpoint(checkpoint)
    config = state.get("config")
    if not isinstance(config, dict):
        raise SegkitError(f"checkpoint {checkpoint} holds no config; use a last.pt or best.pt written by `segkit train`.")
    cfg = config_from_dict(config, ["model.encoder_weights=null"], source=f"the config in {checkpoint}")
    if cfg.task != "segmentation":
        raise SegkitError(f"checkpoint {checkpoint} is a {cfg.task} model; evaluate, predict and export take segmentation checkpoints.")
    model = build_model_from_config(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SegkitError(f"checkpoint {checkpoint} does not fit the model its config describes ({first}); the file may be damaged.") from err
    return model.eval().to(device), cfg


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype for ``trainer.amp_dtype`` ``name`` on ``device``.

    ``auto``: bfloat16 where the GPU computes it natively (Ampere and newer), else float16;
    emulated bfloat16 (older GPUs report it as "supported") is slower than float16 and is not chosen.
    """
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def model_forward(model: nn.Module, amp: bool | torch.dtype = False, *, channels_last: bool = False) -> Forward:
    """``images (N, C, H, W) -> logits (N, K, H, W)`` float32: the main output only.

    ``amp``: autocast on CUDA (True: :func:`amp_dtype`'s default; or the dtype to use); it is
    off on other devices. ``channels_last``: the images are made channels-last first (as for a
    model trained that way). A model whose logits are not the input's size (``unet_original``
    with valid convolutions) raises a SegkitError: inference here maps every input pixel to a
    prediction.
    """

    def forward(images: Tensor) -> Tensor:
        use_amp = bool(amp) and images.device.type == "cuda"
        dtype = amp if isinstance(amp, torch.dtype) else amp_dtype(images.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=dtype, enabled=use_amp):
            output = model(images)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        if logits.shape[-2:] != images.shape[-2:]:
            raise SegkitError(
                f"the model turns a {images.shape[-1]}x{images.shape[-2]} input into {logits.shape[-1]}x{logits.shape[-2]} "
                "logits; inference needs logits of the input's size (build unet_original with padding='same')."
            )
        return logits.float()

    return forward


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Offsets of windows of length ``tile`` stepping by ``stride`` that cover ``[0, size)``.

    The last window is shifted back to end exactly at ``size`` (it overlaps its neighbour more),
    so no window reaches past the border. ``tile >= size`` gives one window at 0.
    """
    if tile < 1 or stride < 1:
        raise SegkitError(f"sliding window needs tile >= 1 and a step >= 1; got tile {tile}, step {stride}.")
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def gaussian_weights(tile: Sequence[int], sigma_scale: float = 0.125, device: torch.device | str | None = None) -> Tensor:
    """Blending weights ``(th, tw)``: a Gaussian with sigma ``sigma_scale * t`` per axis, 1 at the centre.

    The centre is ``(t - 1) / 2`` so the weights are symmetric; they are strictly positive (the
    smallest, at a corner of a tile with the default sigma, is exp(-16) ~ 1e-7), so a pixel that
    only one window covers gets exactly that window's logits.
    """
    if sigma_scale <= 0:
        raise SegkitError(f"sigma_scale must be > 0; got {sigma_scale}.")
    axes = []
    for t in tile:
        x = torch.arange(t, dtype=torch.float64, device=device) - (t - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (sigma_scale * t)) ** 2))
    return (axes[0][:, None] * axes[1][None, :]).float()


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise SegkitError(f"{name} must be a positive integer or [height, width]; got {value!r}.")
    return pair[0], pair[1]


def sliding_window(
    forward: Forward,
    images: Tensor,
    tile: int | Sequence[int],
    overlap: float = 0.25,
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
) -> Tensor:
    """Blend ``forward`` over windows of ``images (N, C, H, W)`` -> logits ``(N, K, H, W)`` float32.

    ``tile`` is clipped to the image; the step is ``max(1, int(tile * (1 - overlap)))`` per axis;
    ``batch_size`` windows (of any of the N images) go through ``forward`` at once.
    """
    if not 0.0 <= overlap < 1.0:
        raise SegkitError(f"overlap must lie in [0, 1); got {overlap}.")
    if blend not in BLENDS:
        raise SegkitError(f"blend is {blend!r}; choose one of {', '.join(BLENDS)}.")
    if batch_size < 1:
        raise SegkitError(f"batch_size must be >= 1; got {batch_size}.")
    n, _, height, width = images.shape
    th, tw = _pair(tile, "tile")
    th, tw = min(th, height), min(tw, width)
    ys = window_starts(height, th, max(1, int(th * (1 - overlap))))
    xs = window_starts(width, tw, max(1, int(tw * (1 - overlap))))
    if blend == "gaussian":
        weight = gaussian_weights((th, tw), sigma_scale, images.device)
    else:
        weight = torch.ones(th, tw, device=images.device)
    norm = torch.zeros(height, width, device=images.device)
    for y, x in itertools.product(ys, xs):
        norm[y : y + th, x : x + tw] += weight
    windows = [(i, y, x) for i in range(n) for y, x in itertools.product(ys, xs)]
    out: Tensor | None = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        logits = forward(torch.stack([images[i, :, y : y + th, x : x + tw] for i, y, x in chunk]))
        if out is None:
            out = torch.zeros(n, logits.shape[1], height, width, device=images.device)
        for (i, y, x), window_logits in zip(chunk, logits):
            out[i, :, y : y + th, x : x + tw] += window_logits * weight
    assert out is not None  # at least one window
    return out / norm


def flip_tta(forward: Forward, flips: Sequence[str] = ("h", "v", "hv")) -> Forward:
    """``forward`` averaged over the image and its ``flips``, each output flipped back."""
    unknown = [f for f in flips if f not in FLIPS]
    if unknown:
        raise SegkitError(f"unknown flip {unknown[0]!r}; choose among {', '.join(FLIPS)}.")

    def tta(images: Tensor) -> Tensor:
        total = forward(images)
        for name in flips:
            dims = FLIPS[name]
            total = total + forward(images.flip(dims)).flip(dims)
        return total / (1 + len(flips))

    return tta


@torch.inference_mode()
def predict_logits(
    model: nn.Module | Forward,
    images: Tensor,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    tta: Sequence[str] | bool = (),
    amp: bool | torch.dtype = False,
) -> Tensor:
    """Logits ``(N, K, H, W)`` float32 of ``images (N, C, H, W)`` (already normalised).

    ``tile=None``: one forward pass over the whole images; else sliding window (see
    :func:`sliding_window`). ``tta``: flips to average over (``True`` = h, v and hv). ``amp``:
    autocast when the images are on CUDA.
    """
    forward = model_forward(model, amp) if isinstance(model, nn.Module) else model
    flips = tuple(FLIPS) if tta is True else tuple(tta or ())
    if flips:
        forward = flip_tta(forward, flips)
    if tile is None:
        return forward(images)
    return sliding_window(forward, images, tile, overlap, blend=blend, sigma_scale=sigma_scale, batch_size=batch_size)


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits ``(N, K, h, w)`` resized bilinearly to ``size`` (the ground truth's), unchanged if equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def check_tile_options(tile: int | None, overlap: float) -> None:
    """SegkitErrors for command-line values the sliding window cannot take."""
    if tile is not None and tile < 1:
        raise SegkitError(f"--tile must be a positive number of pixels; got {tile}.")
    if not 0.0 <= overlap < 1.0 or math.isnan(overlap):
        raise SegkitError(f"--overlap must lie in [0, 1) (a fraction of the tile); got {overlap}.")

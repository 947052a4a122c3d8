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

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.errors import SegkitError, check_tile_options, positive_int  # check_tile_options: imported from here too

__all__ = [
    "BLENDS",
    "FLIPS",
    "flip_tta",
    "gaussian_weights",
    "load_model",
    "model_forward",
    "predict_logits",
    "sliding_window",
    "sliding_window_rows",
    "warn_heavy_overlap",
    "window_starts",
]

logger = logging.getLogger("segkit")

#: flip name -> the tensor dims it flips (on (N, C, H, W))
FLIPS: dict[str, tuple[int, ...]] = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
BLENDS = ("gaussian", "constant")

Forward = Callable[[Tensor], Tensor]


def load_model(checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """The model of a segkit run checkpoint in eval mode on ``device`` (``"auto"``: CUDA when there is one), and its resolved config.

    ``checkpoint`` may also be a run directory (its ``best.pt``, else ``last.pt``), or a YAML
    config whose ``model.weights`` (or ``model.encoder_weights``) gives the weights, e.g.
    torchvision's published ``coco_with_voc_labels_v1``: the model is built as training would
    build it, so a published model evaluates with no checkpoint written first. The checkpoint's
    weights replace everything, so ``model.encoder_weights`` (a file on the training machine) is
    not read.
    """
    from segkit.config import config_from_dict, escape_interpolations, load_config
    from segkit.engine.builders import build_model_from_config, resolve_normalisation
    from segkit.engine.checkpoint import load_checkpoint
    from segkit.engine.train import resolve_device

    if isinstance(device, str):
        device = resolve_device(device)  # "auto", and "cuda" without a GPU named as a user error
    if Path(checkpoint).suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(checkpoint)
        if cfg.task != "segmentation":
            raise SegkitError(f"config {checkpoint} is a {cfg.task} config; evaluate, predict and export take segmentation models.")
        if cfg.model.get("weights") is None and cfg.model.encoder_weights is None:
            raise SegkitError(f"config {checkpoint} names no weights (model.weights or model.encoder_weights); "
                              "set one, e.g. model.weights=coco_with_voc_labels_v1, or pass a checkpoint.")
        resolve_normalisation(cfg)
        return build_model_from_config(cfg).eval().to(device), cfg
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
    # The checkpoint's weights replace everything: files named at training time need not exist here.
    # Its config was stored resolved: a "${" still in it is text (an escaped \${...} of the run's file).
    cfg = config_from_dict(escape_interpolations(config), ["model.encoder_weights=null", "model.weights=null"],
                           source=f"the config in {checkpoint}")
    if cfg.task != "segmentation":
        raise SegkitError(f"checkpoint {checkpoint} is a {cfg.task} model; evaluate, predict and export take segmentation checkpoints "
                          "(a classifier is scored on its validation split during training: see the run's metrics.jsonl and the "
                          "metrics stored in best.pt).")
    model = build_model_from_config(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SegkitError(f"checkpoint {checkpoint} does not fit the model its config describes ({first}); the file may be damaged.") from err
    return model.eval().to(device), cfg


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype for ``trainer.amp_dtype`` ``name`` on ``device``, as training decides it
    (:func:`segkit.engine.amp.resolve_amp`: bfloat16 only where the GPU computes it natively)."""
    from segkit.engine.amp import resolve_amp

    return resolve_amp(True, name, device)[1] if device.type == "cuda" else torch.float16


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
    """``(height, width)`` from one positive integer (numpy's too) or two."""
    message = f"{name} must be a positive integer or [height, width]; got {value!r}."
    items = list(value) if isinstance(value, (Sequence, np.ndarray)) else [value, value]
    if len(items) != 2:
        raise SegkitError(message)
    return positive_int(items[0], message), positive_int(items[1], message)


def warn_heavy_overlap(tile: int | None, overlap: float) -> None:
    """Log a warning when ``overlap`` makes the sliding window pass over each pixel more than 16
    times (overlap above 0.75): e.g. ``--tile 64 --overlap 0.99`` steps 1 pixel at a time, 4096
    forward passes per pixel, which runs for hours without looking stuck."""
    if tile is None:
        return
    step = _window_step(tile, overlap)
    passes = (tile / step) ** 2
    if passes > 16:
        default = (tile / _window_step(tile, 0.25)) ** 2
        logging.getLogger("segkit").warning(
            f"--overlap {overlap} with --tile {tile} moves the window {step} pixel(s) at a time, so in images larger than the "
            f"tile each pixel is predicted about {passes:.0f} times ({default:.1f} at the default overlap 0.25), and inference "
            "takes that much longer; an overlap of 0.25-0.5 is usual.")


def _window_step(tile: int, overlap: float) -> int:
    """Pixels from one window to the next along an axis of ``tile`` pixels: ``tile x (1 - overlap)``
    rounded down, at least 1. The 1e-6 keeps float error from rounding a whole number down a pixel
    (``10 * (1 - 0.8)`` is 1.9999999999999996, which ran twice as many windows per axis)."""
    return max(1, int(tile * (1 - overlap) + 1e-6))


def _window_grid(height: int, width: int, tile: int | Sequence[int], overlap: float) -> tuple[int, int, list[int], list[int]]:
    """``(th, tw, ys, xs)``: the tile clipped to the image and the window offsets per axis."""
    if not 0.0 <= overlap < 1.0:
        raise SegkitError(f"overlap must lie in [0, 1); got {overlap}.")
    th, tw = _pair(tile, "tile")
    th, tw = min(th, height), min(tw, width)
    ys = window_starts(height, th, _window_step(th, overlap))
    xs = window_starts(width, tw, _window_step(tw, overlap))
    return th, tw, ys, xs


def sliding_window_rows(
    forward: Forward,
    read_rows: Callable[[int, int], Tensor],
    height: int,
    width: int,
    tile: int | Sequence[int],
    overlap: float = 0.25,
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
) -> Iterator[tuple[int, int, Tensor]]:
    """Blended sliding-window logits of one image, a stripe of rows at a time.

    ``read_rows(y0, y1)`` gives the model input's rows ``(C, y1 - y0, width)``. Windows run in
    row-major order, ``batch_size`` per forward pass; as soon as no later window reaches a row,
    its logits are final and yielded as ``(y0, y1, logits (K, y1 - y0, width))``. Memory holds the
    logits of the window rows in flight, about ``(K, tile + step * batch_size / windows_per_row, width)``,
    never the whole image's: this is how ``segkit predict --tile`` handles slides of any size.
    The stripes, concatenated, are :func:`sliding_window`'s logits for that image.
    """
    if blend not in BLENDS:
        raise SegkitError(f"blend is {blend!r}; choose one of {', '.join(BLENDS)}.")
    if batch_size < 1:
        raise SegkitError(f"batch_size must be >= 1; got {batch_size}.")
    th, tw, ys, xs = _window_grid(height, width, tile, overlap)
    windows = [(y, x) for y in ys for x in xs]
    top = 0  # the image row of the buffers' first row; rows above it were yielded
    acc: Tensor | None = None  # logits summed over the windows run so far, rows [top, top + acc.shape[1])
    norm: Tensor | None = None  # their summed weights
    weight: Tensor | None = None
    inputs: dict[int, Tensor] = {}  # model input rows [y, y + th) of the window rows in use
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        for y in {y for y, _ in chunk} - set(inputs):
            inputs[y] = read_rows(y, y + th)
        logits = forward(torch.stack([inputs[y][:, :, x : x + tw] for y, x in chunk]))
        if acc is None or norm is None or weight is None:
            device = logits.device
            weight = gaussian_weights((th, tw), sigma_scale, device) if blend == "gaussian" else torch.ones(th, tw, device=device)
            acc = torch.zeros(logits.shape[1], 0, width, device=device)
            norm = torch.zeros(0, width, device=device)
        grow = chunk[-1][0] + th - top - acc.shape[1]
        if grow > 0:
            acc = torch.cat([acc, acc.new_zeros(acc.shape[0], grow, width)], dim=1)
            norm = torch.cat([norm, norm.new_zeros(grow, width)], dim=0)
        for (y, x), window_logits in zip(chunk, logits):
            acc[:, y - top : y - top + th, x : x + tw] += window_logits * weight
            norm[y - top : y - top + th, x : x + tw] += weight
        pending = windows[start + batch_size][0] if start + batch_size < len(windows) else height
        if pending > top:  # rows no later window reaches: final
            done = pending - top
            yield top, pending, acc[:, :done] / norm[:done]
            acc, norm, top = acc[:, done:], norm[done:], pending
            inputs = {y: rows for y, rows in inputs.items() if y >= pending}


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

    ``tile`` is clipped to the image; the step is ``tile * (1 - overlap)`` rounded down (at least 1) per axis;
    ``batch_size`` windows of one row of windows go through ``forward`` at once (see
    :func:`sliding_window_rows`, which this assembles).
    """
    n, _, height, width = images.shape
    out: Tensor | None = None
    for i in range(n):
        for y0, y1, logits in sliding_window_rows(forward, lambda a, b: images[i, :, a:b], height, width, tile, overlap,
                                                  blend=blend, sigma_scale=sigma_scale, batch_size=batch_size):
            if out is None:
                out = torch.empty(n, logits.shape[0], height, width, device=images.device)
            out[i, :, y0:y1] = logits
    assert out is not None  # at least one window
    return out


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


def _check_images(images: Any, model: nn.Module | Forward) -> Tensor:
    """``images`` as the float tensor ``(N, C, H, W)`` the model takes, or a SegkitError saying what to pass."""
    if not isinstance(images, Tensor):
        raise SegkitError(f"predict_logits takes a float tensor (N, C, H, W) of standardised images; got {type(images).__name__}. "
                          "For image files or arrays use segkit.engine.predict.predict_image, which prepares them as the checkpoint's config says.")
    if not images.is_floating_point() or images.dim() != 4:
        raise SegkitError(f"predict_logits takes a float tensor (N, C, H, W) of standardised images; got a {images.dtype} tensor "
                          f"of shape {tuple(images.shape)}. For images as stored use segkit.engine.predict.predict_image.")
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if parameter is not None and images.dtype != parameter.dtype:
        images = images.to(parameter.dtype)  # float64 or half images for a float32 model (autocast handles mixed precision)
    return images


@torch.no_grad()
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
    :func:`sliding_window`). ``tta``: flips to average over (``True`` = h, v and hv; a name such
    as ``"hv"`` or a list of names). ``amp``: autocast when the images are on CUDA. A model left in
    training mode runs in eval mode here and is put back after (its BatchNorm statistics are not
    touched). For image files or arrays as stored, :func:`segkit.engine.predict.predict_image`
    prepares them as the checkpoint's config says.
    """
    images = _check_images(images, model)
    forward = model_forward(model, amp) if isinstance(model, nn.Module) else model
    flips = tuple(FLIPS) if tta is True else (tta,) if isinstance(tta, str) else tuple(tta or ())
    if flips:
        forward = flip_tta(forward, flips)
    training = isinstance(model, nn.Module) and model.training
    if training:
        model.eval()  # type: ignore[union-attr]
    try:
        if tile is None:
            return forward(images)
        return sliding_window(forward, images, tile, overlap, blend=blend, sigma_scale=sigma_scale, batch_size=batch_size)
    finally:
        if training:
            model.train()  # type: ignore[union-attr]


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits ``(N, K, h, w)`` resized bilinearly to ``size`` (the ground truth's), unchanged if equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)



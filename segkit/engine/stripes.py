"""Prediction on images of any size in bounded memory: read, standardise and label by stripes of rows.

``segkit predict --tile T`` (with no resizing ``val_transforms``) takes this path for every image:

- the image is opened lazily (:func:`segkit.data.io.open_image`: uncompressed TIFFs are
  memory-mapped, other formats decoded once in their own dtype, 1 byte per pixel for 8-bit grey);
- its scaling to [0, 1] is fixed once from the whole image (:func:`segkit.data.io.unit_scale`) and
  applied to the rows each window row needs, then standardised: exactly the values the
  whole-image path computes;
- the sliding window streams (:func:`segkit.engine.inference.sliding_window_rows`): logits live
  only for the window rows in flight and are reduced to labels stripe by stripe.

So memory is the model, one stripe of inputs and logits (``K x tile x width`` floats) and the
label image (1 byte per pixel up to 256 classes), not ``K x H x W`` float32 logits: a 20k x 20k
slide needs about 400 MB of labels instead of 4.8 GB of logits for three classes. The labels
equal the whole-image sliding window's (``tests/test_stripes.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segkit.data.io import open_image, scaled_by_255, unit_scale
from segkit.engine.inputs import DeviceScaling
from segkit.errors import SegkitError

__all__ = ["OVERLAY_MAX_SIDE", "RowReader", "overlay_rows", "striped_labels"]

#: overlays of bigger images are drawn subsampled to this longer side (a 20k slide's overlay would
#: otherwise be a 1.2 GB RGB array; the masks keep every pixel)
OVERLAY_MAX_SIDE = 4096


class RowReader:
    """Rows of an image file as model input: scaled as the dataset scales the whole image, standardised.

    ``reader(y0, y1)`` -> ``(C, y1 - y0, W)`` float32 on ``device``; ``reader.unit(y0, y1, step)``
    -> the [0, 1] rows (every ``step``-th row and column) for overlays.
    """

    def __init__(self, path: Path, dataset: Any, device: torch.device) -> None:
        self.path = path
        self.raw = open_image(path)
        channels = self.raw.shape[2]
        self.repeat = channels == 1 and dataset.in_channels == 3  # a grayscale image among RGB ones
        if channels != dataset.in_channels and not self.repeat:
            raise SegkitError(dataset.channel_message(path, channels))
        self.height, self.width = int(self.raw.shape[0]), int(self.raw.shape[1])
        self.scale = unit_scale(self.raw, dataset.scaling, dataset.percentiles)
        self.standardise = DeviceScaling.of(dataset)  # the standardisation every other path uses
        self.as_stored = scaled_by_255(self.raw.dtype, dataset.scaling)
        self.device = device

    def unit(self, y0: int, y1: int, step: int = 1) -> np.ndarray:
        rows = self.scale(np.asarray(self.raw[y0:y1:step, ::step]))
        return np.repeat(rows, 3, axis=2) if self.repeat else rows

    def __call__(self, y0: int, y1: int) -> Tensor:
        if self.as_stored:  # 8-bit: scaled with the standardisation, as the whole-image path does
            rows = np.asarray(self.raw[y0:y1])
            rows = np.repeat(rows, 3, axis=2) if self.repeat else rows
        else:
            rows = self.unit(y0, y1)
        chw = np.ascontiguousarray(rows.transpose(2, 0, 1))
        if not chw.flags.writeable:  # rows of a read-only memory map: torch warns on (and must not get) those
            chw = chw.copy()
        return self.standardise(torch.from_numpy(chw).to(self.device))


@torch.inference_mode()
def striped_labels(
    forward: Callable[[Tensor], Tensor],
    reader: RowReader,
    num_classes: int,
    tile: int,
    overlap: float,
    *,
    batch_size: int = 4,
) -> np.ndarray:
    """Class labels ``(H, W)`` (uint8, or uint16 beyond 256 classes) of the sliding window over ``reader``'s image."""
    from segkit.engine.inference import sliding_window_rows

    labels = np.empty((reader.height, reader.width), dtype=np.uint8 if num_classes <= 256 else np.uint16)
    for y0, y1, logits in sliding_window_rows(forward, reader, reader.height, reader.width, tile, overlap, batch_size=batch_size):
        labels[y0:y1] = logits.argmax(0).cpu().numpy()
    return labels


def overlay_rows(reader: RowReader, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The class-colour overlay (h, w, 3) uint8, drawn stripe by stripe, subsampled to at most
    :data:`OVERLAY_MAX_SIDE` pixels on the longer side."""
    from segkit.engine.plots import overlay

    step = max(1, math.ceil(max(reader.height, reader.width) / OVERLAY_MAX_SIDE))
    stripes = []
    for y0 in range(0, reader.height, 1024 * step):
        y1 = min(y0 + 1024 * step, reader.height)
        unit = reader.unit(y0, y1, step)
        shown = unit if unit.shape[2] == 3 else unit[..., 0]
        stripes.append((overlay(shown, labels[y0:y1:step, ::step], num_classes) * 255.0 + 0.5).astype(np.uint8))
    return np.concatenate(stripes, axis=0)

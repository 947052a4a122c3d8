"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``: ``w_c`` balances the class
frequencies, and the second term puts large weights on the thin background gaps between touching
cells, which is what makes U-Net learn to separate them. It is computed on the CPU with
scipy.ndimage, once per sample: in the data pipeline (:class:`UNetWeightMap`, which the training
engine applies to each augmented mask in the DataLoader workers when the loss has a
``weight_map_ce`` term), or, slower, by :class:`segkit.losses.WeightMapCrossEntropyLoss` from
the target in each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage

__all__ = ["UNetWeightMap", "unet_weight_map"]

MaskT = TypeVar("MaskT", np.ndarray, torch.Tensor)

#: The border term is truncated where it is below this value (absolute), which lets each cell's
#: distance transform run on a window around the cell instead of on the whole image.
BORDER_TOLERANCE = 1e-6


def unet_weight_map(
    mask: MaskT,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | None = None,
    background: int = 0,
    ignore_index: int | None = None,
) -> MaskT:
    """Per-pixel loss weights ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` of a label mask.

    Args:
        mask: integer labels ``(H, W)`` or a batch ``(N, H, W)``; a numpy array or a tensor.
        w0, sigma: height and width (in pixels) of the border term; the paper uses 10 and 5.
        class_weights: ``w_c`` per class label, indexed by label value. None (default) balances the
            class frequencies of each mask: ``w_c = n / (K * n_c)`` for the ``K`` classes present,
            ``n_c`` pixels of class ``c`` among ``n`` counted pixels; the weights then average 1
            over the mask and every present class carries the same total weight. (The paper
            balances frequencies over the training set: pass those weights here to do that.)
        background: the background label. Cells are the connected components (4-connectivity) of
            each other class, so touching cells of different classes stay apart.
        ignore_index: a label whose pixels get weight 0 and are neither class nor cell.

    Returns:
        float32 weights of the mask's shape, of the mask's kind (numpy array, or tensor on the
        mask's device).

    ``d1``/``d2`` are the Euclidean distances to the nearest and second-nearest cell. The border
    term is applied on background pixels (the gaps the paper's Figure 3d shows weighted): inside a
    cell ``d1`` is 0 and the term would only blur the cell's edge. With fewer than two cells in the
    mask it is 0. Cost: one distance transform per cell on a window of the cell's bounding box grown
    by ``R = sigma * sqrt(2 ln(w0 / 1e-6))`` pixels (beyond which the term is below 1e-6), i.e.
    ``O(K * (box + 2R)^2)`` time for ``K`` cells and ``O(H * W)`` memory, fine for the hundreds of
    cells of a microscopy crop.
    """
    if isinstance(mask, torch.Tensor):
        weights = unet_weight_map(mask.detach().cpu().numpy(), w0, sigma, class_weights, background, ignore_index)
        return torch.from_numpy(weights).to(mask.device)
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3) or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise ValueError(f"mask must hold integer labels of shape (H, W) or (N, H, W); got {mask.dtype} {mask.shape}.")
    if mask.ndim == 3:
        return np.stack([unet_weight_map(m, w0, sigma, class_weights, background, ignore_index) for m in mask])
    if sigma <= 0:
        raise ValueError(f"sigma must be positive; got {sigma}.")
    mask = mask.astype(np.int64)
    valid = np.ones(mask.shape, bool) if ignore_index is None else mask != ignore_index
    weights = _class_weight_term(mask, valid, class_weights)
    if w0 > BORDER_TOLERANCE:  # below it the border term is truncated away everywhere
        border = valid & (mask == background)
        d1, d2 = _two_nearest_cell_distances(mask, valid, background, sigma * math.sqrt(2 * math.log(w0 / BORDER_TOLERANCE)))
        weights[border] += w0 * np.exp(-((d1[border] + d2[border]) ** 2) / (2 * sigma**2))
    weights[~valid] = 0
    return weights.astype(np.float32)


@dataclass(frozen=True)
class UNetWeightMap:
    """:func:`unet_weight_map` with its options fixed: ``UNetWeightMap(w0=10)(mask)``.

    A plain picklable object (DataLoader workers receive it) whose equality compares the options,
    so two loss terms that need the same map can share one.
    """

    w0: float = 10.0
    sigma: float = 5.0
    class_weights: tuple[float, ...] | None = None
    background: int = 0
    ignore_index: int | None = None

    def __call__(self, mask: MaskT) -> MaskT:
        return unet_weight_map(mask, self.w0, self.sigma, self.class_weights, self.background, self.ignore_index)


def _class_weight_term(mask: np.ndarray, valid: np.ndarray, class_weights: Sequence[float] | None) -> np.ndarray:
    labels = mask[valid]
    if class_weights is None:
        classes, counts = np.unique(labels, return_counts=True)
        table = dict(zip(classes.tolist(), (labels.size / (len(classes) * counts)).tolist()))
        out = np.zeros(mask.shape, np.float64)
        for label, weight in table.items():
            out[mask == label] = weight
        return out
    table = np.asarray(class_weights, np.float64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        bad = labels.max() if labels.max() >= len(table) else labels.min()
        raise ValueError(f"class_weights has {len(table)} entries but the mask holds label {bad}.")
    out = np.zeros(mask.shape, np.float64)
    out[valid] = table[labels]
    return out


def _two_nearest_cell_distances(
    mask: np.ndarray, valid: np.ndarray, background: int, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each pixel to its nearest and second-nearest cell (inf beyond ``radius``)."""
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    grow = int(math.ceil(radius))
    height, width = mask.shape
    for label in np.unique(mask[valid]):
        if label == background:
            continue
        cells, _ = ndimage.label(mask == label)
        for index, box in enumerate(ndimage.find_objects(cells), start=1):
            rows = slice(max(box[0].start - grow, 0), min(box[0].stop + grow, height))
            cols = slice(max(box[1].start - grow, 0), min(box[1].stop + grow, width))
            dist = ndimage.distance_transform_edt(cells[rows, cols] != index)
            dist[dist > radius] = np.inf
            near, second = d1[rows, cols], d2[rows, cols]
            second[...] = np.minimum(second, np.maximum(near, dist))
            near[...] = np.minimum(near, dist)
    return d1, d2

"""The U-Net weight map (Ronneberger et al. 2015, eq. 2) and the pixel-weighted cross-entropy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.losses import CombinedLoss, CrossEntropyLoss, WeightMapCrossEntropyLoss, unet_weight_map


def two_touching_cells() -> np.ndarray:
    """Two 8x8 cells of class 1, side by side with a one-pixel background gap at column 12."""
    mask = np.zeros((24, 32), np.int64)
    mask[8:16, 4:12] = 1
    mask[8:16, 13:21] = 1
    return mask


def brute_force(mask: np.ndarray, w0: float, sigma: float, class_weights: list[float]) -> np.ndarray:
    """eq. 2 pixel by pixel: distances to every pixel of every cell, cells found by flood fill."""
    height, width = mask.shape
    cell_of = -np.ones(mask.shape, int)
    cells: list[list[tuple[int, int]]] = []
    for y, x in itertools.product(range(height), range(width)):
        if mask[y, x] == 0 or cell_of[y, x] >= 0:
            continue
        stack, members = [(y, x)], []
        cell_of[y, x] = len(cells)
        while stack:
            cy, cx = stack.pop()
            members.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] == mask[y, x] and cell_of[ny, nx] < 0:
                    cell_of[ny, nx] = len(cells)
                    stack.append((ny, nx))
        cells.append(members)
    out = np.zeros(mask.shape)
    for y, x in itertools.product(range(height), range(width)):
        out[y, x] = class_weights[mask[y, x]]
        if mask[y, x] == 0 and len(cells) >= 2:
            d = sorted(min(math.hypot(y - cy, x - cx) for cy, cx in members) for members in cells)
            out[y, x] += w0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return out


@pytest.mark.parametrize("sigma", [3.0, 1.0])  # sigma=1: the windowed distance transforms truncate
def test_weight_map_matches_brute_force(sigma):
    mask = np.zeros((14, 16), np.int64)
    mask[2:6, 2:7] = 1
    mask[2:5, 8:12] = 1  # 1-pixel gap to the first cell
    mask[8:12, 4:9] = 2  # a cell of another class
    mask[9, 13] = 1  # a one-pixel cell
    got = unet_weight_map(mask, w0=10, sigma=sigma, class_weights=[1.0, 2.0, 3.0])
    expected = brute_force(mask, 10, sigma, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_weight_map_peaks_in_the_gap_and_falls_off_with_distance():
    mask = two_touching_cells()
    weights = unet_weight_map(mask, w0=10, sigma=5, class_weights=[1.0, 1.0])
    gap = weights[8:16, 12]
    assert weights.max() == pytest.approx(gap.max())
    # d1 + d2 = 2 in the gap: w = 1 + 10 exp(-4 / 50)
    np.testing.assert_allclose(gap, 1 + 10 * math.exp(-4 / 50), rtol=1e-6)
    # moving away from the gap (above the cells, column 12), the weight falls strictly
    column = weights[:8, 12][::-1]  # rows 7, 6, ..., 0
    assert (np.diff(column) < 0).all() and column[0] < gap.min()
    # inside the cells only the class weight
    assert (weights[mask == 1] == 1.0).all()
    # one cell alone: no border term
    single = mask.copy()
    single[:, 13:] = 0
    assert np.allclose(unet_weight_map(single, class_weights=[1.0, 1.0]), 1.0)


def test_default_class_weights_balance_frequencies():
    mask = two_touching_cells()
    weights = unet_weight_map(mask, w0=0)
    n_fg = (mask == 1).sum()
    assert weights[mask == 1][0] == pytest.approx(mask.size / (2 * n_fg))
    assert weights.mean() == pytest.approx(1.0)  # each class carries half of the total weight
    assert weights[mask == 0].sum() == pytest.approx(weights[mask == 1].sum())


def test_weight_map_batches_tensors_and_ignores():
    mask = torch.from_numpy(np.stack([two_touching_cells(), np.zeros((24, 32), np.int64)]))
    mask[1, :2] = 255
    weights = unet_weight_map(mask, ignore_index=255)
    assert isinstance(weights, torch.Tensor) and weights.dtype == torch.float32 and weights.shape == mask.shape
    np.testing.assert_allclose(weights[0].numpy(), unet_weight_map(two_touching_cells()))
    assert (weights[1, :2] == 0).all() and (weights[1, 2:] == 1).all()
    with pytest.raises(ValueError, match="label 2"):
        unet_weight_map(np.array([[0, 2]]), class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="integer labels"):
        unet_weight_map(np.zeros((4, 4), np.float32))


def test_weight_map_cross_entropy():
    mask = torch.from_numpy(two_touching_cells()).unsqueeze(0)
    mask[0, 0, :5] = 255
    logits = torch.randn(1, 2, 24, 32, requires_grad=True)
    loss_fn = WeightMapCrossEntropyLoss()
    # a weight map of ones is plain cross-entropy
    torch.testing.assert_close(loss_fn(logits, mask, weight_map=torch.ones(mask.shape)), F.cross_entropy(logits, mask, ignore_index=255))
    # without a map it computes unet_weight_map of the target
    weights = unet_weight_map(mask, ignore_index=255)
    expected = (F.cross_entropy(logits, mask, ignore_index=255, reduction="none") * weights).sum() / (mask != 255).sum()
    loss = loss_fn(logits, mask)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the gap's pixels weigh more than pixels far from the cells
    per_pixel = WeightMapCrossEntropyLoss(reduction="none")(logits, mask, weight_map=weights) / F.cross_entropy(
        logits, mask, ignore_index=255, reduction="none"
    ).clamp_min(1e-12)
    assert per_pixel[0, 10, 12] > 5 * per_pixel[0, 22, 30]
    # CombinedLoss passes weight_map only to the losses that take it
    combined = CombinedLoss([(CrossEntropyLoss(), 1.0), (loss_fn, 1.0)])
    torch.testing.assert_close(combined(logits, mask, weight_map=weights), F.cross_entropy(logits, mask, ignore_index=255) + expected)

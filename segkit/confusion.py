"""The scores of a summed confusion matrix (mIoU and friends), in numpy: no torch to import.

:meth:`segkit.metrics.ConfusionMatrix.compute` and ``segkit evaluate --pred --gt`` (which counts
with numpy in its decoding threads and never imports torch) both report through
:func:`confusion_scores`, so every path gives the same figures from the same counts. The
conventions are ConfusionMatrix's: a class absent from both ground truth and prediction has IoU
NaN and is left out of the means; a class predicted but absent from the ground truth has IoU 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["confusion_scores"]


def _nanmean(values: np.ndarray) -> float:
    """The mean of the non-NaN values; NaN (no warning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def confusion_scores(matrix: np.ndarray, image_miou_sum: float = math.nan,
                     images: float = 0.0) -> dict[str, float | list[float] | list[list[int]]]:
    """Scores of ``matrix`` ``(C, C)`` (rows ground truth, columns prediction; counted pixels).

    ``image_miou_sum`` / ``images``: the sum of the per-image mean IoUs and the number of images
    scored, for ``per_image_miou`` (NaN when no image was). Returns the dict
    ``ConfusionMatrix.compute()`` documents: ``miou``, ``iou``, ``mdice``, ``dice``,
    ``pixel_accuracy``, ``mean_accuracy``, ``accuracy``, ``fwiou``, ``per_image_miou``,
    ``confusion_matrix``.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion_scores needs a square (C, C) matrix; got shape {counts.shape}.")
    tp = np.diagonal(counts)
    gt = counts.sum(1)
    predicted = counts.sum(0)
    total = gt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt + predicted - tp)  # 0/0 = NaN: absent from both
        dice = 2 * tp / (gt + predicted)
        accuracy = tp / gt
        fwiou = float(np.nansum(gt / total * iou)) if total > 0 else math.nan
        pixel_accuracy = float(tp.sum() / total) if total > 0 else math.nan
    return {
        "miou": _nanmean(iou),
        "iou": iou.tolist(),
        "mdice": _nanmean(dice),
        "dice": dice.tolist(),
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": _nanmean(accuracy),
        "accuracy": accuracy.tolist(),
        "fwiou": fwiou,
        "per_image_miou": float(image_miou_sum) / float(images) if images > 0 else math.nan,
        "confusion_matrix": counts.astype(np.int64).tolist(),
    }

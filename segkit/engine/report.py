"""Evaluation reports: a per-class table on the console, JSON, a confusion-matrix PNG, the worst images.

The JSON holds the keys of ``ConfusionMatrix.compute()`` unchanged (per-class lists in class
order, NaN written as null) and, beside them: ``classes``, ``num_classes``, ``ignore_index``,
``num_images``, ``pixels`` (ground-truth pixels per class), ``images`` (every image's mean IoU
over the classes in its ground truth, in evaluation order), ``worst_images`` (the k lowest),
``warnings`` and ``source`` (what was evaluated). ``EvalReport.details`` (each image's pixel accuracy
and ground-truth classes) feeds the HTML page (``segkit.engine.html``), not the JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EvalReport", "format_report", "image_figures", "json_safe", "plot_confusion", "plot_panels", "write_report"]


def image_figures(counts: np.ndarray) -> tuple[list[float], list[dict[str, Any]]]:
    """Per-image figures of a stack of confusion matrices ``(N, K, K)`` (rows ground truth), at once.

    Returns each image's mean IoU over the classes present in its ground truth (MONAI's
    ``ignore_empty``; the convention of ``per_image_miou``), and its details for the HTML page:
    ``{"pixel_accuracy": ..., "classes": [...]}`` (the ground truth's classes). Both figures are
    NaN where the image has no counted pixel.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diagonal(counts, axis1=1, axis2=2)
    gt = counts.sum(2)
    present = gt > 0
    union = gt + counts.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
        miou = iou.sum(1) / present.sum(1)  # 0 / 0 = NaN: no counted pixel
        total = gt.sum(1)
        accuracy = np.where(total > 0, tp.sum(1) / np.where(total > 0, total, 1.0), np.nan)
    rows, cols = np.nonzero(present)
    classes = np.split(cols, np.searchsorted(rows, np.arange(1, len(counts))))
    details = [{"pixel_accuracy": value, "classes": found.tolist()} for value, found in zip(accuracy.tolist(), classes)]
    return miou.tolist(), details


@dataclass
class EvalReport:
    """The result of an evaluation: ``metrics`` is ``ConfusionMatrix.compute()``'s dict."""

    metrics: dict[str, Any]
    classes: list[str]
    ignore_index: int | None
    images: list[tuple[str, float]] = field(default_factory=list)  # (name, per-image mean IoU)
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)  # per image, as ``images``: image_figures(...)'s details

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pixels(self) -> list[int]:
        """Ground-truth pixels per class (the confusion matrix's row sums)."""
        return [int(sum(row)) for row in self.metrics["confusion_matrix"]]

    def worst(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` images with the lowest mean IoU (images with no counted pixel left out)."""
        scored = [(name, value) for name, value in self.images if not math.isnan(value)]
        return sorted(scored, key=lambda item: item[1])[: max(k, 0)]

    def to_dict(self, worst: int = 5) -> dict[str, Any]:
        """JSON-ready: NaN -> None."""
        data = dict(self.metrics)
        data.update({
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_images": len(self.images),
            "pixels": self.pixels,
            "images": [{"name": name, "miou": value} for name, value in self.images],
            "worst_images": [{"name": name, "miou": value} for name, value in self.worst(worst)],
            "warnings": list(self.warnings),
            "source": dict(self.source),
        })
        return json_safe(data)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and tensors/arrays -> lists, recursively, so that strict JSON holds it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):  # torch.Tensor, np.ndarray
        return json_safe(value.tolist())
    return value


def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_report(report: EvalReport, worst: int = 5) -> str:
    """The per-class table (IoU, Dice, accuracy, pixels) and the summary lines, ``mIoU: 0.912`` among them."""
    m = report.metrics
    pixels = report.pixels
    total = max(sum(pixels), 1)
    width = max([5, *(len(name) for name in report.classes)])
    lines = [f"{'class'.ljust(width)}     IoU    Dice     Acc        pixels   share"]
    for c, name in enumerate(report.classes):
        lines.append(f"{name.ljust(width)}  {_fmt(m['iou'][c]):>6}  {_fmt(m['dice'][c]):>6}  {_fmt(m['accuracy'][c]):>6}  "
                     f"{pixels[c]:>12,}  {100.0 * pixels[c] / total:5.1f}%")
    absent = [name for c, name in enumerate(report.classes) if math.isnan(m["iou"][c])]
    lines.append("")
    lines.append(f"images: {len(report.images)}")
    lines.append(f"mIoU: {_fmt(m['miou'])}")
    lines.append(f"mDice: {_fmt(m['mdice'])}")
    lines.append(f"pixel accuracy: {_fmt(m['pixel_accuracy'])}")
    lines.append(f"mean accuracy: {_fmt(m['mean_accuracy'])}")
    lines.append(f"fwIoU: {_fmt(m['fwiou'])}")
    lines.append(f"per-image mean IoU: {_fmt(m['per_image_miou'])}")
    if absent:
        lines.append(f"classes absent from prediction and ground truth (left out of the means): {', '.join(absent)}")
    rows = report.worst(worst)
    if rows:
        lines.append(f"worst {len(rows)} image{'s' if len(rows) > 1 else ''} by mean IoU:")
        lines += [f"  {_fmt(value)}  {name}" for name, value in rows]
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> None:
    """The confusion matrix normalised by row (each ground-truth class sums to 1), counts in the cells."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(classes)
    plt = _pyplot()
    side = min(max(4.0, 0.55 * k + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth class")
    ax.set(xticks=range(k), yticks=range(k), xlabel="prediction", ylabel="ground truth", title="confusion matrix")
    # Names are text, not mathtext: a '$' in a class name would be drawn as maths or raise mid-report.
    ax.set_xticklabels(classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", parse_math=False)
    ax.set_yticklabels(classes, parse_math=False)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{share[i, j]:.2f}\n{int(counts[i, j]):,}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_panels(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: Path) -> None:
    """A grid of pictures: one row per ``(title, [(panel title, (H, W) or (H, W, 3) array in [0, 1]), ...])``."""
    if not rows:
        return
    plt = _pyplot()
    cols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 3.2 * len(rows)), squeeze=False)
    for r, (title, panels) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(panels):
                name, picture = panels[c]
                step = -(-max(picture.shape[:2]) // 320)  # a panel is ~260 px wide: draw no more pixels than that
                picture = picture[::step, ::step]
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{title}\n{name}" if c == 0 else name, fontsize=8, parse_math=False)  # file names: a '$' is text
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(report: EvalReport, path: str | Path, worst: int = 5, plots: bool = True) -> list[Path]:
    """Write ``path`` (JSON) and, with ``plots``, ``<stem>_confusion.png`` beside it; return the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(worst), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written = [path]
    if plots:
        confusion = path.with_name(f"{path.stem}_confusion.png")
        plot_confusion(report.metrics["confusion_matrix"], report.classes, confusion)
        written.append(confusion)
    return written

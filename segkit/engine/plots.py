"""PNG plots of a run: loss and mIoU curves, and validation predictions over their images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only for plot_predictions: palette and overlay serve `segkit evaluate --pred --gt`
    import torch
    from torch import nn

__all__ = ["overlay", "plot_curves", "plot_predictions", "palette"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (uint8 (K, 3)): black background, then well-separated hues."""
    base = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]], dtype=np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    rng = np.random.default_rng(0)
    return np.concatenate([base, rng.integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)])


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over an image: image (H, W) or (H, W, 3) in [0, 1], mask (H, W) -> (H, W, 3)."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    colors = palette(max(num_classes, int(mask.max(initial=0)) + 1))[np.clip(mask, 0, None)] / 255.0
    blended = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colors, rgb)
    return np.clip(blended, 0, 1)


def plot_curves(
    log_path: Path,
    out_path: Path,
    series: Sequence[tuple[str, str, str]] = (("val_miou", "o-", "validation"),),
    ylabel: str = "mIoU",
    title: str = "validation mIoU",
) -> None:
    """Training loss per step (left) and per-epoch ``series`` (right) from ``metrics.jsonl``.

    ``series``: (epoch record key, line style, label) per line, e.g. the validation mIoU, or the
    training and validation top-1 error of a classifier; values lie in [0, 1].
    """
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    plt = _pyplot()
    fig, (ax_loss, ax_epoch) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        ax_loss.plot(*zip(*steps), lw=0.8, alpha=0.6, label="step loss")
    if epochs:
        ax_loss.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="epoch mean loss")
    for key, style, label in series:
        points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if points:
            ax_epoch.plot(*zip(*points), style, label=label)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.legend(loc="upper right")
    ax_epoch.set(xlabel="epoch", ylabel=ylabel, title=title, ylim=(0, 1))
    ax_epoch.grid(alpha=0.3)
    if len(series) > 1 and epochs:
        ax_epoch.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_predictions(model: nn.Module, dataset: Any, device: torch.device, out_path: Path, count: int) -> None:
    """Image, ground truth and prediction overlays for the first ``count`` validation samples.

    Only those ``count`` samples are read and inferred (one forward each), never the whole split.
    """
    import torch  # here, not at module level: palette and overlay serve torch-free commands

    count = min(count, len(dataset))
    if count == 0:
        return
    was_training = model.training
    model.eval()
    num_classes = getattr(dataset, "num_classes", None) or 2
    plt = _pyplot()
    fig, axes = plt.subplots(count, 3, figsize=(9, 3 * count), squeeze=False)
    with torch.no_grad():
        for row in range(count):
            image, mask = dataset[row]
            output = model(image[None].to(device))
            logits = output[0] if isinstance(output, (tuple, list)) else output
            pred = logits.argmax(1)[0].cpu().numpy()
            shown = image.float().numpy()
            shown = (shown - shown.min()) / max(float(shown.max() - shown.min()), 1e-6)
            shown = shown[0] if shown.shape[0] != 3 else shown.transpose(1, 2, 0)
            gt = mask.numpy().copy()
            gt[gt >= num_classes] = 0  # ignore_index drawn as background
            for ax, picture, title in zip(axes[row], (shown, overlay(shown, gt, num_classes), overlay(shown, pred, num_classes)),
                                          ("image", "ground truth", "prediction")):
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
                ax.set_title(title)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    model.train(was_training)

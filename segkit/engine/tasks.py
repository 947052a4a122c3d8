"""What the training loop does differently per ``task``: the loss of a model output, the training
metrics, which validation metrics are logged, the score that picks ``best.pt``, and the plots.

The loop (:mod:`segkit.engine.train`) is the same for both tasks; datasets, models and losses
come from :mod:`segkit.engine.builders`, which hands classification configs to
:mod:`segkit.engine.classify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

__all__ = ["ClassificationTask", "SegmentationTask", "Task", "make_task"]


class Task:
    """The task-specific pieces of training. Subclasses set the class attributes."""

    score_key: str = ""  # validation metric that picks best.pt (higher is better)
    score_name: str = ""
    val_keys: tuple[str, ...] = ()  # validation metrics copied into each epoch record as val_<key>
    line_keys: tuple[tuple[str, str], ...] = ()  # (epoch record key, console label)
    # curves.png, right panel: (epoch record key, line style, label) per line, its y label and title
    curves: tuple[tuple[str, str, str], ...] = ()
    curves_label: tuple[str, str] = ("", "")

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def loss(self, loss_fn: nn.Module, output: Any, target: Tensor, **extra: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, main logits)`` of a model output (auxiliary outputs weighted by ``trainer.aux_weight``).

        ``extra``: per-pixel inputs that came with the batch (``weight_map``), passed on to the loss.
        """
        raise NotImplementedError

    def start_epoch(self, device: torch.device) -> None:
        """Reset the training metrics."""

    def observe(self, logits: Tensor, target: Tensor) -> None:
        """Count one training batch in the training metrics."""

    def train_metrics(self) -> dict[str, Any]:
        """This epoch's training metrics (a collective call under DDP), for the epoch record."""
        return {}

    def plot_curves(self, log_path: Path, out_path: Path) -> None:
        from segkit.engine.plots import plot_curves

        plot_curves(log_path, out_path, self.curves, *self.curves_label)

    def plot_final(self, model: nn.Module, val_set: Any, device: torch.device, out_dir: Path) -> None:
        """Plots drawn once after training (none by default)."""

    def final_line(self, best: float | None, best_path: Path) -> str | None:
        """A closing console line (None: the CLI prints the result)."""
        return None


class SegmentationTask(Task):
    score_key, score_name = "miou", "mIoU"
    val_keys = ("miou", "mdice", "pixel_accuracy", "mean_accuracy", "fwiou", "per_image_miou", "iou")  # iou: per class, for segkit report
    line_keys = (("val_miou", "miou"), ("val_mdice", "mdice"), ("val_pixel_accuracy", "pixel_accuracy"))
    curves, curves_label = (("val_miou", "o-", "validation"),), ("mIoU", "validation mIoU")

    def loss(self, loss_fn: nn.Module, output: Any, target: Tensor, **extra: Tensor) -> tuple[Tensor, Tensor]:
        logits, aux = (output[0], list(output[1:])) if isinstance(output, (tuple, list)) else (output, [])
        loss = loss_fn(logits.float(), target, **extra)
        aux_weight = self.cfg.trainer.aux_weight
        for head in aux:  # image-level head (B, K) or auxiliary mask logits (the target's size)
            if head.dim() == 2:
                presence = _presence_targets(target, head.shape[1], self.cfg.data.ignore_index)
                loss = loss + aux_weight * nn.functional.binary_cross_entropy_with_logits(head.float(), presence)
            else:
                loss = loss + aux_weight * loss_fn(head.float(), target, **extra)
        return loss, logits

    def plot_final(self, model: nn.Module, val_set: Any, device: torch.device, out_dir: Path) -> None:
        from segkit.engine.plots import plot_predictions

        plot_predictions(model, val_set, device, out_dir / "predictions.png", self.cfg.output.num_vis)


class ClassificationTask(Task):
    score_key, score_name = "top1", "top-1 accuracy"
    val_keys = ("top1", "top5", "top1_error", "top5_error", "mean_class_accuracy")
    line_keys = (("train_top1_error", "train top-1 err"), ("val_top1_error", "top-1 err"), ("val_top5_error", "top-5 err"))
    curves = (("train_top1_error", "--", "training"), ("val_top1_error", "o-", "validation"))
    curves_label = ("top-1 error", "top-1 error")

    def loss(self, loss_fn: nn.Module, output: Any, target: Tensor, **extra: Tensor) -> tuple[Tensor, Tensor]:
        from segkit.engine.classify import classification_loss

        return classification_loss(loss_fn, output, target, self.cfg.trainer.aux_weight)

    def start_epoch(self, device: torch.device) -> None:
        from segkit.metrics import TopKAccuracy

        self._train_accuracy = TopKAccuracy((1,), device=device)

    def observe(self, logits: Tensor, target: Tensor) -> None:
        # The training error of the papers' curves: on the augmented batches, in training mode.
        self._train_accuracy.update(logits.detach().float(), target)

    def train_metrics(self) -> dict[str, Any]:
        return {"train_top1_error": 1.0 - self._train_accuracy.compute()["top1"]}

    def final_line(self, best: float | None, best_path: Path) -> str | None:
        if best is None:
            return None
        return f"best top-1 accuracy: {best:.4f} (top-1 error {1 - best:.4f}) ({best_path})"


def make_task(cfg: DictConfig) -> Task:
    return ClassificationTask(cfg) if cfg.task == "classification" else SegmentationTask(cfg)


def _presence_targets(mask: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Image-level multi-label targets (N, num_classes): which classes occur in each mask."""
    valid = mask != ignore_index
    flat = torch.where(valid, mask, num_classes).flatten(1)
    present = torch.zeros(mask.shape[0], num_classes + 1, device=mask.device)
    present.scatter_(1, flat, 1.0)
    return present[:, :num_classes]

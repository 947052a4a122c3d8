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

from segkit.errors import SegkitError

__all__ = ["ClassificationTask", "SegmentationTask", "Task", "downsample_nearest", "make_task"]


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

    def epoch_state(self) -> dict[str, Any]:
        """The training metrics' counts so far, summed over processes (a collective call under DDP), for last.pt."""
        return {}

    def restore_epoch_state(self, state: dict[str, Any]) -> None:
        """Continue counting from :meth:`epoch_state` (after :meth:`start_epoch`, on every process)."""

    def plot_curves(self, log_path: Path, out_path: Path) -> None:
        from segkit.engine.plots import plot_curves

        plot_curves(log_path, out_path, self.curves, *self.curves_label)

    def plot_final(self, model: nn.Module, val_set: Any, device: torch.device, out_dir: Path) -> None:
        """Plots drawn once after training (none by default)."""

    def final_line(self, best: float | None, best_path: Path) -> str | None:
        """A closing console line (None: the CLI prints the result)."""
        return None


class SegmentationTask(Task):
    """Semantic segmentation: the config's pixel losses on (N, K, H, W) logits, scored by the validation mIoU."""

    score_key, score_name = "miou", "mIoU"
    val_keys = ("miou", "mdice", "pixel_accuracy", "mean_accuracy", "fwiou", "per_image_miou", "iou")  # iou: per class, for segkit report
    line_keys = (("val_miou", "miou"), ("val_mdice", "mdice"), ("val_pixel_accuracy", "pixel_accuracy"))
    curves, curves_label = (("val_miou", "o-", "validation"),), ("mIoU", "validation mIoU")

    def loss(self, loss_fn: nn.Module, output: Any, target: Tensor, **extra: Tensor) -> tuple[Tensor, Tensor]:
        """The main loss, plus ``trainer.aux_weight`` times each auxiliary head's, plus the deep
        supervision side losses weighted by ``trainer.deep_supervision_weights``.

        ``output``: the logits, or ``(logits, extra...)`` where each extra is a tensor (2-D: an
        image-level head; else auxiliary mask logits at the target's size) or a list of side logits
        (deep supervision, finest first; see :class:`segkit.models.SegmentationModel`).
        """
        logits, aux = (output[0], list(output[1:])) if isinstance(output, (tuple, list)) else (output, [])
        loss = loss_fn(logits.float(), target, **extra)
        aux_weight = self.cfg.trainer.aux_weight
        for head in aux:  # image-level head (B, K), auxiliary mask logits (the target's size), or side logits (a list)
            if isinstance(head, (list, tuple)):
                loss = loss + self.deep_supervision_loss(loss_fn, head, target, **extra)
            elif head.dim() == 2:
                presence = _presence_targets(target, head.shape[1], self.cfg.data.ignore_index)
                loss = loss + aux_weight * nn.functional.binary_cross_entropy_with_logits(head.float(), presence)
            else:
                loss = loss + aux_weight * loss_fn(head.float(), target, **extra)
        return loss, logits

    def deep_supervision_loss(self, loss_fn: nn.Module, sides: list[Tensor], target: Tensor, **extra: Tensor) -> Tensor:
        """``sum_k weight_k * loss_fn(sides[k], target at sides[k]'s resolution)``.

        The target is brought down to each side rather than the side up to the target, as nnU-Net
        does: a side head is then judged on what its resolution can express, at 1/s**2 of the cost,
        and no interpolation of logits adds a smoothing the head did not learn. Per-pixel extras
        (``weight_map``) come down with the target.
        """
        weights = self.cfg.trainer.get("deep_supervision_weights")
        if weights is None:
            weights = [0.5 ** (k + 1) for k in range(len(sides))]  # halving per level away from the main output
        if len(weights) != len(sides):
            raise SegkitError(
                f"trainer.deep_supervision_weights has {len(weights)} weights but the model has {len(sides)} side outputs "
                f"(decoder levels at strides {', '.join(str(2 ** (k + 1)) for k in range(len(sides)))}, finest first); "
                f"give {len(sides)} weights or leave it null for halving per level."
            )
        ignore_index = self.cfg.data.ignore_index
        total = target.new_zeros((), dtype=torch.float32)
        for side, weight in zip(sides, weights):
            size = (side.shape[-2], side.shape[-1])
            side_target = downsample_nearest(target, size, ignore_index)
            side_extra = {key: downsample_nearest(value, size, 0) for key, value in extra.items()}
            total = total + float(weight) * loss_fn(side.float(), side_target, **side_extra)
        return total

    def plot_final(self, model: nn.Module, val_set: Any, device: torch.device, out_dir: Path) -> None:
        from segkit.engine.plots import plot_predictions

        plot_predictions(model, val_set, device, out_dir / "predictions.png", self.cfg.output.num_vis)


class ClassificationTask(Task):
    """Image classification: cross-entropy on (N, K) logits, scored by top-1 accuracy (top-5 and mean class accuracy logged)."""

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

        # The dataset's labels fit model.num_classes (checked when it is built): no per-step range check,
        # which would read back from the GPU twice a step.
        self._train_accuracy = TopKAccuracy((1,), device=device, check_labels=False)

    def observe(self, logits: Tensor, target: Tensor) -> None:
        # The training error of the papers' curves: on the augmented batches, in training mode.
        self._train_accuracy.update(logits.detach().float(), target)

    def train_metrics(self) -> dict[str, Any]:
        return {"train_top1_error": 1.0 - self._train_accuracy.compute()["top1"]}

    def epoch_state(self) -> dict[str, Any]:
        return {"train_accuracy": self._train_accuracy.counts().tolist()}

    def restore_epoch_state(self, state: dict[str, Any]) -> None:
        # Every process holds the summed counts as its total: the next sync adds only what is new.
        self._train_accuracy.restore_counts(state["train_accuracy"])

    def final_line(self, best: float | None, best_path: Path) -> str | None:
        if best is None:
            return None
        return f"best top-1 accuracy: {best:.4f} (top-1 error {1 - best:.4f}) ({best_path})"


def make_task(cfg: DictConfig) -> Task:
    """The task ``cfg.task`` names: segmentation (default) or classification."""
    return ClassificationTask(cfg) if cfg.task == "classification" else SegmentationTask(cfg)


def downsample_nearest(mask: Tensor, size: tuple[int, int], fill: int | float) -> Tensor:
    """``mask`` ``(N, H, W)`` at the resolution of side logits of ``size`` ``(h, w)``, nearest-neighbour.

    Side logits at stride ``s`` (a power of two) cover the image's padded canvas and were cropped to
    ``ceil(H / s)`` rows (see :class:`segkit.models.SegmentationModel`); ``s`` is the smallest power
    of two with ``h * s >= H`` (exactly the stride whenever ``H >= s``; a 1-row side otherwise, which
    covers the image whatever ``s``). Each side pixel takes the mask pixel at the centre of its
    ``s x s`` block, ``mask[s * i + s // 2]`` (PyTorch's ``nearest-exact``, as nnU-Net resizes its
    deep-supervision targets), and ``fill`` (``ignore_index`` for masks) where that centre falls in
    the padding. The labels stay labels: no averaging, so ``ignore_index`` survives as it is.
    """
    h_in, w_in = mask.shape[-2], mask.shape[-1]
    strides = []
    for out, full in zip(size, (h_in, w_in)):
        stride = 1
        while out * stride < full:
            stride *= 2
        strides.append(stride)
    sh, sw = strides
    canvas = nn.functional.pad(mask, (0, size[1] * sw - w_in, 0, size[0] * sh - h_in), value=fill)
    return canvas[..., sh // 2 :: sh, sw // 2 :: sw]


def _presence_targets(mask: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Image-level multi-label targets (N, num_classes): which classes occur in each mask."""
    valid = mask != ignore_index
    flat = torch.where(valid, mask, num_classes).flatten(1)
    present = torch.zeros(mask.shape[0], num_classes + 1, device=mask.device)
    present.scatter_(1, flat, 1.0)
    return present[:, :num_classes]

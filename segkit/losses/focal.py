"""Focal loss with segmentation-models-pytorch's semantics (one-vs-rest sigmoid focal per class)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.losses._base import (
    BINARY_MODE,
    MULTICLASS_MODE,
    as_labels,
    check_batch,
    check_mode,
    check_reduction,
    class_mean,
    float_tensor,
    no_class_weights_in_binary,
)

__all__ = ["FocalLoss", "focal_terms"]


def focal_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    reduced_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise sigmoid focal loss (Lin et al. 2017) and its focal term ``(1 - p_t)^gamma``.

    ``alpha`` weighs positives by alpha and negatives by 1 - alpha; ``reduced_threshold`` gives the
    reduced focal loss (Sergievskiy & Ponamarev 2019): focal term 1 where ``p_t`` is below it.
    """
    target = target.to(logits.dtype)
    logpt = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.exp(-logpt)
    if reduced_threshold is None:
        focal_term = (1.0 - pt).pow(gamma)
    else:
        focal_term = ((1.0 - pt) / reduced_threshold).pow(gamma)
        focal_term = torch.where(pt < reduced_threshold, torch.ones_like(focal_term), focal_term)
    loss = focal_term * logpt
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss, focal_term


class FocalLoss(nn.Module):
    """Focal loss; the keywords and values of smp's FocalLoss.

    Binary mode is sigmoid focal loss over every pixel; multiclass and multilabel modes compute a
    binary one-vs-rest sigmoid focal loss per class channel (not softmax focal) and average the
    per-class losses (weighted by ``class_weights`` if given).

    Args:
        mode: "binary", "multiclass" or "multilabel" (shapes as for DiceLoss).
        alpha: weight of positives (negatives get 1 - alpha); None for no weighting.
        gamma: focusing exponent.
        ignore_index: target value whose pixels do not count (per channel in multilabel mode).
        from_logits: the prediction is logits. False: probabilities, clamped to [eps, 1 - eps] and
            turned into logits (binary, multilabel) or, as smp does, into log-probabilities that the
            per-class sigmoid then reads as logits (multiclass).
        eps: the clamp for ``from_logits=False``.
        reduction: per class, "mean" over the counted pixels, "sum", or "batchwise_mean", which
            is smp's: the sum over the batch of each pixel position's loss, averaged over the
            positions, in multiclass and multilabel modes without ignore_index; the plain sum
            otherwise (smp flattens the pixels there).
            "none" returns the per-element loss shaped like the prediction, ignored elements 0
            (smp returns a scalar there).
        normalized: divide by the sum of the focal terms (Ross et al. 2019, normalised focal loss).
        reduced_threshold: switch to the reduced focal loss (use with reduction="sum").
        class_weights: one weight per class for the class average; not with "binary".
    """

    def __init__(
        self,
        mode: str,
        alpha: float | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        from_logits: bool = True,
        eps: float = 1e-7,
        reduction: str = "mean",
        normalized: bool = False,
        reduced_threshold: float | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.mode = check_mode(mode)
        no_class_weights_in_binary(class_weights, mode)
        check_reduction(reduction, ("mean", "sum", "batchwise_mean", "none"))
        self.alpha = alpha
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.eps = eps
        self.reduction = reduction
        self.normalized = normalized
        self.reduced_threshold = reduced_threshold
        self.class_weights = float_tensor(class_weights, "class_weights")

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        check_batch(y_pred, y_true, self.mode)
        y_true = as_labels(y_true)
        out_shape = y_pred.shape
        if not self.from_logits:
            y_pred = torch.clamp(y_pred, self.eps, 1 - self.eps)
            y_pred = torch.log(y_pred) if self.mode == MULTICLASS_MODE else torch.log(y_pred / (1 - y_pred))
        bs, num_classes = y_pred.size(0), y_pred.size(1)
        y_pred = y_pred.reshape(bs, num_classes, -1)
        if self.mode == MULTICLASS_MODE:
            labels = y_true.reshape(bs, 1, -1)
            valid = None if self.ignore_index is None else labels != self.ignore_index
            classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
            target = labels == classes
        else:
            target = y_true.reshape(bs, num_classes, -1)
            valid = None if self.ignore_index is None else target != self.ignore_index
            if valid is not None:
                target = target * valid
        loss, focal_term = focal_terms(y_pred, target, self.gamma, self.alpha, self.reduced_threshold)
        dims = (0, 2)
        if valid is not None:
            valid = valid.expand_as(loss).to(loss.dtype)
            loss = loss * valid
            focal_term = focal_term * valid
        if self.normalized:
            # smp's functional default eps (1e-6) bounds the normaliser.
            loss = loss / focal_term.sum(dims, keepdim=True).clamp_min(1e-6)
        if self.reduction == "none":
            return loss.reshape(out_shape)
        per_class = loss.sum(dims)
        if self.reduction == "mean" and valid is not None:
            # A class channel with no counted pixel (all of a multilabel channel ignored, or the whole
            # batch) is left out of the class mean instead of dividing 0 by 0: NaN would spoil the step.
            counted = valid.sum(dims)
            present = (counted > 0).to(per_class.dtype)
            if self.class_weights is not None:
                if self.class_weights.numel() != present.numel():
                    raise ValueError(f"class_weights has {self.class_weights.numel()} entries for {present.numel()} classes.")
                present = present * self.class_weights.to(per_class.device, per_class.dtype)
            return (per_class / counted.clamp_min(1) * present).sum() / present.sum().clamp_min(1e-12)
        if self.reduction == "mean":
            per_class = per_class / (loss.size(0) * loss.size(2))
        elif self.reduction == "batchwise_mean" and self.mode != BINARY_MODE and valid is None:
            per_class = per_class / loss.size(2)  # smp: summed over the batch, averaged over the pixels
        return class_mean(per_class, self.class_weights)

"""Region losses: Dice, Jaccard (IoU) and Tversky, with segmentation-models-pytorch's semantics.

Each takes the keywords of smp's class of the same name and gives the same value for the same
input (tested against smp 0.6): scores are computed per class over batch and pixels together
(``dims=(0, 2)`` of the flattened ``(N, C, H*W)`` tensors), a class with no target pixels in the
batch contributes a loss of 0 but still counts in the class mean, and ``smooth`` enters numerator
and denominator as ``(tp + smooth) / (tp + alpha*fp + beta*fn + smooth)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.losses._base import (
    MULTICLASS_MODE,
    MULTILABEL_MODE,
    as_labels,
    check_batch,
    check_mode,
    class_index,
    class_mean,
    float_tensor,
    no_class_weights_in_binary,
)

__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "soft_tversky_score"]


def soft_tversky_score(
    output: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float = 0.0,
    eps: float = 1e-7,
    dims: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Tversky index ``(tp + smooth) / (tp + alpha*fp + beta*fn + smooth)``, clamped below by ``eps``.

    ``tp = (sum(output) + sum(target) - |output - target|_1) / 2``: equal to ``sum(output * target)``
    for hard targets, and the semimetric form (Wang et al. 2023) for soft ones, as in smp.
    alpha = beta = 0.5 is the Dice coefficient, alpha = beta = 1 the Jaccard index.
    """
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must have the same shape.")
    if dims is None:
        dims = tuple(range(output.dim()))
    output_sum = output.sum(dim=dims)
    target_sum = target.sum(dim=dims)
    difference = torch.linalg.vector_norm(output - target, ord=1, dim=dims)
    tp = (output_sum + target_sum - difference) / 2
    fp = output_sum - tp
    fn = target_sum - tp
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, P)`` labels -> ``(N, C, P)`` one-hot, with a clear error for labels out of range."""
    try:
        return F.one_hot(labels.long(), num_classes).permute(0, 2, 1)
    except RuntimeError as err:
        raise ValueError(
            f"multiclass target labels must lie in [0, {num_classes}); found {int(labels.min())}..{int(labels.max())}"
            " (pass ignore_index= for a void label such as 255)."
        ) from err


def flatten_region_inputs(
    mode: str, y_pred: torch.Tensor, y_true: torch.Tensor, from_logits: bool, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and targets as ``(N, C, H*W)`` tensors of the prediction's dtype, ignored pixels
    zeroed in both (smp's preprocessing for Dice, Jaccard and Tversky)."""
    check_batch(y_pred, y_true, mode)
    y_true = as_labels(y_true)
    if from_logits:
        # log-then-exp as smp does: better behaved gradients at saturated logits.
        y_pred = y_pred.log_softmax(dim=1).exp() if mode == MULTICLASS_MODE else F.logsigmoid(y_pred).exp()
    bs, num_classes = y_pred.size(0), y_pred.size(1)
    if mode == MULTICLASS_MODE:
        y_true = y_true.reshape(bs, -1)
        y_pred = y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = (y_true != ignore_index).unsqueeze(1)
            y_pred = y_pred * mask
            y_true = _one_hot(y_true * mask.squeeze(1), num_classes) * mask
        else:
            y_true = _one_hot(y_true, num_classes)
    else:
        channels = num_classes if mode == MULTILABEL_MODE else 1
        y_true = y_true.reshape(bs, channels, -1)
        y_pred = y_pred.reshape(bs, channels, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask
            y_true = y_true * mask
    return y_pred, y_true.to(y_pred.dtype)


class DiceLoss(nn.Module):
    """Dice loss, ``1 - 2|P∩T| / (|P| + |T|)`` per class, averaged over classes; smp's DiceLoss.

    Args:
        mode: "binary" (prediction ``(N, 1, H, W)``, target ``(N, H, W)`` of 0/1), "multiclass"
            (prediction ``(N, C, H, W)``, target ``(N, H, W)`` of labels) or "multilabel"
            (prediction and target ``(N, C, H, W)``, target 0/1 per channel).
        classes: the class channels averaged over (default: all); not with "binary".
        log_loss: ``-log(score)`` instead of ``1 - score``.
        from_logits: the prediction is logits (softmax in multiclass mode, sigmoid otherwise);
            False means it already holds probabilities.
        smooth: added to numerator and denominator of the score.
        ignore_index: target value whose pixels do not count (None: every pixel counts).
        eps: lower bound of the score's denominator (and of the score under ``log_loss``).
        class_weights: one weight per class for the class average (weighted mean); not with "binary".
    """

    alpha = 0.5
    beta = 0.5
    gamma = 1.0

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.mode = check_mode(mode)
        no_class_weights_in_binary(class_weights, mode)
        self.classes = class_index(classes, mode)
        self.log_loss = log_loss
        self.from_logits = from_logits
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.eps = eps
        self.class_weights = float_tensor(class_weights, "class_weights")

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        probs, target = flatten_region_inputs(self.mode, y_pred, y_true, self.from_logits, self.ignore_index)
        dims = (0, 2)
        scores = soft_tversky_score(probs, target, self.alpha, self.beta, self.smooth, self.eps, dims)
        loss = -torch.log(scores.clamp_min(self.eps)) if self.log_loss else 1.0 - scores
        # The score is undefined for a class without target pixels: such a class contributes 0.
        loss = loss * (target.sum(dims) > 0).to(loss.dtype)
        mean = class_mean(loss, self.class_weights, self.classes)
        if self.gamma == 1.0:
            return mean
        # x**gamma has an infinite slope at 0 for gamma < 1: a batch with nothing to score (loss 0) gave
        # NaN gradients (inf * 0). There the loss stays 0 and its gradient is 0.
        positive = mean > 0
        return torch.where(positive, torch.where(positive, mean, torch.ones_like(mean)) ** self.gamma, torch.zeros_like(mean))


class JaccardLoss(DiceLoss):
    """Jaccard (soft IoU) loss, ``1 - |P∩T| / |P∪T|`` per class; smp's JaccardLoss, DiceLoss's keywords."""

    alpha = 1.0
    beta = 1.0


class TverskyLoss(DiceLoss):
    """Tversky loss ``(1 - TI)^gamma`` per class average; the keywords and values of smp's TverskyLoss.

    ``TI = (tp + smooth) / (tp + alpha*fp + beta*fn + smooth)``: alpha weighs false positives,
    beta false negatives; alpha = beta = 0.5 is Dice. As in smp, ``gamma`` (the focal Tversky
    exponent) raises the class-averaged loss, not each class's loss. The other keywords are
    DiceLoss's.
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma

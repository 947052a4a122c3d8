"""Cross-entropy losses: class-weighted (torch's), binary with pos_weight, and pixel-weighted (U-Net)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.losses._base import as_labels, check_reduction, float_tensor
from segkit.losses.weight_map import UNetWeightMap, unet_weight_map

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "WeightMapCrossEntropyLoss"]


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch's cross-entropy for logits ``(N, C, H, W)`` and labels ``(N, H, W)``, segkit's defaults.

    Labels of any integer dtype (uint16 included) or float dtype are taken as ``.long()``;
    class-probability targets ``(N, C, H, W)`` (floats, torch's second form) pass through as they
    are. One difference from torch: with reduction "mean", a batch whose every pixel is ignored
    gives 0, not NaN (0/0), as the other segkit losses and MMSegmentation's do: one NaN step would
    spoil every weight of a run without mixed precision.

    Args:
        class_weights: one weight per class (torch's ``weight``); with reduction "mean" the loss
            is divided by the summed weights of the counted pixels, as torch does.
        ignore_index: label whose pixels do not count (default 255, segkit's void label).
        label_smoothing: torch's: the target becomes ``(1 - s) * one_hot + s / C``.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            weight=float_tensor(class_weights, "class_weights"),
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        weight = self.weight
        if weight is not None and input.dim() > 1 and weight.numel() != input.size(1):
            raise ValueError(f"class_weights has {weight.numel()} entries for {input.size(1)} classes; give one per class.")
        if target.is_floating_point() and target.shape == input.shape:
            # class probabilities (torch refuses ignore_index with them: there is no label to compare)
            return F.cross_entropy(input, target, weight=weight, reduction=self.reduction, label_smoothing=self.label_smoothing)
        target = target.long()  # float labels of the label shape are truncated, as before (torch refuses them)
        if self.reduction != "mean":
            return super().forward(input, target)
        total = F.cross_entropy(input, target, weight=weight, ignore_index=self.ignore_index, reduction="sum",
                                label_smoothing=self.label_smoothing)
        counted = target != self.ignore_index
        if weight is None:
            denominator = counted.sum().to(total.dtype)
        else:
            safe = torch.where(counted, target, torch.zeros_like(target))  # ignored labels may be out of range
            denominator = (weight.to(total.dtype)[safe] * counted).sum()
        return total / denominator.clamp_min(torch.finfo(total.dtype).tiny)


class BCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits, per channel, with ``pos_weight`` and ``ignore_index``.

    Takes logits ``(N, C, H, W)`` and 0/1 targets of the same shape, or ``(N, H, W)`` when C = 1.

    Args:
        pos_weight: weight of the positive term, one number or one per channel (broadcast over
            the channel axis, unlike torch's, which broadcasts over the last axis).
        ignore_index: target value whose pixels do not count; "mean" then averages over the
            counted elements only (smp's SoftBCEWithLogitsLoss divides by all of them).
        reduction: "mean", "sum" or "none" (ignored elements 0).
    """

    def __init__(
        self,
        pos_weight: float | Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if isinstance(pos_weight, (int, float)):
            pos_weight = [float(pos_weight)]
        self.register_buffer("pos_weight", float_tensor(pos_weight, "pos_weight"))
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if y_true.dim() == y_pred.dim() - 1 and y_pred.size(1) == 1:
            y_true = y_true.unsqueeze(1)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"BCE takes a target of the prediction's shape {tuple(y_pred.shape)}; got {tuple(y_true.shape)}.")
        pos_weight = self.pos_weight
        if pos_weight is not None:
            pos_weight = pos_weight.view(-1, *([1] * (y_pred.dim() - 2)))
        if pos_weight is not None and pos_weight.numel() not in (1, y_pred.size(1)):
            raise ValueError(f"pos_weight has {pos_weight.numel()} entries for {y_pred.size(1)} channels; give one number or one per channel.")
        y_true = as_labels(y_true)
        valid = None if self.ignore_index is None else y_true != self.ignore_index
        target = y_true if valid is None else y_true * valid
        loss = F.binary_cross_entropy_with_logits(y_pred, target.to(y_pred.dtype), pos_weight=pos_weight, reduction="none")
        if valid is not None:
            loss = loss * valid
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / (valid.sum().clamp_min(1) if valid is not None else loss.numel())  # all ignored: 0, not NaN


class WeightMapCrossEntropyLoss(nn.Module):
    """Pixel-weighted cross-entropy, ``mean_x w(x) * CE(x)``: the U-Net paper's loss (eq. 1).

    ``forward(logits, target, weight_map=None)``: ``weight_map`` ``(N, H, W)`` is
    :func:`unet_weight_map` of the target, ideally precomputed per sample in the data pipeline
    (:meth:`weight_map_fn` gives the function; the training engine applies it to each augmented
    mask in the DataLoader workers and passes the batch's maps here); when it is not given it is
    computed here from the target (on the CPU, in the training process: slower). The mean is over
    the counted (not ignored) pixels, so a weight map of ones gives plain cross-entropy.

    Args:
        w0, sigma, class_weights, background: :func:`unet_weight_map`'s, for maps computed here.
        ignore_index: label whose pixels do not count (default 255).
        reduction: "mean", "sum" or "none" (weighted per-pixel losses ``(N, H, W)``).
    """

    #: Extra keyword inputs of forward, which CombinedLoss passes on when it is given them.
    extra_inputs = ("weight_map",)

    def __init__(
        self,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: Sequence[float] | None = None,
        background: int = 0,
        ignore_index: int = 255,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.w0, self.sigma, self.class_weights, self.background = w0, sigma, class_weights, background
        self.ignore_index = ignore_index
        self.reduction = reduction

    def weight_map_fn(self) -> UNetWeightMap:
        """The weight map this loss expects for a target mask, as a picklable callable (for the data pipeline)."""
        weights = None if self.class_weights is None else tuple(float(w) for w in self.class_weights)
        return UNetWeightMap(self.w0, self.sigma, weights, self.background, self.ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        target = target.long()
        if weight_map is None:
            weight_map = unet_weight_map(
                target, self.w0, self.sigma, self.class_weights, self.background, self.ignore_index
            )
        if weight_map.shape != target.shape:
            raise ValueError(f"weight_map {tuple(weight_map.shape)} must have the target's shape {tuple(target.shape)}.")
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        loss = loss * weight_map.to(loss.device, loss.dtype)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / (target != self.ignore_index).sum().clamp_min(1)

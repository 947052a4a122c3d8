"""Lovász losses (Berman et al. 2018) with segmentation-models-pytorch's semantics.

Binary and multilabel modes use the Lovász hinge on logits (multilabel flattens all channels into
one binary problem, as smp does); multiclass mode uses the Lovász-softmax averaged over the
classes present in the target. Unlike smp's per-class loop this sorts all classes (and, with
``per_image``, all images) in one batched ``torch.sort``; the values are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.losses._base import MULTICLASS_MODE, as_labels, check_batch, check_mode

__all__ = ["LovaszLoss", "lovasz_grad"]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing
    order (Alg. 1 of the paper), along the last dimension of ``gt_sorted`` (0/1 floats).

    Computed in float32 at least: in float16 a running count stops growing past 2048 (bfloat16:
    256), which made the gradients of half-precision logits wrong by more than their size."""
    if gt_sorted.dtype in (torch.float16, torch.bfloat16):
        gt_sorted = gt_sorted.float()
    gts = gt_sorted.sum(-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (1 - gt_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def _sorted_lovasz(errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``dot(errors sorted decreasingly, lovasz_grad(fg in that order))`` along the last dimension,
    counting only ``valid`` elements (they are sorted first; the rest contribute nothing)."""
    key = torch.where(valid, errors.detach(), torch.full_like(errors, -torch.inf))
    perm = torch.sort(key, dim=-1, descending=True).indices
    valid_sorted = valid.gather(-1, perm)
    errors_sorted = errors.gather(-1, perm) * valid_sorted
    grad = lovasz_grad(fg.gather(-1, perm) * valid_sorted)
    return (errors_sorted * grad).sum(-1)


class LovaszLoss(nn.Module):
    """Lovász hinge (binary, multilabel) or Lovász-softmax (multiclass) loss; smp's LovaszLoss.

    Args:
        mode: "binary", "multiclass" or "multilabel" (shapes as for DiceLoss).
        per_image: compute the loss per image and average, instead of over the whole batch.
        ignore_index: target value whose pixels do not count. An image (or batch) with no counted
            pixel contributes 0.
        from_logits: accepted and ignored, as in smp: the prediction is always logits (the hinge
            reads them directly, the multiclass loss applies softmax).
    """

    def __init__(
        self,
        mode: str,
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        self.mode = check_mode(mode)
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        check_batch(y_pred, y_true, self.mode)
        y_true = as_labels(y_true)
        if y_pred.dtype in (torch.float16, torch.bfloat16):
            y_pred = y_pred.float()  # the sorted cumulative sums need float32 (lovasz_grad), as smp computes them
        rows = y_pred.size(0) if self.per_image else 1
        if self.mode == MULTICLASS_MODE:
            num_classes = y_pred.size(1)
            probas = y_pred.softmax(dim=1).reshape(y_pred.size(0), num_classes, -1)
            probas = probas.transpose(0, 1).reshape(num_classes, rows, -1).transpose(0, 1)  # (R, C, P)
            labels = y_true.reshape(rows, 1, -1)
            valid = labels != self.ignore_index if self.ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
            classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
            fg = ((labels == classes) & valid).to(probas.dtype)
            losses = _sorted_lovasz((fg - probas).abs(), fg, valid.expand_as(fg))  # (R, C)
            present = (fg.sum(-1) > 0).to(losses.dtype)  # classes="present"
            row_loss = (losses * present).sum(-1) / present.sum(-1).clamp_min(1)
        else:
            logits = y_pred.reshape(rows, -1)
            labels = y_true.reshape(rows, -1)
            if self.ignore_index is not None:
                valid = labels != self.ignore_index
                labels = labels * valid
            else:
                valid = torch.ones_like(labels, dtype=torch.bool)
            labels = labels.to(logits.dtype)
            errors = 1.0 - logits * (2.0 * labels - 1.0)
            row_loss = _sorted_lovasz(F.relu(errors), labels, valid)
        return row_loss.mean()

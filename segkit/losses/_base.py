"""Shared pieces of the losses: the three modes and argument checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"
MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)


_UNSIGNED_WIDE = (torch.uint16, torch.uint32, torch.uint64)


def as_labels(target: torch.Tensor) -> torch.Tensor:
    """``target`` with a dtype torch's arithmetic takes: uint16/32/64 labels (``torch.from_numpy`` of a
    16-bit mask gives uint16, which most torch operations refuse) become int64; others pass as they are."""
    return target.long() if target.dtype in _UNSIGNED_WIDE else target


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    return mode


def float_tensor(values: Sequence[float] | torch.Tensor | None, what: str) -> torch.Tensor | None:
    """``values`` as a 1-D float tensor (None stays None)."""
    if values is None:
        return None
    tensor = torch.as_tensor(values if isinstance(values, torch.Tensor) else list(values), dtype=torch.float32)
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be a flat list of numbers, one per class; got shape {tuple(tensor.shape)}.")
    return tensor


def class_index(classes: Sequence[int] | torch.Tensor | None, mode: str) -> torch.Tensor | None:
    """``classes`` (the channels a region loss averages over) as a long tensor."""
    if classes is None:
        return None
    if mode == BINARY_MODE:
        raise ValueError("classes= is not supported with mode='binary' (there is a single channel).")
    return torch.as_tensor(classes if isinstance(classes, torch.Tensor) else list(classes), dtype=torch.long)


def no_class_weights_in_binary(class_weights: object, mode: str) -> None:
    if class_weights is not None and mode == BINARY_MODE:
        raise ValueError("class_weights are not supported with mode='binary' (there is a single channel).")


def check_reduction(reduction: str, allowed: tuple[str, ...] = ("mean", "sum", "none")) -> str:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(allowed)}; got {reduction!r}.")
    return reduction


def class_mean(loss: torch.Tensor, weights: torch.Tensor | None, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the per-class losses ``(C,)`` over ``classes`` (default all), weighted by ``weights``."""
    if weights is not None and weights.numel() != loss.numel():
        raise ValueError(f"class_weights has {weights.numel()} entries for {loss.numel()} classes.")
    if classes is not None:
        if classes.numel() and not (0 <= int(classes.min()) and int(classes.max()) < loss.numel()):
            raise ValueError(f"classes {classes.tolist()} must be channels 0..{loss.numel() - 1} of the prediction.")
        loss = loss[classes]
        weights = None if weights is None else weights[classes]
    if weights is None:
        return loss.mean()
    weights = weights.to(loss.device, loss.dtype)
    return (loss * weights).sum() / weights.sum()


def check_batch(y_pred: torch.Tensor, y_true: torch.Tensor, mode: str) -> None:
    """The shapes each mode takes: binary ``(N, 1, H, W)`` vs ``(N, H, W)`` or ``(N, 1, H, W)``;
    multiclass ``(N, C, H, W)`` vs ``(N, H, W)``; multilabel ``(N, C, H, W)`` vs ``(N, C, H, W)``."""
    if y_pred.dim() < 2 or y_true.size(0) != y_pred.size(0):
        raise ValueError(
            f"prediction {tuple(y_pred.shape)} and target {tuple(y_true.shape)} need the same batch size N "
            "and a prediction of shape (N, C, ...)."
        )
    if mode == MULTICLASS_MODE:
        ok = y_true.shape == y_pred.shape[:1] + y_pred.shape[2:]
    elif mode == MULTILABEL_MODE:
        ok = y_true.shape == y_pred.shape
    else:
        ok = y_pred.size(1) == 1 and y_true.numel() == y_pred.numel()
    if not ok:
        want = {
            BINARY_MODE: "(N, 1, H, W) prediction and (N, H, W) or (N, 1, H, W) target",
            MULTICLASS_MODE: "(N, C, H, W) prediction and (N, H, W) target",
            MULTILABEL_MODE: "prediction and target of the same shape (N, C, H, W)",
        }[mode]
        raise ValueError(f"mode={mode!r} takes a {want}; got {tuple(y_pred.shape)} and {tuple(y_true.shape)}.")

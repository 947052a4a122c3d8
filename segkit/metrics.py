"""Metrics: the dataset-level confusion matrix (mIoU and friends) and top-k accuracy (tensor code;
the confusion matrix is scored by :func:`segkit.confusion.confusion_scores`, numpy).

:class:`ConfusionMatrix` follows MMSegmentation's semantics: pixels whose target is
``ignore_index`` do not count; a class absent from both prediction and ground truth has IoU NaN and
is left out of the means (``nanmean``); a class predicted but absent from the ground truth has IoU 0.
mIoU is dataset-level: one matrix summed over every pixel of the split (torchvision's reference
takes a plain mean instead, smp's ``iou_score`` gives 1.0 to absent classes; segkit does neither).

Both metrics sum their counts across processes when ``torch.distributed`` is initialised:
``compute()`` (or ``sync()``) is then a collective call that every process must make.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from segkit.confusion import confusion_scores

__all__ = ["ConfusionMatrix", "TopKAccuracy", "topk_accuracy"]

#: The fast path histograms (image, target value, prediction) directly when it needs at most this
#: many bins; larger target values take the general path.
_MAX_BINS = 1 << 22


class _Accumulator:
    """Counts in one float64 vector: ``_pending`` (this process, since the last sync) and ``_total``
    (summed over processes). ``sync()`` all-reduces ``_pending`` in place and moves it into
    ``_total``, so syncing twice, or updating after a sync, never counts anything twice."""

    def __init__(self, size: int, device: torch.device | str | None) -> None:
        self._size = size
        self._device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        device = self._device or torch.device("cpu")
        self._pending = torch.zeros(self._size, dtype=torch.float64, device=device)
        self._total = torch.zeros_like(self._pending)

    def _add(self, counts: torch.Tensor) -> None:
        if counts.device != self._pending.device:
            if self._device is None and not (self._pending.any() or self._total.any()):
                # nothing counted yet and no device asked for: keep the state where the data is
                self._pending, self._total = self._pending.to(counts.device), self._total.to(counts.device)
            else:
                counts = counts.to(self._pending.device)
        self._pending += counts

    def sync(self) -> None:
        """Sum the counts of all processes (in place) when torch.distributed is initialised."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and self._pending.device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
                self._pending, self._total = self._pending.to(device), self._total.to(device)
            dist.all_reduce(self._pending, op=dist.ReduceOp.SUM)
        self._total += self._pending
        self._pending.zero_()

    def _counts(self, sync: bool) -> torch.Tensor:
        if sync:
            self.sync()
        return self._total + self._pending

    def counts(self) -> torch.Tensor:
        """The counts summed over processes (a collective call under torch.distributed), on the CPU."""
        return self._counts(sync=True).cpu()

    def restore_counts(self, counts: Sequence[float] | torch.Tensor) -> None:
        """Continue from :meth:`counts` (the same on every process: each holds them as its total)."""
        total = torch.as_tensor(counts, dtype=torch.float64)
        if total.shape != self._total.shape:
            raise ValueError(f"expected {self._size} counts, got shape {tuple(total.shape)}.")
        self._total = total.to(self._total.device)
        self._pending.zero_()


class ConfusionMatrix(_Accumulator):
    """Dataset-level confusion matrix of a segmentation: rows are ground truth, columns prediction.

    ``update(pred, target)`` takes label maps ``(N, H, W)`` (or one ``(H, W)``) or logits
    ``(N, C, H, W)`` (argmax over C) on any device, and counts every pixel whose target is not
    ``ignore_index`` with one ``torch.bincount`` over a compact (image, target, prediction) index.
    A target label outside ``[0, num_classes)`` that is not ``ignore_index``, or a predicted label
    outside it on a counted pixel, raises ValueError naming the value.

    ``compute()`` returns a dict of python floats; per-class entries are lists with NaN for a
    class absent from both prediction and ground truth:

    - ``iou``, ``miou``: per-class IoU ``tp / (tp + fp + fn)`` and its nanmean (dataset-level);
    - ``dice``, ``mdice``: per-class Dice ``2 tp / (2 tp + fp + fn)`` and its nanmean;
    - ``accuracy``, ``mean_accuracy``: per-class accuracy (recall) ``tp / (tp + fn)`` (NaN where the
      class has no ground-truth pixel) and its nanmean;
    - ``pixel_accuracy``: correct pixels / counted pixels;
    - ``fwiou``: IoU weighted by each class's ground-truth pixel frequency (FCN paper);
    - ``per_image_miou``: MONAI's per-image mean IoU: each image's IoU averaged over the classes
      present in its ground truth (``ignore_empty``: classes absent from the image's ground truth
      are left out, so their false positives do not count), then averaged over images;
    - ``confusion_matrix``: the matrix itself, a list of rows of ints.

    NaN throughout (not 0) where nothing was counted.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # state: the C x C matrix, then the sum of per-image mIoUs and the number of images scored
        super().__init__(num_classes * num_classes + 2, device)

    @property
    def matrix(self) -> torch.Tensor:
        """The counts so far ``(C, C)`` int64, rows ground truth; after a sync, of all processes."""
        c = self.num_classes
        return self._counts(sync=False)[: c * c].view(c, c).long()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: ``pred`` labels ``(N, H, W)`` or logits ``(N, C, H, W)``, ``target`` ``(N, H, W)``."""
        pred, target, from_argmax = self._labels(pred, target)
        counts = self._histogram(pred, target, from_argmax)  # (N, C, C)
        counts = (counts.cpu() if counts.device.type == "mps" else counts).double()  # MPS has no float64
        tp = counts.diagonal(dim1=1, dim2=2)
        gt = counts.sum(2)
        iou = tp / (gt + counts.sum(1) - tp)
        iou[gt == 0] = torch.nan
        scored = gt.sum(1) > 0
        image_miou = iou[scored].nanmean(dim=1)
        extra = torch.stack([image_miou.sum(), scored.sum().to(image_miou.dtype)])
        self._add(torch.cat([counts.sum(0).flatten(), extra]))

    def _labels(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError("ConfusionMatrix.update takes tensors (pred, target).")
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target must hold integer labels; got {target.dtype}.")
        if target.dim() < 2:
            raise ValueError(f"target must be labels (N, H, W) or (H, W); got shape {tuple(target.shape)}.")
        if target.dim() == 2:
            target = target.unsqueeze(0)
            pred = pred.unsqueeze(0)
        wide = (torch.uint16, torch.uint32, torch.uint64)  # torch.from_numpy of a 16-bit mask; aminmax refuses them
        target = target.long() if target.dtype in wide else target
        pred = pred.long() if pred.dtype in wide else pred
        from_argmax = pred.is_floating_point()
        if from_argmax:
            if pred.dim() != target.dim() + 1 or pred.size(1) != self.num_classes or pred.shape[:1] + pred.shape[2:] != target.shape:
                raise ValueError(
                    f"logits must have shape (N, {self.num_classes}, H, W) for a target (N, H, W); got {tuple(pred.shape)} "
                    f"and {tuple(target.shape)}."
                )
            pred = pred.max(1).indices  # = argmax(1), first maximum on ties; several times faster on CPU
        elif pred.shape != target.shape:
            raise ValueError(f"prediction labels {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
        if pred.device != target.device:
            pred = pred.to(target.device)
        if pred.dtype == torch.bool:
            pred = pred.to(torch.uint8)
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        return pred, target, from_argmax

    def _histogram(self, pred: torch.Tensor, target: torch.Tensor, from_argmax: bool) -> torch.Tensor:
        """Counts ``(N, C, C)`` per image, target x prediction, of the counted pixels."""
        c, ignore, n = self.num_classes, self.ignore_index, target.size(0)
        if target.numel() == 0:
            return torch.zeros(n, c, c, dtype=torch.long, device=target.device)
        lo, hi = (int(v) for v in torch.aminmax(target))
        pred_in_range = from_argmax or all(0 <= int(v) < c for v in torch.aminmax(pred))
        rows = max(hi + 1, c)
        if pred_in_range and lo >= 0 and n * rows * c <= _MAX_BINS and (ignore is None or not 0 <= ignore < c):
            # Fast path: one bin per (image, target value, prediction); rows >= C then show the
            # target values outside [0, C), which are either ignore_index or errors. The ranges are
            # known, so int32 is exact here, and much faster than int64 (bincount scans its input
            # for min and max, which int64 does without SIMD).
            index = torch.add(_int32(pred), _int32(target), alpha=c).reshape(n, -1)
            if n > 1:
                index += torch.arange(0, n * rows * c, rows * c, dtype=torch.int32, device=index.device).view(n, 1)
            counts = torch.bincount(index.view(-1), minlength=n * rows * c).view(n, rows, c)
            outside = counts[:, c:].sum((0, 2))
            if ignore is not None and c <= ignore < rows:
                outside[ignore - c] = 0
            if outside.any():
                self._bad_label("target", int(outside.nonzero()[0]) + c)
            return counts[:, :c]
        # General path: mask the ignored pixels (a negative ignore_index, one inside [0, C), ...).
        target = target.long()
        valid = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
        for what, labels in (("target", target), ("prediction", pred)):
            bad = valid & ((labels < 0) | (labels >= c))
            if bad.any():
                self._bad_label(what, int(labels[bad][0]))
        index = torch.add(pred.long(), target, alpha=c).view(n, -1)
        index += torch.arange(0, n * c * c, c * c, device=index.device).view(n, 1)
        index = torch.where(valid.view(n, -1), index, n * c * c)
        return torch.bincount(index.view(-1), minlength=n * c * c + 1)[:-1].view(n, c, c)

    def _bad_label(self, what: str, value: int) -> None:
        ignore = "" if self.ignore_index is None else f" and is not ignore_index={self.ignore_index}"
        raise ValueError(
            f"{what} label {value} is outside [0, {self.num_classes}){ignore}; check num_classes and the "
            f"{'masks (or set ignore_index)' if what == 'target' else 'predicted labels'}."
        )

    def add_counts(self, matrix: Any, image_mious: Sequence[float] = ()) -> None:
        """Add counts made elsewhere: a ``(C, C)`` matrix (rows ground truth) and the mean IoUs of the
        images it sums (NaN: an image with nothing to score), e.g. from decoding threads."""
        c = self.num_classes
        counts = torch.as_tensor(np.asarray(matrix, dtype=np.float64)).flatten()
        if counts.numel() != c * c:
            raise ValueError(f"add_counts needs a {c}x{c} matrix; got {tuple(np.shape(matrix))}.")
        scored = [float(v) for v in image_mious if not math.isnan(v)]
        extra = torch.tensor([math.fsum(scored), float(len(scored))], dtype=torch.float64)
        self._add(torch.cat([counts, extra]))

    def compute(self, sync: bool = True) -> dict[str, float | list[float] | list[list[int]]]:
        """The metrics of everything counted since ``reset()`` (summed over processes if ``sync``):
        :func:`segkit.confusion.confusion_scores` of the summed matrix."""
        c = self.num_classes
        state = self._counts(sync).cpu().numpy()
        return confusion_scores(state[: c * c].reshape(c, c), state[c * c], state[c * c + 1])


def _int32(labels: torch.Tensor) -> torch.Tensor:
    """Labels known to lie in [0, 2**31) as int32 values, without a copy for int64 (the low words)."""
    if labels.dtype == torch.int64 and sys.byteorder == "little" and labels.stride(-1) == 1:
        return labels.view(torch.int32).unflatten(-1, (-1, 2))[..., 0]
    return labels if labels.dtype == torch.int32 else labels.to(torch.int32)


def _check_topk(topk: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(topk)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"topk must be positive integers; got {topk!r}.")
    return ks


def _topk_hits(logits: torch.Tensor, target: torch.Tensor, kmax: int, check_labels: bool = True) -> torch.Tensor:
    """``(N, min(kmax, C))`` bool: column j is True where the label is the (j+1)-th highest logit.

    ``check_labels``: labels outside ``[0, C)`` raise (two reads back from a GPU)."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"top-k accuracy takes logits (N, C) and labels (N,); got {tuple(logits.shape)} and {tuple(target.shape)}.")
    num_classes = logits.size(1)
    if check_labels and target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = int(target.max()) if int(target.max()) >= num_classes else int(target.min())
        raise ValueError(f"label {bad} is outside [0, {num_classes}).")
    # k >= C: every label is among the top k (timm's convention: k is clamped to C).
    top = logits.topk(min(kmax, num_classes), dim=1).indices
    return top == target.view(-1, 1)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """How many samples have their label among the k highest logits, for each k."""
    hit = _topk_hits(logits, target, max(ks))
    return torch.stack([hit[:, :k].any(1).sum() for k in ks]).double()


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of samples whose label is among the k highest logits: ``{"top1": ..., "top5": ...}``.

    ``logits`` ``(N, C)``, ``target`` ``(N,)`` labels in ``[0, C)``; nothing is ignored. The
    top-k *error* of the papers is ``1 - topk``.
    """
    ks = _check_topk(topk)
    correct = _topk_correct(logits, target, ks)
    return {f"top{k}": float(v / target.numel()) for k, v in zip(ks, correct)}  # 0/0 -> NaN


class TopKAccuracy(_Accumulator):
    """Top-k accuracy of a classifier accumulated over batches (and processes, like ConfusionMatrix).

    ``update(logits (N, C), target (N,))``; ``compute()`` -> ``{"top1": ..., "top5": ...}`` (fractions).
    With ``num_classes`` it also counts per class: ``compute()`` then adds ``per_class_accuracy``
    (top-1 accuracy of the samples of each class, i.e. its recall; NaN for a class with no sample)
    and ``mean_class_accuracy`` (their nanmean).
    """

    def __init__(self, topk: Sequence[int] = (1, 5), device: torch.device | str | None = None, num_classes: int | None = None,
                 check_labels: bool = True) -> None:
        self.topk = _check_topk(topk)
        # False: no label range check, which reads back from the GPU in every update (for labels known
        # to fit, as the training loop's: it reads back once per log interval)
        self.check_labels = check_labels
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
        self.num_classes = num_classes
        # correct counts per k, the sample count, then per class: top-1 hits and samples
        super().__init__(len(self.topk) + 1 + 2 * (num_classes or 0), device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        hit = _topk_hits(logits, target, max(max(self.topk), 1), self.check_labels)
        correct = torch.stack([hit[:, :k].any(1).sum() for k in self.topk]).double()
        parts = [correct, correct.new_tensor([target.numel()])]
        if self.num_classes is not None:
            if logits.size(1) != self.num_classes:
                raise ValueError(f"logits have {logits.size(1)} classes but the metric counts {self.num_classes}.")
            c = self.num_classes
            parts += [torch.bincount(target[hit[:, 0]], minlength=c).double(), torch.bincount(target, minlength=c).double()]
        self._add(torch.cat([p.to(correct.device) for p in parts]))

    def compute(self, sync: bool = True) -> dict[str, float | list[float]]:
        state = self._counts(sync)
        n = len(self.topk)
        result: dict[str, float | list[float]] = {f"top{k}": float(state[i] / state[n]) for i, k in enumerate(self.topk)}
        if self.num_classes is not None:
            c = self.num_classes
            per_class = state[n + 1 : n + 1 + c] / state[n + 1 + c :]  # 0/0 -> NaN: no sample of the class
            result["per_class_accuracy"] = per_class.tolist()
            result["mean_class_accuracy"] = float(per_class.nanmean())
        return result

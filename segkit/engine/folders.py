"""Scoring a folder of predicted masks against a folder of ground-truth masks (``segkit evaluate --pred --gt``).

Files pair by stem (``a.png`` <-> ``a.png``; nested folders by relative path), with the pairing
rules of ``FolderDataset``. Decoding is the cost, so a pool of threads decodes the pairs
(``segkit.data.io.read_grey_png``: one read and a GIL-free decode for grayscale PNGs, else
``read_mask_pixels``) and counts each pair's confusion matrix (by runs of equal labels,
:func:`_pair_counts`); the main thread sums them and computes the per-image figures, a few
hundred images at once. Results come back in file order, so the first bad file reported is always
the same one. The summed counts are scored by :func:`segkit.confusion.confusion_scores`, as
``ConfusionMatrix.compute()`` scores its own, so the command never imports torch.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segkit.confusion import confusion_scores
from segkit.data.io import MASK_EXTENSIONS, read_grey_png, read_mask_pixels
from segkit.data.masks import MaskDecoder, bad_value_message, binary_masks_hint, has_void_beside_labels, is_zero_255
from segkit.engine.report import EvalReport, image_figures, plot_panels
from segkit.errors import SegkitError

__all__ = ["default_workers", "evaluate_folders"]

T = TypeVar("T")
R = TypeVar("R")


_FIGURE_VALUES = 1 << 22  # counts whose per-image figures are computed together: 4 M (32 MB), 256 images of 21 classes
_local = threading.local()


def _buffers(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's work arrays: two change masks of ``size`` bytes rounded up to whole 8-byte
    words (the padding stays 0), and one bool per word."""
    words = (size + 7) // 8
    buffers = getattr(_local, "buffers", None)
    if buffers is None or buffers[0].size != 8 * words:
        buffers = _local.buffers = (np.zeros(8 * words, bool), np.zeros(8 * words, bool), np.empty(words, bool))
    return buffers


def _pair_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None,
                 ignored: list[int] | None = None) -> np.ndarray | None:
    """The ``(C, C)`` counts (rows ground truth) of one pair of label maps (uint8 or uint16), counted by runs.

    Masks are mostly uniform regions, and a histogram that adds one pixel at a time to the same
    bin over and over waits on its own previous increment (``np.bincount``, OpenCV's
    ``calcHist``: 0.5-0.7 ms on 512x512 here). So the pair is cut into runs of equal (ground
    truth, prediction), and each run adds its length to its bin: one ``bincount`` over a few
    thousand runs, exact (float64 weights). The run starts are found a word of 8 pixels at a
    time (``np.flatnonzero`` over every pixel's flag costs as much as the rest together): 0.19 ms.
    Runs whose ground truth is ``ignore_index`` do not count (nor are their predictions checked,
    as in ``ConfusionMatrix``). None when a counted run holds a label outside ``[0, C)``: the
    caller names it (:func:`_label_error`). With ``ignored``, the number of ground-truth pixels
    equal to ``ignore_index`` is appended to it.
    """
    if pred.size == 0:
        return np.zeros((num_classes, num_classes), np.int64)
    size = pred.size
    starts_here, pred_changes, word_has_start = _buffers(size)  # reused per thread: no page faults for fresh arrays
    gt_flat, pred_flat = gt.reshape(-1), pred.reshape(-1)
    np.not_equal(gt_flat[1:], gt_flat[:-1], out=starts_here[1:size])
    np.not_equal(pred_flat[1:], pred_flat[:-1], out=pred_changes[1:size])
    np.logical_or(starts_here[1:size], pred_changes[1:size], out=starts_here[1:size])
    starts_here[0] = True
    starts_here[size:] = False  # a bigger mask of the same word count may have left flags there
    words = starts_here.view(np.uint64)
    np.not_equal(words, 0, out=word_has_start)
    busy = np.flatnonzero(word_has_start)  # the words holding a run start: a few per cent of them
    within = np.flatnonzero(words[busy].view(bool))  # their flags, 8 per word
    starts = busy[within >> 3] * 8 + (within & 7)
    lengths = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = size - starts[-1]
    run_gt, run_pred = gt_flat[starts], pred_flat[starts]  # every pixel's labels are its run's
    if gt.dtype == np.uint8 and int(run_pred.max()) < num_classes:
        # One row per 8-bit value: the ignored row is dropped after counting, not run by run.
        rows = max(256, num_classes)
        counts = _run_histogram(run_gt, run_pred, lengths, num_classes, rows)
        if ignore_index is not None and 0 <= ignore_index < rows:
            if ignored is not None:
                ignored.append(int(counts[ignore_index].sum()))
            counts[ignore_index] = 0
        if counts[num_classes:].any():  # a ground-truth label >= C that is not ignore_index
            return None
        return counts[:num_classes].astype(np.int64)
    # 16-bit labels, or a prediction >= C (allowed where the ground truth is ignored): drop the ignored runs.
    if ignore_index is not None:
        counted = run_gt != ignore_index
        if ignored is not None:
            ignored.append(int(lengths[~counted].sum()))
        run_gt, run_pred, lengths = run_gt[counted], run_pred[counted], lengths[counted]
    if run_gt.size and (int(run_gt.max()) >= num_classes or int(run_pred.max()) >= num_classes):
        return None
    return _run_histogram(run_gt, run_pred, lengths, num_classes, num_classes).astype(np.int64)


def _run_histogram(run_gt: np.ndarray, run_pred: np.ndarray, lengths: np.ndarray, num_classes: int, rows: int) -> np.ndarray:
    """``(rows, C)`` float64: each run's length added to its (ground truth, prediction) bin, in one bincount."""
    index = np.multiply(run_gt, num_classes, dtype=np.intp)
    index += run_pred
    return np.bincount(index, weights=lengths, minlength=rows * num_classes).reshape(rows, num_classes)


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = 8, ahead: int = 8) -> Iterator[R]:
    """``map(fn, items)`` run by ``workers`` threads, results in order, at most ``ahead`` x workers chunks ahead.

    Items go to the threads ``chunk`` at a time: one hand-over per chunk instead of per item
    keeps the main thread (and the GIL hand-overs it causes) out of the decoding threads' way.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    def run(chunk_items: list[T]) -> list[R]:
        return [fn(item) for item in chunk_items]

    iterator = iter(items)
    chunks = iter(lambda: list(itertools.islice(iterator, chunk)), [])
    with ThreadPoolExecutor(workers, thread_name_prefix="segkit-decode") as pool:
        pending = deque(pool.submit(run, c) for c in itertools.islice(chunks, ahead * workers))
        try:
            while pending:
                results = pending.popleft().result()
                for c in itertools.islice(chunks, 1):
                    pending.append(pool.submit(run, c))
                yield from results
        finally:
            for future in pending:
                future.cancel()


def default_workers() -> int:
    """Decoding threads: the CPUs this process may run on (its affinity, e.g. under taskset), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


def _list_masks(folder: Path, suffix: str | None, kind: str) -> dict[str, Path]:
    from segkit.data.layout import find_files  # the pairing rules FolderDataset uses

    if not folder.is_dir():
        raise SegkitError(f"{kind} folder {folder} does not exist; pass a folder of mask files.")
    files, problems = find_files(folder, MASK_EXTENSIONS, suffix, kind)
    if problems:
        raise SegkitError(problems[0] + (f" ({len(problems) - 1} more like it)" if len(problems) > 1 else ""))
    return files


def _pair(pred_dir: Path, gt_dir: Path, pred_suffix: str | None, gt_suffix: str | None,
          skip_missing: bool) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    gts = _list_masks(gt_dir, gt_suffix, "ground-truth mask")
    preds = _list_masks(pred_dir, pred_suffix, "prediction")
    if not gts:
        looked = f"files ending in {gt_suffix!r}" if gt_suffix else "/".join(e.lstrip(".") for e in MASK_EXTENSIONS)
        raise SegkitError(f"no ground-truth masks found in {gt_dir} (looked for {looked}); point --gt at the mask folder.")
    problems = [f"ground truth {gts[s]} has no prediction in {pred_dir} (stem {s!r})" for s in sorted(set(gts) - set(preds))]
    problems += [f"prediction {preds[s]} has no ground truth in {gt_dir} (stem {s!r})" for s in sorted(set(preds) - set(gts))]
    if problems and not skip_missing:
        more = f" ({len(problems) - 1} more unpaired file{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise SegkitError(f"{problems[0]}{more}; add the missing files or pass --skip-missing to score only the pairs.")
    pairs = [(stem, preds[stem], gts[stem]) for stem in sorted(set(gts) & set(preds))]
    if not pairs:
        raise SegkitError(f"no prediction in {pred_dir} pairs with a ground truth in {gt_dir}; masks pair by file stem (a.png <-> a.png).")
    return pairs, [f"skipped: {p}" for p in problems]


def _label_error(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path, num_classes: int, ignore_index: int,
                 reduce_zero_label: bool = False) -> str:
    """The message for labels ConfusionMatrix refused, naming the file that holds them."""
    counts = np.bincount(gt.ravel().astype(np.int64))
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != ignore_index]
    if bad:
        message = bad_value_message(gt_path, bad, [int(counts[v]) for v in bad], num_classes, ignore_index,
                                    hint=not reduce_zero_label, flags=True)
        if reduce_zero_label:  # the values are the reduced ones: say what the file holds
            message += f" (values as --reduce-zero-label reads them: the file holds {', '.join(str(v + 1) for v in bad)})"
        return message
    counted = pred[gt != ignore_index].astype(np.int64)
    values, numbers = np.unique(counted[(counted < 0) | (counted >= num_classes)], return_counts=True)
    listed = ", ".join(f"{v} ({n} pixels)" for v, n in zip(values.tolist(), numbers.tolist()))
    return (f"prediction {pred_path} holds label(s) {listed}, outside [0, {num_classes}); predictions must be class indices "
            f"0..{num_classes - 1} (check --num-classes and how the predictions were written).")


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    num_classes: int,
    *,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    skip_missing: bool = False,
    binary: bool = False,
    reduce_zero_label: bool = False,
    pred_suffix: str | None = None,
    gt_suffix: str | None = None,
    workers: int | None = None,
    worst: int = 5,
    worst_figure: str | os.PathLike[str] | None = None,
) -> EvalReport:
    """Score the masks in ``pred_dir`` against those in ``gt_dir`` (paired by stem).

    Predictions hold class indices (palette PNGs count by index); ``binary`` reads 0/255 as 0/1
    in both folders; ``reduce_zero_label`` applies to the ground truth only. Each bad file (a
    prediction of another size, an unreadable file, a label outside ``[0, num_classes)``, an
    unpaired file unless ``skip_missing``) raises a SegkitError naming it.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SegkitError(f"--num-classes must be a positive integer; got {num_classes!r}.")
    classes = _class_names(class_names, num_classes)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs, warnings = _pair(pred_dir, gt_dir, pred_suffix, gt_suffix, skip_missing)
    if 0 <= ignore_index < num_classes:
        # ConfusionMatrix's rule (as torchmetrics'): such pixels leave the ground truth, but the class's predictions
        # elsewhere still count, so it scores low; allowed, as every path allows it, and said.
        warnings.append(f"--ignore-index {ignore_index} is also a class (labels 0..{num_classes - 1}): its ground-truth pixels "
                        "are left out but its predictions still count; for masks whose 0 means unlabelled use --reduce-zero-label.")
    gt_decoder = MaskDecoder(ignore_index=ignore_index, binary=binary, reduce_zero_label=reduce_zero_label)
    pred_decoder = MaskDecoder(ignore_index=ignore_index, binary=binary, kind="prediction")

    # Grayscale PNGs are read in one GIL-free call (read_grey_png) until a folder gives a file that
    # is not one (a palette or colour folder): from then on that folder is read the checked way,
    # so it wastes one decode, not one per file. Threads may race on the flag; either way is right.
    direct = {"pred": True, "gt": True}

    def read(path: Path, side: str) -> np.ndarray:
        if direct[side]:
            pixels = read_grey_png(path)
            if pixels is not None:
                return pixels
            direct[side] = False
        return read_mask_pixels(path)

    def load(pair: tuple[str, Path, Path]) -> tuple[str, np.ndarray, np.ndarray, Path, Path]:
        stem, pred_path, gt_path = pair
        gt = gt_decoder.decode(read(gt_path, "gt"), gt_path)
        pred = pred_decoder.decode(read(pred_path, "pred"), pred_path)
        if pred.shape != gt.shape:
            raise SegkitError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {gt_path} is "
                              f"{gt.shape[1]}x{gt.shape[0]}; predictions must have the ground truth's size (resize them with "
                              "nearest-neighbour interpolation, or predict at full resolution).")
        return stem, pred, gt, pred_path, gt_path

    def count(pair: tuple[str, Path, Path]) -> np.ndarray:
        """One pair's counts, computed in the decoding thread."""
        _, pred, gt, pred_path, gt_path = load(pair)
        ignored: list[int] = []
        counts = _pair_counts(pred, gt, num_classes, ignore_index, ignored)
        if counts is None:
            raise SegkitError(_label_error(pred, gt, pred_path, gt_path, num_classes, ignore_index, reduce_zero_label))
        if ignored and is_zero_255(counts.sum(1), ignored[0], ignore_index):
            zero_255.append(str(gt_path))  # list.append is atomic across the threads
        elif ignored and has_void_beside_labels(counts.sum(1), ignored[0]):
            void_beside_labels.append(True)
        return counts

    total = np.zeros((num_classes, num_classes), np.int64)
    zero_255: list[str] = []  # ground truths holding only 0 and an ignored 255
    void_beside_labels: list[bool] = []  # one entry per ground truth holding 255 beside real labels (VOC's borders)
    images: list[tuple[str, float]] = []
    details: list[dict[str, Any]] = []  # each image's pixel accuracy and classes, for the HTML page
    results = _ordered_map(count, pairs, workers or default_workers())
    # The per-image figures of a few hundred images at once: no Python per image and class.
    per_batch = max(1, min(256, _FIGURE_VALUES // (num_classes * num_classes)))
    while batch := list(itertools.islice(results, per_batch)):
        stack = np.stack(batch)
        total += stack.sum(0)
        mious, batch_details = image_figures(stack)
        stems = [stem for stem, _, _ in pairs[len(images):len(images) + len(batch)]]
        images.extend(zip(stems, mious))
        details.extend(batch_details)
    scored = [value for _, value in images if not math.isnan(value)]
    metrics = confusion_scores(total, math.fsum(scored), len(scored))  # what ConfusionMatrix.compute() gives
    hint = None if binary else binary_masks_hint(sorted(zero_255), len(pairs), "--binary", bool(void_beside_labels))
    if hint:
        warnings.append(f"{hint}.")
    report = EvalReport(metrics, classes, ignore_index, images, warnings,
                        {"mode": "folders", "pred": str(pred_dir), "gt": str(gt_dir), "binary": binary,
                         "reduce_zero_label": reduce_zero_label}, details)
    if worst_figure is not None and worst > 0:
        paths = {stem: (pred_path, gt_path) for stem, pred_path, gt_path in pairs}
        rows = []
        for name, value in report.worst(worst):
            _, pred, gt, _, _ = load((name, *paths[name]))
            rows.append((f"{name}: IoU {value:.3f}", _label_panels(pred, gt, num_classes, ignore_index)))
        plot_panels(rows, Path(worst_figure))
    return report


def _class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise SegkitError(f"--class-names gives {len(names)} names for {num_classes} classes; give one name per class.")
    return names


def _colors(labels: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    from segkit.engine.plots import palette

    colors = palette(max(num_classes, 1)) / 255.0
    shown = np.where((labels >= num_classes) | (labels == ignore_index), 0, labels)
    return colors[shown.astype(np.int64)]


def _label_panels(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None) -> list[tuple[str, np.ndarray]]:
    """Ground truth, prediction, and the errors (red; ignored pixels grey)."""
    errors = np.ones(gt.shape + (3,))
    errors[(pred != gt)] = (0.85, 0.1, 0.1)
    errors[gt == ignore_index] = (0.6, 0.6, 0.6)
    return [("ground truth", _colors(gt, num_classes, ignore_index)), ("prediction", _colors(pred, num_classes, None)),
            ("errors", errors)]

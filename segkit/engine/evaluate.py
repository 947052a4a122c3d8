"""Evaluation: a checkpoint's model on a dataset (``segkit evaluate --checkpoint``), or mask folders.

    report = evaluate_checkpoint("runs/quick/best.pt", data="data/quickstart")            # split val
    report = evaluate_folders("preds/", "gt/", num_classes=3)                              # no model
    print(format_report(report)); write_report(report, "report.json")

Both count one :class:`~segkit.metrics.ConfusionMatrix` over every pixel of the split
(dataset-level mIoU, absent classes NaN and left out of the means) at the ground truth's own
resolution, and keep each image's mean IoU for the list of worst images.

``evaluate_checkpoint`` rebuilds the model and the data normalisation from the checkpoint's own
config and feeds the images exactly as training's validation did (see ``segkit.engine.inputs``);
``evaluate_folders`` lives in ``segkit.engine.folders``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkit.engine.folders import evaluate_folders
from segkit.engine.report import EvalReport, image_figures, plot_panels
from segkit.errors import SegkitError

__all__ = ["evaluate_checkpoint", "evaluate_folders"]


def _eval_split(root: Path, split: str | None, default: str, options: dict[str, Any]) -> str | None:
    """``split`` if given; else ``default`` when ``root`` has it (folder or split file), else a flat folder."""
    from segkit.data.layout import SPLIT_FILE_PLACES, default_dirs, list_splits

    if split is not None:
        return split
    images, _ = default_dirs(root, options.get("image_dir"), options.get("mask_dir"))
    if (images / default).is_dir() or options.get("split_file") or any((root / p.format(split=default)).is_file() for p in SPLIT_FILE_PLACES):
        return default
    found = list_splits(root, options.get("image_dir"), options.get("mask_dir"))
    if found:
        raise SegkitError(f"{images} holds split folders {', '.join(found)} but no {default!r}; pass --split with one of them.")
    return None


def _eval_dataset(cfg: Any, data: str | os.PathLike[str] | None, split: str | None) -> tuple[Any, dict[str, Any]]:
    """The dataset to score (transforms left to InputPipeline) and a description for the report."""
    from segkit.data import FolderDataset
    from segkit.engine.builders import coco_dataset, dataset_options

    d = cfg.data
    common, options = dataset_options(cfg)
    if data is None and d.kind == "coco":
        if split not in (None, "train", "val"):
            raise SegkitError(f"--split {split!r}: a COCO checkpoint is scored on its config's annotations; use --split val "
                              "(data.val_annotations, the default) or --split train, or --data DIR for a folder dataset.")
        chosen = split or "val"
        dataset = coco_dataset(cfg, chosen)  # its channels checked against the model's (grey images repeated for RGB)
        return dataset, {"data": str(d[f"{chosen}_annotations"]), "split": chosen}
    if data is None and (not d.root or not Path(d.root).is_dir()):
        raise SegkitError(f"the checkpoint's data.root {d.root!r} is not a folder here; pass --data DIR (images/ + masks/).")
    root = Path(data if data is not None else d.root)
    if d.kind == "coco":  # a folder to score a COCO-trained model on: only the normalisation carries over
        from segkit.engine.inputs import normalisation_options

        options = normalisation_options(options)
        common.pop("classes", None)
    chosen = _eval_split(root, split, d.val_split, options)
    dataset = FolderDataset(root, chosen, **common, **options)  # in_channels: the model's (grey images repeated for RGB)
    return dataset, {"data": str(root), "split": chosen}


def image_names(dataset: Any) -> list[str]:
    """Each image's name in reports: the dataset's ``stems`` (relative paths without the extension,
    so ``a/x.png`` and ``b/x.png`` stay apart), else the file name."""
    stems = getattr(dataset, "stems", None)
    return list(stems) if stems else [dataset.image_path(i).name for i in range(len(dataset))]


def _class_names(cfg: Any, dataset: Any, num_classes: int) -> list[str]:
    """The config's class names, else the dataset's, else the indices; only a list naming every class."""
    for names in (cfg.data.classes, getattr(dataset, "classes", None)):
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(c) for c in range(num_classes)]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    device: str = "auto",
    tile: int | None = None,
    overlap: float = 0.25,
    tta: Sequence[str] | bool = (),
    amp: bool = True,
    batch_size: int | None = None,
    workers: int | None = None,
    worst: int = 5,
    worst_figure: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> EvalReport:
    """Score the checkpoint's model on ``data`` (a folder dataset; default: the config's own data).

    ``split`` defaults to the config's ``data.val_split`` when the folder has it, else the whole
    folder. Inference options as in :func:`segkit.engine.inference.predict_logits`.
    """
    from segkit.data.masks import binary_masks_hint, has_void_beside_labels, is_zero_255
    from segkit.engine.builders import transform_steps
    from segkit.engine.inference import check_tile_options, load_model, warn_heavy_overlap
    from segkit.engine.inputs import InferenceItems, InputPipeline, checkpoint_amp, iterate_logits, loader_workers
    from segkit.engine.train import resolve_device
    from segkit.metrics import ConfusionMatrix

    check_tile_options(tile, overlap, batch_size)
    warn_heavy_overlap(tile, overlap)
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    dataset, source = _eval_dataset(cfg, data, split)
    if len(dataset) == 0:
        raise SegkitError(f"{source['data']} holds no images to evaluate.")
    pipeline = InputPipeline(transform_steps(cfg, train=False), cfg.data.ignore_index, cfg.trainer.seed)
    items = InferenceItems(dataset, pipeline, keep_image=False)
    names = image_names(dataset)
    num_classes, ignore_index = cfg.model.num_classes, cfg.data.ignore_index
    options: dict[str, Any] = {"batch_size": batch_size or cfg.trainer.val_batch_size or cfg.trainer.batch_size,
                               "tile": tile, "overlap": overlap, "tta": tta, "amp": checkpoint_amp(cfg, amp, dev),
                               "channels_last": dev.type == "cuda" and cfg.trainer.channels_last}

    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    images: list[tuple[str, float]] = []
    details: list[dict[str, Any]] = []  # each image's pixel accuracy and classes, for the HTML page
    before = matrix.matrix
    zero_255: list[str] = []  # ground truths holding only 0 and an ignored 255, for the 0/255-masks warning
    void_beside_labels = False  # a ground truth holding 255 beside real labels: 255 is void there (VOC)
    for item, logits in iterate_logits(model, items, dev, workers=loader_workers(workers, cfg.data.num_workers),
                                       progress="evaluate" if progress else None, **options):
        assert item.mask is not None
        ignored = int((item.mask == ignore_index).sum())
        matrix.update(logits, item.mask[None].to(dev))
        after = matrix.matrix
        counts = (after - before).cpu().numpy()
        (miou,), (detail,) = image_figures(counts[None])  # as evaluate --pred/--gt computes them
        if is_zero_255(counts.sum(1), ignored, ignore_index):
            zero_255.append(names[item.index])
        void_beside_labels |= has_void_beside_labels(counts.sum(1), ignored)
        images.append((names[item.index], miou))
        details.append(detail)
        before = after
    classes = _class_names(cfg, dataset, num_classes)
    warnings = [pipeline.note()] if pipeline.dropped else []
    metrics = matrix.compute()
    hint = binary_masks_hint(zero_255, len(images), "data.options.binary: true in the config (then retrain)", void_beside_labels)
    if hint:
        warnings.append(f"{hint}.")
    report = EvalReport(metrics, classes, ignore_index, images, warnings,
                        {"mode": "checkpoint", "checkpoint": str(checkpoint), **source, "tile": tile, "tta": bool(tta)}, details)
    if worst_figure is not None and worst > 0:
        from segkit.engine.plots import overlay

        index_of = {name: i for i, name in enumerate(names)}
        rows = []
        for name, value in report.worst(worst):
            [(item, logits)] = iterate_logits(model, items, dev, indices=[index_of[name]], **options)
            assert item.mask is not None
            pred = logits.argmax(1)[0].cpu().numpy()
            unit = dataset.load_image(item.index)
            shown = unit[..., 0] if unit.shape[2] != 3 else unit
            gt = item.mask.numpy().copy()
            gt[(gt >= num_classes) | (gt == ignore_index)] = 0
            rows.append((f"{name}: IoU {value:.3f}", [("image", shown), ("ground truth", overlay(shown, gt, num_classes)),
                                                      ("prediction", overlay(shown, pred, num_classes))]))
        plot_panels(rows, Path(worst_figure))
    return report

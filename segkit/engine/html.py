"""Reports as one self-contained web page: ``segkit evaluate --html``, ``segkit report``, ``segkit compare``.

    report = evaluate_folders("preds/", "gt/", num_classes=3)
    panels = folder_overlays(report, "preds/", "gt/", 3)          # or checkpoint_overlays(...)
    write_evaluation_html(report, "report.html", panels)

A page is a Jinja2 template from ``segkit/templates/`` with inline SVG charts, a little
hand-written JavaScript (table sort and filter, heatmap hover, click to enlarge) and its pictures
inline as base64 PNG/JPEG thumbnails, so it opens from disk with no network. Its size is bounded
whatever the dataset's: the per-image table lists at most ``TABLE_ROWS`` images, the overlays
show at most ``MAX_SHOWN`` worst and as many best images, thumbnails are at most ``THUMB`` pixels
a side; the page says so where it leaves something out. Run pages and comparisons are in
``segkit.engine.runs``.
"""

from __future__ import annotations

import base64
import io
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from segkit.engine.report import EvalReport
from segkit.errors import SegkitError

__all__ = ["checkpoint_overlays", "evaluation_page", "folder_overlays", "render", "write_evaluation_html", "write_page"]

TABLE_ROWS = 10_000  # per-image table: beyond this, the lowest and highest half each
MAX_SHOWN = 25  # overlays: at most this many worst and as many best images
THUMB = 320  # longest side of an overlay thumbnail, pixels

Panels = list[tuple[str, str]]  # (title, data: URI) per picture of one image


# -- rendering and writing -----------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """``0.912``; an en dash for None/NaN (an absent class)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    return f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    """``+0.012`` / ``-0.012``; ``+0.000`` for differences that round to nothing; an en dash for None."""
    if value is None or math.isnan(value):
        return "\u2013"
    return f"{value if abs(value) >= 0.5 * 10 ** -digits else 0.0:+.{digits}f}"


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("segkit", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["signed"] = signed
    env.filters["pct"] = lambda value, digits=1: "\u2013" if value is None else f"{100 * value:.{digits}f}%"
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a file in ``segkit/templates``) filled with ``context``."""
    from segkit import __version__

    context.setdefault("version", __version__)
    context.setdefault("date", datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip())
    return _environment().get_template(template).render(**context)


def write_page(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path`` atomically: a temp file beside it, then ``os.replace`` (never a partial page)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # mode 0666 less the umask, as open() makes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:  # a folder at the path, no permission, a read-only file system: the user's to fix
        tmp.unlink(missing_ok=True)
        raise SegkitError(f"cannot write the page {path} ({err.strerror or err}); give a writable .html path.") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- pictures --------------------------------------------------------------------------------------
def image_uri(picture: np.ndarray, max_side: int = THUMB, photo: bool = True) -> str:
    """A ``data:`` URI of ``picture`` ((H, W) or (H, W, 3), float in [0, 1] or uint8) at most
    ``max_side`` pixels a side: JPEG for photos, PNG (nearest-neighbour) for flat label colours."""
    from PIL import Image

    if picture.dtype != np.uint8:
        picture = (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(picture)
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR if photo else Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    if photo:
        image.convert("RGB").save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", optimize=True)
    return f"data:image/{'jpeg' if photo else 'png'};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def hex_colors(num_classes: int) -> list[str]:
    """The class colours of ``segkit predict`` (``segkit.engine.plots.palette``) as ``#rrggbb``."""
    from segkit.engine.plots import palette

    return ["#%02x%02x%02x" % tuple(int(v) for v in rgb) for rgb in palette(max(num_classes, 1))[:num_classes]]


def label_panels(image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray, num_classes: int,
                 ignore_index: int | None) -> Panels:
    """Image / ground truth / prediction / errors of one image as thumbnails.

    With an ``image`` ((H, W) or (H, W, 3) in [0, 1]) the labels are drawn over it as ``segkit
    predict`` draws them (class 0 left clear); without one, as flat palette colours. Ignored
    pixels are grey; errors are red where the prediction differs on a counted pixel.
    """
    from segkit.engine.plots import overlay, palette

    ignored = (gt == ignore_index) | (gt >= num_classes) | (gt < 0)
    gt_shown = np.where(ignored, 0, gt).astype(np.int64)
    pred_shown = np.clip(pred.astype(np.int64), 0, num_classes - 1)
    wrong = (pred_shown != gt_shown) & ~ignored
    grey = np.array([0.55, 0.55, 0.55])
    if image is None:
        colors = palette(num_classes) / 255.0
        gt_rgb, pred_rgb = colors[gt_shown], colors[pred_shown]
        errors = np.ones(gt.shape + (3,))
        panels: Panels = []
    else:
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        gt_rgb, pred_rgb = overlay(rgb, gt_shown, num_classes), overlay(rgb, pred_shown, num_classes)
        errors = 0.35 + 0.5 * rgb  # the image, faded
        panels = [("image", image_uri(rgb))]
    gt_rgb[ignored] = grey
    errors[ignored] = grey
    errors[wrong] = (0.86, 0.1, 0.1)
    photo = image is not None
    return panels + [("ground truth", image_uri(gt_rgb, photo=photo)), ("prediction", image_uri(pred_rgb, photo=photo)),
                     ("errors", image_uri(errors, photo=photo))]


def _display(unit: np.ndarray) -> np.ndarray:
    """An (H, W, C) image in [0, 1] as shown: grey for one channel, RGB for three, the first channel otherwise."""
    return unit[..., :3] if unit.shape[2] == 3 else unit[..., 0]


def shown_images(report: EvalReport, k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` worst and ``k`` best images by mean IoU (at most ``MAX_SHOWN`` each; no image in both)."""
    k = max(0, min(k, MAX_SHOWN))
    worst = report.worst(k)
    taken = {name for name, _ in worst}
    scored = [(name, value) for name, value in report.images if not math.isnan(value) and name not in taken]
    best = sorted(scored, key=lambda item: -item[1])[:k]
    return worst, best


def checkpoint_overlays(checkpoint: str | os.PathLike[str], names: Iterable[str], data: str | os.PathLike[str] | None = None,
                        split: str | None = None, *, device: str = "auto", tile: int | None = None, overlap: float = 0.25,
                        tta: Sequence[str] | bool = (), amp: bool = True, batch_size: int | None = None) -> dict[str, Panels]:
    """Panels of the named images of a checkpoint evaluation, predicted again through
    ``segkit.engine.inputs.iterate_logits`` with the options ``evaluate_checkpoint`` was given."""
    from segkit.engine.builders import transform_steps
    from segkit.engine.evaluate import _eval_dataset, image_names
    from segkit.engine.inference import load_model
    from segkit.engine.inputs import InferenceItems, InputPipeline, checkpoint_amp, iterate_logits
    from segkit.engine.train import resolve_device

    names = list(names)
    if not names:
        return {}
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    dataset, _ = _eval_dataset(cfg, data, split)
    items = InferenceItems(dataset, InputPipeline(transform_steps(cfg, train=False), cfg.data.ignore_index, cfg.trainer.seed),
                           keep_image=True)
    all_names = image_names(dataset)
    index_of = {name: i for i, name in enumerate(all_names)}
    wanted = [index_of[name] for name in names if name in index_of]
    panels: dict[str, Panels] = {}
    batch_size = batch_size or cfg.trainer.val_batch_size or cfg.trainer.batch_size
    for item, logits in iterate_logits(model, items, dev, indices=wanted, batch_size=batch_size,
                                       tile=tile, overlap=overlap, tta=tta, amp=checkpoint_amp(cfg, amp, dev)):
        assert item.mask is not None and item.unit_image is not None
        pred = logits.argmax(1)[0].cpu().numpy()
        panels[all_names[item.index]] = label_panels(_display(item.unit_image), item.mask.numpy(), pred,
                                                     cfg.model.num_classes, cfg.data.ignore_index)
    return panels


def folder_overlays(names: Iterable[str], pred_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str], num_classes: int, *,
                    images_dir: str | os.PathLike[str] | None = None, ignore_index: int = 255, binary: bool = False,
                    reduce_zero_label: bool = False, pred_suffix: str | None = None,
                    gt_suffix: str | None = None) -> tuple[dict[str, Panels], list[str]]:
    """Panels of the named pairs of a ``--pred/--gt`` evaluation (masks read and decoded as
    ``evaluate_folders`` reads them), over the image of the same stem in ``images_dir`` when
    given; and notes on images that could not be drawn under."""
    from segkit.data.layout import find_files
    from segkit.data.io import IMAGE_EXTENSIONS, read_image, read_mask_pixels, to_unit_float
    from segkit.data.masks import MaskDecoder
    from segkit.engine.folders import _pair

    pairs, _ = _pair(Path(pred_dir), Path(gt_dir), pred_suffix, gt_suffix, skip_missing=True)
    paths = {stem: (pred, gt) for stem, pred, gt in pairs}
    images = find_files(Path(images_dir), IMAGE_EXTENSIONS, None, "image")[0] if images_dir is not None else {}
    gt_decoder = MaskDecoder(ignore_index=ignore_index, binary=binary, reduce_zero_label=reduce_zero_label)
    pred_decoder = MaskDecoder(ignore_index=ignore_index, binary=binary)
    panels: dict[str, Panels] = {}
    notes: list[str] = []
    for name in names:
        if name not in paths:
            continue
        pred_path, gt_path = paths[name]
        gt = gt_decoder.decode(read_mask_pixels(gt_path), gt_path)
        pred = pred_decoder.decode(read_mask_pixels(pred_path), pred_path)
        image = None
        if images_dir is not None:
            if name not in images:
                notes.append(f"no image for {name} in {images_dir}; its masks are drawn alone.")
            else:
                unit = to_unit_float(read_image(images[name]))
                if unit.shape[:2] != gt.shape:
                    notes.append(f"image {images[name]} is {unit.shape[1]}x{unit.shape[0]} but its masks are "
                                 f"{gt.shape[1]}x{gt.shape[0]}; its masks are drawn alone.")
                else:
                    image = _display(np.clip(unit, 0, 1))
        panels[name] = label_panels(image, gt, pred, num_classes, ignore_index)
    return panels, notes


# -- charts ------------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^n) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [float(round(first + i * step, 12)) for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(series: Sequence[dict[str, Any]], *, ylim: tuple[float, float] | None = None, xlabel: str = "",
               ylabel: str = "", width: int = 560, height: int = 260) -> dict[str, Any]:
    """Pixel geometry for the template's ``line_chart`` macro.

    ``series``: dicts with ``label``, ``color``, ``points`` [(x, y), ...] (None y: a gap) and
    optionally ``dashed`` and ``markers``. Returns the SVG paths, ticks and legend.
    """
    left, right, top, bottom = 56, 14, 14, 40
    points = [(x, y) for s in series for x, y in s["points"] if y is not None and math.isfinite(y)]
    if not points:
        return {"empty": True, "width": width, "height": height, "xlabel": xlabel, "ylabel": ylabel}
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = ylim or (min(p[1] for p in points), max(p[1] for p in points))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:  # a constant series: a band around it, at its own scale (a constant lr of 0.1 is not shown from -0.4)
        y0, y1 = (y0 - 0.1 * abs(y0), y1 + 0.1 * abs(y1)) if y0 else (0.0, 0.5)
    elif ylim is None:
        y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def sx(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * (width - left - right), 1)

    def sy(y: float) -> float:
        return round(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom), 1)

    drawn = []
    for s in series:
        path, pen = [], "M"
        for x, y in s["points"]:
            if y is None or not math.isfinite(y):
                pen = "M"
                continue
            path.append(f"{pen}{sx(x)} {sy(y)}")
            pen = "L"
        finite = sum(1 for _, y in s["points"] if y is not None and math.isfinite(y))
        markers = s.get("markers", len(s["points"]) <= 40) or finite == 1  # one point draws no line: show it
        drawn.append({"label": s["label"], "color": s["color"], "dashed": s.get("dashed", False), "d": " ".join(path),
                      "dots": [(sx(x), sy(y)) for x, y in s["points"] if markers and y is not None and math.isfinite(y)]})
    label = "{:g}".format
    integer = all(float(x).is_integer() for x, _ in points)  # epochs, steps: no ticks between them
    return {"empty": False, "width": width, "height": height, "left": left, "right": width - right, "top": top,
            "bottom": height - bottom, "xlabel": xlabel, "ylabel": ylabel, "series": drawn,
            "xticks": [(sx(t), label(t)) for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1 and (t.is_integer() or not integer)],
            "yticks": [(sy(t), label(t)) for t in nice_ticks(y0, y1, 5) if y0 <= t <= y1]}


def class_rows(metrics: dict[str, Any], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: name, colour, IoU, Dice, accuracy, ground-truth pixels and share; ``absent`` (NaN:
    in neither ground truth nor prediction) and ``unseen`` (predicted, never in the ground truth)."""
    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    pixels = matrix.sum(1)
    total = max(int(pixels.sum()), 1)
    colors = hex_colors(len(classes))

    def get(key: str, c: int) -> float | None:
        value = metrics[key][c]
        return None if value is None or math.isnan(value) else float(value)

    return [{"index": c, "name": name, "color": colors[c], "iou": get("iou", c), "dice": get("dice", c),
             "accuracy": get("accuracy", c), "pixels": int(pixels[c]), "share": float(pixels[c] / total),
             "absent": get("iou", c) is None, "unseen": pixels[c] == 0 and get("iou", c) is not None}
            for c, name in enumerate(classes)]


def confusion_view(matrix: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The row-normalised matrix for the heatmap: cell size, and each cell's share (only the
    non-zero cells beyond 40 classes, to keep the page small)."""
    counts = np.asarray(matrix, dtype=np.float64)
    k = counts.shape[0]
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    cell = int(min(48, max(6, 640 // max(k, 1))))
    cells = [(i, j, round(float(share[i, j]), 4)) for i in range(k) for j in range(k) if k <= 40 or counts[i, j] > 0]
    return {"k": k, "cell": cell, "cells": cells, "text": k <= 12}


# -- the evaluation page ----------------------------------------------------------------------------
def _source_rows(report: EvalReport) -> list[tuple[str, str]]:
    source = report.source
    rows = []
    if source.get("mode") == "checkpoint":
        rows += [("evaluated", "a checkpoint on a dataset"), ("checkpoint", str(source.get("checkpoint")))]
        rows += [("data", str(source.get("data")))] + ([("split", str(source["split"]))] if source.get("split") else [])
        rows += [("inference", ", ".join([f"tile {source['tile']}" if source.get("tile") else "whole images"]
                                         + (["flip TTA"] if source.get("tta") else [])))]
    elif source.get("mode") == "folders":
        rows += [("evaluated", "predicted masks against ground truth"), ("predictions", str(source.get("pred"))),
                 ("ground truth", str(source.get("gt")))]
    else:
        rows += [(str(key), str(value)) for key, value in source.items()]
    rows += [("images", f"{len(report.images):,}"), ("classes", str(report.num_classes)),
             ("ignore_index", "none" if report.ignore_index is None else str(report.ignore_index))]
    return rows


def _plain_warnings(report: EvalReport, rows: list[dict[str, Any]], limit: int = 200) -> list[tuple[str, list[str]]]:
    """The report's warnings and what the class table implies, in words: ``(sentence, the files it
    is about)``, at most ``limit`` files listed."""
    said: list[tuple[str, list[str]]] = []
    absent = [r["name"] for r in rows if r["absent"]]
    unseen = [r["name"] for r in rows if r["unseen"]]
    if absent:
        said.append((f"{len(absent)} class{'es' if len(absent) > 1 else ''} never appeared, in the ground truth or in the "
                     f"predictions: {', '.join(absent)}. {'They are' if len(absent) > 1 else 'It is'} left out of mIoU and the "
                     "other means.", []))
    if unseen:
        said.append((f"Predicted but never in the ground truth: {', '.join(unseen)} (IoU 0, counted in mIoU).", []))
    unscored = [name for name, value in report.images if math.isnan(value)]
    if unscored:
        said.append((f"{len(unscored)} image{'s have' if len(unscored) > 1 else ' has'} no counted pixel (all ignore_index) "
                     "and no mean IoU.", unscored[:limit]))
    skipped = [w[len("skipped: "):] for w in report.warnings if w.startswith("skipped: ")]
    if skipped:
        said.append((f"{len(skipped)} file{'s were' if len(skipped) > 1 else ' was'} left unscored (--skip-missing): no "
                     f"partner file" + (f"; the first {limit} are listed" if len(skipped) > limit else "") + ".", skipped[:limit]))
    said += [(w, []) for w in report.warnings if not w.startswith("skipped: ")]
    return said


def _table_rows(report: EvalReport) -> tuple[list[list[Any]], str | None]:
    """Rows ``[order, name, mIoU, pixel accuracy, [classes]]`` of the table, and a note when capped."""
    details = report.details or [{"pixel_accuracy": None, "classes": []}] * len(report.images)
    rows = [[i + 1, name, value, d["pixel_accuracy"], d["classes"]] for i, ((name, value), d) in enumerate(zip(report.images, details))]
    if len(rows) <= TABLE_ROWS:
        return rows, None
    # Scored images lowest first: an unscored one (all pixels ignored) is neither low nor high, and is
    # listed only where the scored ones leave room.
    order = sorted((i for i in range(len(rows)) if not math.isnan(rows[i][2])), key=lambda i: rows[i][2])
    unscored = [i for i in range(len(rows)) if math.isnan(rows[i][2])]
    half = TABLE_ROWS // 2
    if len(order) >= 2 * half:
        kept = order[:half] + order[-half:]
        what = f"the {half:,} with the lowest and the {half:,} with the highest mean IoU" + (
            f"; the {len(unscored):,} without a score (every pixel ignored) are left out" if unscored else "")
    else:
        kept = order + unscored[:TABLE_ROWS - len(order)]
        what = (f"every scored one and {len(kept) - len(order):,} of the {len(unscored):,} without a score "
                "(every pixel ignored)")
    return [rows[i] for i in sorted(kept)], (f"The table lists {len(kept):,} of the {len(rows):,} images: {what} "
                                             "(the JSON report has them all).")


def evaluation_page(report: EvalReport, overlays: dict[str, Panels] | None = None, k: int = 5,
                    notes: Sequence[str] = ()) -> str:
    """The evaluation page of ``report``: ``overlays`` maps image names to their panels (the k
    worst and best, from :func:`checkpoint_overlays` or :func:`folder_overlays`)."""
    from segkit.engine.report import json_safe

    m = report.metrics
    rows = class_rows(m, report.classes)
    absent = [r["name"] for r in rows if r["absent"]]
    counted = report.num_classes - len(absent)
    policy = (f"mIoU is dataset-level: one confusion matrix summed over every counted pixel of the {len(report.images):,} "
              "images gives each class's IoU = TP / (TP + FP + FN), then mIoU is their mean over ")
    if absent:
        policy += (f"the {counted} of {report.num_classes} classes that occur in the ground truth or the predictions; "
                   f"{', '.join(absent)} occur{'s' if len(absent) == 1 else ''} in neither and {'is' if len(absent) == 1 else 'are'} "
                   "left out.")
    else:
        policy += f"all {report.num_classes} classes (each occurs in the ground truth or the predictions)."
    if report.ignore_index is not None:
        policy += f" Ground-truth pixels labelled {report.ignore_index} (ignore_index) are not counted."
    headline = [("mIoU", m["miou"], "dataset-level mean IoU"), ("mDice", m["mdice"], "mean Dice over the same classes"),
                ("pixel accuracy", m["pixel_accuracy"], "correct pixels / counted pixels"),
                ("mean accuracy", m["mean_accuracy"], "mean per-class recall"),
                ("fwIoU", m["fwiou"], "IoU weighted by ground-truth pixel share"),
                ("per-image mean IoU", m["per_image_miou"], "each image's IoU over its own classes, averaged (MONAI)")]
    table, table_note = _table_rows(report)
    worst, best = shown_images(report, k)
    overlays = overlays or {}
    shown_note = None
    if k > MAX_SHOWN:
        shown_note = f"--worst {k} asks for more overlays than a page holds; it shows {MAX_SHOWN} worst and {MAX_SHOWN} best."
    data = json_safe({
        "classes": report.classes, "colors": hex_colors(report.num_classes), "ignore_index": report.ignore_index,
        "num_images": len(report.images), "pixels": report.pixels,
        **{key: m[key] for key in ("miou", "iou", "mdice", "dice", "pixel_accuracy", "mean_accuracy", "accuracy", "fwiou",
                                   "per_image_miou", "confusion_matrix")},
        "images": table, "overlays": sorted(overlays),
    })
    return render("evaluate.html.j2", title="segkit evaluation", report=report, headline=headline, policy=policy,
                  source_rows=_source_rows(report), rows=rows, confusion=confusion_view(m["confusion_matrix"]),
                  warnings=_plain_warnings(report, rows), notes=list(notes), table_note=table_note, shown_note=shown_note,
                  galleries=[("worst", f"The {len(worst)} images with the lowest mean IoU", worst),
                             ("best", f"The {len(best)} images with the highest mean IoU", best)],
                  overlays=overlays, thumb=THUMB, data=data)


def write_evaluation_html(report: EvalReport, path: str | os.PathLike[str], overlays: dict[str, Panels] | None = None,
                          k: int = 5, notes: Sequence[str] = ()) -> Path:
    """Write :func:`evaluation_page` to ``path`` atomically; return the path."""
    return write_page(evaluation_page(report, overlays, k, notes), path)

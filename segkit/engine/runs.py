"""A training run, and runs side by side, as web pages: ``segkit report RUN_DIR``, ``segkit compare A B ...``.

    write_page(run_page("runs/qs"), "runs/qs/report.html")
    compared = [load_compared(p) for p in ("runs/nearest/report.json", "runs/transposed")]
    print(compare_table(compared)); write_page(compare_page(compared), "compare.html")

A run page reads ``metrics.jsonl`` (loss and learning rate per logged step; per epoch the mean
loss, images per second and the validation figures, per-class IoU among them), ``config.yaml``,
``best.pt``'s stored validation metrics and ``predictions.png``. A comparison takes evaluation
reports (``segkit evaluate --out report.json``) or run directories (the validation metrics in
their ``best.pt``); the first one is the baseline the others are measured against.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.engine.html import class_rows, confusion_view, fmt, hex_colors, image_uri, line_chart, render, signed
from segkit.engine.report import json_safe
from segkit.errors import SegkitError

__all__ = ["Compared", "compare_page", "compare_table", "load_compared", "load_run", "run_page"]

RUN_COLORS = ["#2f6db5", "#e08a2c", "#3a9a5b", "#b8437a", "#7a5cc4", "#8c6d31", "#1f9fb0", "#d04a3a"]
HEADLINE = [("miou", "mIoU"), ("mdice", "mDice"), ("pixel_accuracy", "pixel accuracy"), ("mean_accuracy", "mean accuracy"),
            ("fwiou", "fwIoU"), ("per_image_miou", "per-image mean IoU")]
CHANGED = 15  # images whose mean IoU changed most, per compared run
MAX_POINTS = 2000  # logged steps drawn at most (evenly thinned beyond)
EQUAL = 5e-4  # differences smaller than this (what rounds to 0.000) count as equal


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    from segkit.engine.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            state = load_checkpoint(run_dir / name)
            state.pop("model", None), state.pop("optimizer", None)
            return {"file": name, **state}
    return {}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What a run directory of ``segkit train`` holds: the config, the log's records, the best checkpoint's
    validation metrics (``best["metrics"]``) and epoch."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        if not run_dir.exists():
            raise SegkitError(f"{run_dir} does not exist; pass a run directory written by `segkit train`.")
        if run_dir.is_file():
            raise SegkitError(f"{run_dir} is a file; pass the run directory that holds it (written by `segkit train`).")
        if (run_dir / "config.yaml").is_file():
            then = ("continue it with `segkit train ... --resume`" if (run_dir / "last.pt").is_file()
                    else "it saved nothing to resume, so start it again")
            raise SegkitError(f"{run_dir} has no metrics.jsonl yet: the run stopped before its first log point; {then}, "
                              "then report it.")
        raise SegkitError(f"{run_dir} has no metrics.jsonl; pass a run directory written by `segkit train`.")
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a run still writing: its last line may be cut
            continue
    text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    best = _checkpoint(run_dir)
    config = OmegaConf.to_container(OmegaConf.create(text)) if text else best.get("config", {})
    return {"dir": run_dir, "config_text": text, "config": config or {}, "records": records, "best": best}


def _classes(config: dict[str, Any]) -> list[str]:
    model, data = config.get("model", {}), config.get("data", {})
    return [str(c) for c in (data.get("classes") or range(model.get("num_classes") or 0))]


def _epoch_seconds(epochs: list[dict[str, Any]], config: dict[str, Any], world_size: int) -> list[float | None]:
    """Training seconds per epoch: logged, else images per epoch (optimizer steps x batch x accumulation
    x processes; the loader drops the last partial batch) over the logged throughput."""
    trainer = config.get("trainer", {})
    per_step = trainer.get("batch_size", 0) * trainer.get("grad_accum", 1) * world_size
    seconds, previous = [], 0
    for r in epochs:
        if r.get("seconds") is not None:
            seconds.append(r["seconds"])
        elif r.get("images_per_s") and per_step:
            seconds.append((r["step"] - previous) * per_step / r["images_per_s"])
        else:
            seconds.append(None)
        previous = r["step"]
    return seconds


def run_page(run_dir: str | Path) -> str:
    """The page of one training run."""
    run = load_run(run_dir)
    config, records, best = run["config"], run["records"], run["best"]
    task = config.get("task", "segmentation")
    steps = [r for r in records if r.get("kind") == "train"]
    steps = steps[:: -(-len(steps) // MAX_POINTS)] + steps[-1:] if len(steps) > MAX_POINTS else steps  # the page stays small
    epochs = [r for r in records if r.get("kind") == "epoch"]
    classes = _classes(config)
    colors = hex_colors(len(classes))
    metrics = best.get("metrics") or {}
    seconds = _epoch_seconds(epochs, config, int(best.get("world_size") or 1))

    def series(label: str, color: str, key: str, rows: list[dict[str, Any]], x: str = "epoch", **style: Any) -> dict[str, Any]:
        return {"label": label, "color": color, "points": [(r[x], r.get(key)) for r in rows if key in r], **style}

    charts = [line_chart([series("logged step", "#9bb7dd", "loss", steps, "step", markers=False),
                          series("epoch mean", "#2f6db5", "train_loss", epochs, "step")], xlabel="step", ylabel="loss"),
              line_chart([series("learning rate", "#3a9a5b", "lr", steps, "step", markers=False)], xlabel="step", ylabel="learning rate")]
    captions = ["training loss", "learning rate (first parameter group)"]
    if task == "classification":
        charts.append(line_chart([series("training top-1", "#e08a2c", "train_top1_error", epochs, dashed=True),
                                  series("validation top-1", "#2f6db5", "val_top1_error", epochs),
                                  series("validation top-5", "#7a5cc4", "val_top5_error", epochs)],
                                 ylim=(0, 1), xlabel="epoch", ylabel="error"))
        captions.append("top-1 and top-5 error")
        headline = [(label, metrics.get(key)) for key, label in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"),
                                                                  ("mean_class_accuracy", "mean class accuracy"))]
    else:
        charts.append(line_chart([series("mIoU", "#2f6db5", "val_miou", epochs), series("mDice", "#e08a2c", "val_mdice", epochs),
                                  series("per-image mean IoU", "#3a9a5b", "val_per_image_miou", epochs, dashed=True)],
                                 ylim=(0, 1), xlabel="epoch", ylabel="validation"))
        captions.append("validation mIoU, mDice and per-image mean IoU")
        headline = [(label, metrics.get(key)) for key, label in HEADLINE if key in metrics]
    charts.append(line_chart([series("images/s", "#8c6d31", "images_per_s", epochs)], xlabel="epoch", ylabel="images per second"))
    captions.append("training throughput")
    per_class = [e for e in epochs if e.get("val_iou")]
    class_chart = line_chart([{"label": name, "color": colors[c], "points": [(e["epoch"], e["val_iou"][c]) for e in per_class]}
                              for c, name in enumerate(classes)], ylim=(0, 1), xlabel="epoch", ylabel="IoU") if per_class else None
    has_matrix = task != "classification" and "confusion_matrix" in metrics and "iou" in metrics
    prediction = run["dir"] / "predictions.png"
    score_key = "val_top1" if task == "classification" else "val_miou"
    data = {"task": task, "classes": classes, "best_epoch": best.get("epoch"), "best_metrics": metrics,
            "confusion_matrix": metrics.get("confusion_matrix"), "epochs": epochs}
    return render("run.html.j2", title=f"segkit run {run['dir'].name}", run=run, task=task, config=config, headline=headline,
                  charts=list(zip(charts, captions)), class_chart=class_chart,
                  rows=class_rows(metrics, classes) if has_matrix else [],
                  confusion=confusion_view(metrics["confusion_matrix"]) if has_matrix else None, classes=classes,
                  epochs=list(zip(epochs, seconds)), score_key=score_key,
                  total_seconds=sum(s for s in seconds if s is not None),
                  prediction=_embedded_png(prediction) if prediction.is_file() else None, data=json_safe(data))


def _embedded_png(path: Path, limit: int = 3_000_000) -> str:
    """A PNG file as a ``data:`` URI, as it is when small, else as a JPEG thumbnail."""
    raw = path.read_bytes()
    if len(raw) <= limit:
        return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
    import numpy as np
    from PIL import Image

    return image_uri(np.asarray(Image.open(path).convert("RGB")), max_side=1600)


# -- comparisons ------------------------------------------------------------------------------------
@dataclass
class Compared:
    """One side of a comparison: its class metrics and, from a report, every image's mean IoU."""

    name: str
    path: Path
    what: str  # "evaluation report" or "run (validation at best epoch N)"
    classes: list[str]
    metrics: dict[str, Any]
    images: dict[str, float | None] | None
    scoring: dict[str, Any] = field(default_factory=dict)  # how its masks were read: ignore_index, binary, reduce_zero_label


def _scoring(ignore_index: Any, binary: Any, reduce_zero_label: Any) -> dict[str, Any]:
    """The known settings that change what a score counts (None: the side does not say)."""
    known = {"ignore_index": ignore_index, "binary": binary, "reduce_zero_label": reduce_zero_label}
    return {key: value for key, value in known.items() if value is not None}


def load_compared(path: str | Path) -> Compared:
    """A report JSON of ``segkit evaluate --out``, or a run directory (its best.pt's validation metrics)."""
    path = Path(path)
    if path.is_dir():
        state = _checkpoint(path)
        metrics = state.get("metrics") or {}
        if "iou" not in metrics:
            if state.get("config", {}).get("task") == "classification":
                raise SegkitError(f"{path} is a classification run; segkit compare compares segmentation runs and reports "
                                  "(per-class IoU), so pass those.")
            raise SegkitError(f"{path} holds no best.pt or last.pt with validation metrics; pass a run directory of "
                              "`segkit train` (segmentation) or a report JSON of `segkit evaluate --out`.")
        data_cfg = state.get("config", {}).get("data") or {}
        options = data_cfg.get("options") or {}
        scoring = _scoring(data_cfg.get("ignore_index", 255), bool(options.get("binary", False)),
                           bool(options.get("reduce_zero_label", False)))
        return Compared(path.name, path, f"run, validation at epoch {state.get('epoch')} ({state['file']})",
                        _classes(state.get("config", {})) or [str(c) for c in range(len(metrics["iou"]))], metrics, None, scoring)
    if not path.is_file():
        raise SegkitError(f"{path} does not exist; compare report JSONs (segkit evaluate --out) or run directories.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SegkitError(f"{path} is not JSON ({err}); compare report JSONs (segkit evaluate --out) or run directories.") from err
    if not isinstance(data, dict) or not {"iou", "miou", "classes"} <= set(data):
        raise SegkitError(f"{path} is not a report of `segkit evaluate --out` (no miou/iou/classes); compare those or run directories.")
    if not isinstance(data["iou"], list) or not isinstance(data["classes"], list) or len(data["iou"]) != len(data["classes"]):
        raise SegkitError(f"{path} gives {len(data['iou']) if isinstance(data['iou'], list) else 'no list of'} IoU values for "
                          f"{len(data['classes']) if isinstance(data['classes'], list) else 'no list of'} classes; "
                          "compare reports of `segkit evaluate --out`.")
    rows = data.get("images", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r and "miou" in r for r in rows):
        raise SegkitError(f"{path} has image rows without name and miou; compare reports of `segkit evaluate --out`.")
    name = path.parent.name if path.stem == "report" and path.parent.name else path.stem
    images = {row["name"]: row["miou"] for row in rows}
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    scoring = _scoring(data.get("ignore_index"), source.get("binary"), source.get("reduce_zero_label"))
    return Compared(name, path, f"evaluation report, {data.get('num_images', len(images))} images", list(data["classes"]),
                    data, images or None, scoring)


def _value(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _unique_names(compared: list[Compared]) -> list[str]:
    names = [c.name for c in compared]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def comparison(compared: list[Compared]) -> dict[str, Any]:
    """Per class and headline figure, each run's value and its difference from the first; who is best
    per class; the verdicts in words; the images whose mean IoU moved most."""
    if len(compared) < 2:
        raise SegkitError("segkit compare needs at least two reports or run directories.")
    base = compared[0]
    for i, one in enumerate(compared):  # every pair: a side that only numbers its classes matches any names
        for other in compared[i + 1:]:
            if not _same_classes(other.classes, one.classes):
                raise SegkitError(f"{other.path} scores classes {other.classes} but {one.path} scores {one.classes}; "
                                  "compare evaluations of the same classes.")
    numbers = [str(c) for c in range(len(base.classes))]
    base_classes = next((x.classes for x in compared if x.classes != numbers), numbers)  # names where any side has them
    names = _unique_names(compared)
    classes = []
    for c, cls in enumerate(base_classes):
        values = [_value(x.metrics["iou"][c]) for x in compared]
        scored = [v for v in values if v is not None]
        top = max(scored) if scored else None
        winners = [names[i] for i, v in enumerate(values) if v is not None and top is not None and v > top - EQUAL]
        only = [names[i] for i, v in enumerate(values) if v is not None] if 0 < len(scored) < len(values) else []
        classes.append({"name": cls, "values": values, "deltas": [_delta(v, values[0]) for v in values[1:]],
                        "best": winners if len(winners) < len(scored) and not only else [],
                        "only": only})  # scored by some runs only (absent from the others' data): not comparable
    headline = [{"name": label, "values": [_value(x.metrics.get(key)) for x in compared]} for key, label in HEADLINE]
    for row in headline:
        row["deltas"] = [_delta(v, row["values"][0]) for v in row["values"][1:]]
    verdicts = []
    for i in range(1, len(compared)):
        better = [(r["name"], r["deltas"][i - 1]) for r in classes if (r["deltas"][i - 1] or 0) >= EQUAL]
        worse = [(r["name"], r["deltas"][i - 1]) for r in classes if (r["deltas"][i - 1] or 0) <= -EQUAL]
        miou = headline[0]["deltas"][i - 1]
        one_sided = [r["name"] for r in classes if (r["values"][0] is None) != (r["values"][i] is None)]
        equal = sum(1 for r in classes if r["deltas"][i - 1] is not None and abs(r["deltas"][i - 1]) < EQUAL)  # absent from both: not counted
        apart = (f"; not comparable on {', '.join(one_sided)} (scored by one side only, so the mIoUs average different "
                 "classes)") if one_sided else ""
        verdicts.append(f"{names[i]} against {names[0]}: mIoU {signed(miou)}; better on {_listed(better)}; worse on {_listed(worse)}"
                        + (f"; within {EQUAL} on {equal}" if equal else "") + apart + ".")
    for key in ("ignore_index", "binary", "reduce_zero_label"):
        said = {names[i]: c.scoring[key] for i, c in enumerate(compared) if key in c.scoring}
        if len(set(map(str, said.values()))) > 1:  # the differences then mix the scoring with the models
            verdicts.append(f"Scored differently: {key} is " + ", ".join(f"{value} for {n}" for n, value in said.items())
                            + "; their differences are not the models' alone.")
    wins = {n: [r["name"] for r in classes if r["best"] == [n]] for n in names}
    verdicts.append("Best per class: " + "; ".join(f"{n} on {', '.join(w)}" for n, w in wins.items() if w) + "."
                    if any(wins.values()) else "No run is best on any class alone (ties).")
    moved = []
    for i, other in enumerate(compared[1:], start=1):
        if base.images and other.images:
            common = [(n, base.images[n], other.images[n]) for n in base.images if n in other.images
                      and base.images[n] is not None and other.images[n] is not None]
            changed = sorted((row for row in common if abs(row[2] - row[1]) >= EQUAL), key=lambda row: -abs(row[2] - row[1]))
            moved.append({"name": names[i], "images": [(n, a, b, b - a) for n, a, b in changed[:CHANGED]],
                          "common": len(common), "changed": len(changed)})
    return {"names": names, "runs": compared, "colors": run_colors(len(compared)),
            "classes": classes, "headline": headline, "verdicts": verdicts, "moved": moved}


def run_colors(count: int) -> list[str]:
    """``count`` distinct colours: RUN_COLORS, then hues spread by the golden ratio (a ninth run
    took the first run's colour)."""
    import colorsys

    extra = [colorsys.hls_to_rgb((0.07 + 0.618034 * k) % 1.0, 0.42, 0.55) for k in range(max(0, count - len(RUN_COLORS)))]
    return (RUN_COLORS + ["#%02x%02x%02x" % tuple(round(255 * v) for v in rgb) for rgb in extra])[:count]


def _same_classes(a: list[str], b: list[str]) -> bool:
    """Equal lists, or as many classes where one side only numbers them (a run whose config names none)."""
    numbers = [str(c) for c in range(len(a))]
    return a == b or (len(a) == len(b) and numbers in (a, b))


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _listed(items: list[tuple[str, float | None]], limit: int = 6) -> str:
    if not items:
        return "no class"
    items = sorted(items, key=lambda item: -abs(item[1] or 0))
    shown = ", ".join(f"{name} {signed(delta)}" for name, delta in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} class{'es' if len(items) > 1 else ''} ({shown}{more})"


def compare_table(compared: list[Compared]) -> str:
    """The comparison as text: IoU per class and the headline figures, a column per run and one
    difference from the first per other run, then the verdicts."""
    result = comparison(compared)
    names = result["names"]
    head = ["class", *names, *[f"{n} - {names[0]}" for n in names[1:]], "best"]
    rows = [[r["name"], *map(fmt, r["values"]), *map(signed, r["deltas"]), ", ".join(r["best"])] for r in result["classes"]]
    rows.append([""] * len(head))
    rows += [[r["name"], *map(fmt, r["values"]), *map(signed, r["deltas"]), ""] for r in result["headline"]]
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in [head, *rows]]
    return "\n".join(["IoU per class (the first is the baseline):", *lines, "", *result["verdicts"]])


def compare_page(compared: list[Compared]) -> str:
    """The comparison as a page: headline table, per-class differences (chart and table), the images that moved most."""
    result = comparison(compared)
    limit = max([abs(d) for r in result["classes"] for d in r["deltas"] if d is not None] + [1e-6])
    data = json_safe({"names": result["names"], "classes": [r["name"] for r in result["classes"]],
                      "iou": [[r["values"][i] for r in result["classes"]] for i in range(len(compared))],
                      "headline": {r["name"]: r["values"] for r in result["headline"]}})
    return render("compare.html.j2", title="segkit comparison", result=result, delta_limit=limit, data=data)

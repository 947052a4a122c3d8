"""The ``segkit`` command line: argument parsing only.

Each subcommand parses its arguments and hands them to a function in the library. A
``SegkitError`` raised anywhere below is printed as one line on stderr (no traceback) and the
process exits with status 2; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from segkit import __version__
from segkit.errors import SegkitError, check_tile_options

if TYPE_CHECKING:
    from segkit.engine.report import EvalReport

# name -> (help, function that adds the subcommand's arguments, function that runs it).
# Later subcommands (train, evaluate, predict, ...) register themselves here.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def _add_encoders_args(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--encoders", action="store_true", help="list segkit's own encoder names (the default) and say how to list timm's")
    which.add_argument("--classifiers", action="store_true", help="list classifier names instead")
    which.add_argument(
        "--timm", nargs="?", const="", metavar="PATTERN",
        help="list timm's models as tu-NAME encoder names (needs segkit[timm]); PATTERN is a wildcard, e.g. 'convnext*'",
    )
    parser.add_argument("--pretrained", action="store_true", help="with --timm: only models with published weights, one line per tag (tu-NAME.TAG)")


def _run_encoders(args: argparse.Namespace) -> int:
    from segkit.names import CLASSIFIER_NAMES, ENCODER_NAMES  # not segkit.encoders: no torch for a list

    if args.timm is not None:
        from segkit.encoders.timm_encoder import TIMM_PREFIX, list_timm_encoders

        pattern = args.timm[len(TIMM_PREFIX):] if args.timm.startswith(TIMM_PREFIX) else args.timm
        names = list_timm_encoders(pattern, pretrained=args.pretrained)
        if not names:
            raise SegkitError(f"no timm model matches {args.timm!r}; patterns are wildcards, e.g. segkit list --timm 'convnext*'.")
        for name in names:
            print(TIMM_PREFIX + name)
        return 0
    if args.pretrained:
        raise SegkitError("--pretrained goes with --timm: segkit list --timm PATTERN --pretrained.")
    for name in CLASSIFIER_NAMES if args.classifiers else ENCODER_NAMES:
        print(name)
    if args.encoders:  # on stderr, so that the names alone go down a pipe
        print("timm's backbones work too, as tu-NAME (pip install segkit[timm]): segkit list --timm [PATTERN] lists them.", file=sys.stderr)
    return 0


COMMANDS["list"] = ("list the encoder (or classifier, or timm) names segkit knows", _add_encoders_args, _run_encoders)


def _add_check_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="dataset folder (images/ + masks/, or img_dir/ + ann_dir/)")
    parser.add_argument("--split", help="split folder or split-file name; default: every split folder found")
    parser.add_argument("--num-classes", type=int, help="labels must lie in [0, N) or equal --ignore-index")
    parser.add_argument("--ignore-index", type=int, default=255, help="label value that is not a class (default 255)")
    parser.add_argument("--binary", action="store_true", help="masks are 0/255; read 255 as class 1")
    parser.add_argument("--reduce-zero-label", action="store_true", help="0 is unlabelled: 0 -> ignore, v -> v-1")
    parser.add_argument("--image-dir", help="image folder under ROOT (default images, or img_dir)")
    parser.add_argument("--mask-dir", help="mask folder under ROOT (default masks, or ann_dir)")
    parser.add_argument("--image-suffix", help="image file ending that pairs, e.g. _leftImg8bit.png")
    parser.add_argument("--mask-suffix", help="mask file ending that pairs, e.g. _gtFine_labelTrainIds.png")
    parser.add_argument("--split-file", help="text file listing the stems of the split, one a line")
    parser.add_argument(
        "--class-colors", metavar="JSON", help='colour masks: JSON list of [r, g, b] by class, e.g. "[[0,0,0],[255,0,0]]"'
    )
    parser.add_argument("--unknown-color", choices=("error", "ignore"), default="error", help="colour not in the table")


def _run_check_data(args: argparse.Namespace) -> int:
    import json

    from segkit.data import check_folder, list_splits

    colors = None
    if args.class_colors:
        try:
            colors = json.loads(args.class_colors)
        except json.JSONDecodeError as err:
            raise SegkitError(f"--class-colors is not valid JSON ({err}); write e.g. [[0,0,0],[255,0,0]]") from err
    root = Path(args.root)
    if root.is_file():
        raise SegkitError(f"{root} is a file; check-data reads a folder dataset (images/ and masks/ beside each other). "
                          "A COCO annotation file is checked when segkit train or evaluate loads it.")
    splits = [args.split] if args.split else list_splits(args.root, args.image_dir, args.mask_dir) or [None]
    texts, errors, ok = [], [], True
    for split in splits:
        try:
            report = check_folder(
                args.root,
                split,
                num_classes=args.num_classes,
                ignore_index=args.ignore_index,
                binary=args.binary,
                reduce_zero_label=args.reduce_zero_label,
                class_colors=colors,
                unknown_color=args.unknown_color,
                image_dir=args.image_dir,
                mask_dir=args.mask_dir,
                image_suffix=args.image_suffix,
                mask_suffix=args.mask_suffix,
                split_file=args.split_file,
            )
        except SegkitError as err:
            if len(splits) == 1:
                raise
            # One split that cannot be read (no mask folder) does not hide the others' reports.
            texts.append(f"data check: {args.root} (split {split})\n  problem: {err}\n  NOT OK: fix the problem above")
            errors.append(str(err))
            ok = False
            continue
        texts.append(report.format())
        ok = ok and report.ok
    if len(errors) == len(splits) and len(set(errors)) == 1:  # an option every split refuses: one error, not a report per split
        raise SegkitError(errors[0])
    print("\n\n".join(texts))
    return 0 if ok else 1


COMMANDS["check-data"] = (
    "check a folder dataset: pairing, sizes, label values, class histogram; lists every problem",
    _add_check_data_args,
    _run_check_data,
)


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    parser.add_argument("--out", required=True, help="run directory (config, checkpoints, metrics log, plots)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (resume later with --resume)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="overrides trainer.device")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # default=[]: argparse calls an optional nargs="*" positional "required" in its usage error otherwise.
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. trainer.epochs=5")


def _run_train(args: argparse.Namespace) -> int:
    from segkit.config import load_config  # no torch: a bad argument or config key answers at once

    if args.max_steps is not None and args.max_steps < 1:
        raise SegkitError(f"--max-steps must be a positive number of steps; got {args.max_steps}.")
    overrides = list(args.overrides) + ([f"trainer.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    from segkit.engine.train import train

    result = train(cfg, args.out, max_steps=args.max_steps, resume=args.resume, progress=not args.quiet)
    if result.best_miou is not None and os.environ.get("RANK", "0") == "0":  # under torchrun: global rank 0 alone, which holds the run's figure
        print(f"best mIoU: {result.best_miou:.4f} ({args.out}/best.pt)")
    return 130 if result.interrupted else 0  # the shell's code for "stopped by Ctrl-C"


COMMANDS["train"] = ("train a model from a YAML config", _add_train_args, _run_train)


_OVERLAP = 0.25  # --overlap's default: any other value beside --pred/--gt is refused


def _add_inference_args(parser: argparse.ArgumentParser, workers_help: str = "data-loading workers") -> None:
    group = parser.add_argument_group("inference (checkpoint modes)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto: CUDA when available")
    group.add_argument("--tile", type=int, help="sliding window of TILE x TILE pixels (default: whole image at once)")
    group.add_argument("--overlap", type=float, default=_OVERLAP, help=f"sliding-window overlap, a fraction of the tile (default {_OVERLAP})")
    group.add_argument("--tta", action="store_true", help="average over horizontal, vertical and both flips")
    group.add_argument("--batch-size", type=int, help="images (or tiles) per forward pass (default: the config's)")
    group.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    group.add_argument("--workers", type=int, help=workers_help)


def _check_counts(args: argparse.Namespace) -> None:
    for flag, least in (("batch_size", 1), ("workers", 0), ("worst", 0), ("num_classes", 1)):
        value = getattr(args, flag, None)
        if value is not None and value < least:
            raise SegkitError(f"--{flag.replace('_', '-')} must be at least {least}; got {value}.")


def _add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("a model on a dataset")
    model.add_argument("--checkpoint", help="a run checkpoint (best.pt / last.pt) or run directory, whose config rebuilds model and normalisation; or a YAML config naming its weights (model.weights, e.g. coco_with_voc_labels_v1)")
    model.add_argument("--data", help="folder dataset (images/ + masks/); default: the config's data")
    model.add_argument("--split", help="split folder or split file (default: the config's val split if present, else the whole folder); "
                       "for a COCO checkpoint without --data: val (default) or train")
    masks = parser.add_argument_group("predicted masks against ground truth (no model)")
    masks.add_argument("--pred", help="folder of predicted masks (class indices), paired with --gt by file stem")
    masks.add_argument("--gt", help="folder of ground-truth masks")
    masks.add_argument("--num-classes", type=int, help="number of classes; labels lie in [0, N)")
    masks.add_argument("--ignore-index", type=int, help="ground-truth label that is not scored (default 255)")
    masks.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per class, in label order")
    masks.add_argument("--binary", action="store_true", help="masks are 0/255; read 255 as class 1 (both folders)")
    masks.add_argument("--reduce-zero-label", action="store_true", help="ground truth 0 is unlabelled: 0 -> ignore, v -> v-1")
    masks.add_argument("--pred-suffix", help="prediction file ending that pairs, e.g. _pred.png")
    masks.add_argument("--gt-suffix", help="ground-truth file ending that pairs, e.g. _mask.png")
    masks.add_argument("--skip-missing", action="store_true", help="score the pairs there are; list unpaired files as warnings")
    masks.add_argument("--images", metavar="DIR", help="with --html: images (paired by stem) to draw the masks over; default: masks alone")
    parser.add_argument("--out", help="write the report as JSON here, with <stem>_confusion.png and <stem>_worst.png beside it")
    parser.add_argument("--html", metavar="PATH", help="write the report as one self-contained web page (charts, tables, the --worst K "
                        "worst and best images)")
    parser.add_argument("--worst", type=int, default=5, metavar="K", help="list (and draw) the K images with the lowest IoU (default 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_inference_args(parser, "data-loading (or, with --pred, decoding) workers")


def _run_evaluate(args: argparse.Namespace) -> int:
    _check_counts(args)
    check_tile_options(args.tile, args.overlap, args.batch_size)
    check_output_file(args.out, "--out", replaces=(lambda p: p.suffix.lower() == ".json", "a JSON report"),  # before the work
                      inputs=[args.pred, args.gt, args.images, _file(args.checkpoint)])
    check_output_file(args.html, "--html", "report.html")
    if args.out and args.html and Path(args.out).resolve() == Path(args.html).resolve():
        raise SegkitError(f"--out and --html are both {args.out}; give the JSON report and the web page two names.")
    if args.images and not args.checkpoint and not Path(args.images).is_dir():
        raise SegkitError(f"--images {args.images} is not a folder; give the folder of the images the masks were made for.")
    if args.images and not args.checkpoint and not args.html:
        raise SegkitError("--images only serves the web page's pictures; add --html PATH, or leave --images out.")
    figure = Path(args.out).with_name(f"{Path(args.out).stem}_worst.png") if args.out and args.worst > 0 else None
    if args.checkpoint:
        if args.pred or args.gt:
            raise SegkitError("give either --checkpoint (a model on a dataset) or --pred and --gt (two mask folders), not both.")
        if args.images:
            raise SegkitError("--images goes with --pred/--gt; with --checkpoint the page draws the dataset's own images.")
        _refuse_other_modes_flags(args, checkpoint=True)
        from segkit.engine.evaluate import evaluate_checkpoint

        report = evaluate_checkpoint(
            args.checkpoint, args.data, args.split, device=args.device, tile=args.tile, overlap=args.overlap,
            tta=args.tta, amp=not args.no_amp, batch_size=args.batch_size, workers=args.workers,
            worst=args.worst, worst_figure=figure, progress=not args.quiet,
        )
    elif args.pred or args.gt:
        missing = [flag for flag, value in (("--pred", args.pred), ("--gt", args.gt), ("--num-classes", args.num_classes)) if value is None]
        if missing:
            raise SegkitError(f"evaluating mask folders needs {', '.join(missing)}; e.g. --pred preds/ --gt masks/ --num-classes 3.")
        _refuse_other_modes_flags(args, checkpoint=False)
        if args.ignore_index is None:
            args.ignore_index = 255
        from segkit.engine.evaluate import evaluate_folders

        report = evaluate_folders(
            args.pred, args.gt, args.num_classes, ignore_index=args.ignore_index, class_names=args.class_names,
            skip_missing=args.skip_missing, binary=args.binary, reduce_zero_label=args.reduce_zero_label,
            pred_suffix=args.pred_suffix, gt_suffix=args.gt_suffix, workers=args.workers,
            worst=args.worst, worst_figure=figure,
        )
    else:
        raise SegkitError("segkit evaluate needs --checkpoint CKPT (with --data DIR) or --pred DIR --gt DIR --num-classes N.")
    from segkit.engine.report import format_report, write_report

    print(format_report(report, args.worst))
    if args.out:
        written = write_report(report, args.out, args.worst)
        print(f"wrote {', '.join(str(p) for p in written + ([figure] if figure and figure.exists() else []))}")
    if args.html:
        print(f"wrote {_write_evaluation_html(args, report)}")
    return 0


def _refuse_other_modes_flags(args: argparse.Namespace, checkpoint: bool) -> None:
    """A SegkitError for flags of the other evaluate mode, which would be ignored in silence (an
    --ignore-index 2 beside --checkpoint still scored class 2)."""
    if checkpoint:
        given = [flag for flag, value in (("--num-classes", args.num_classes is not None), ("--ignore-index", args.ignore_index is not None),
                                          ("--class-names", args.class_names), ("--binary", args.binary),
                                          ("--reduce-zero-label", args.reduce_zero_label), ("--pred-suffix", args.pred_suffix),
                                          ("--gt-suffix", args.gt_suffix), ("--skip-missing", args.skip_missing)) if value]
        if given:
            raise SegkitError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --pred/--gt; with --checkpoint the checkpoint's "
                              "config reads the masks (model.num_classes, data.ignore_index, data.classes, data.options such as "
                              "binary, reduce_zero_label, mask_suffix): leave the flag out, or write the masks with segkit predict "
                              "and score them with --pred/--gt.")
        return
    given = [flag for flag, value in (("--data", args.data), ("--split", args.split), ("--tile", args.tile is not None),
                                      ("--overlap", args.overlap != _OVERLAP), ("--tta", args.tta),
                                      ("--batch-size", args.batch_size is not None), ("--no-amp", args.no_amp),
                                      ("--device", args.device != "auto")) if value]
    if given:
        raise SegkitError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --checkpoint (a model to run); --pred/--gt "
                          "score masks already written: leave the flag out.")


def _write_evaluation_html(args: argparse.Namespace, report: EvalReport) -> Path:
    """The page of ``segkit evaluate --html``, with the worst and best images drawn as the mode reads them."""
    from segkit.engine import html

    worst, best = html.shown_images(report, args.worst)
    names, notes = [name for name, _ in worst + best], []
    if args.checkpoint:
        overlays = html.checkpoint_overlays(args.checkpoint, names, args.data, args.split, device=args.device, tile=args.tile,
                                            overlap=args.overlap, tta=args.tta, amp=not args.no_amp, batch_size=args.batch_size)
    else:
        overlays, notes = html.folder_overlays(names, args.pred, args.gt, args.num_classes, images_dir=args.images,
                                               ignore_index=args.ignore_index, binary=args.binary,
                                               reduce_zero_label=args.reduce_zero_label, pred_suffix=args.pred_suffix,
                                               gt_suffix=args.gt_suffix)
    return html.write_evaluation_html(report, args.html, overlays, args.worst, notes)


COMMANDS["evaluate"] = ("mIoU and friends: a checkpoint on a dataset, or predicted masks against ground truth",
                        _add_evaluate_args, _run_evaluate)


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory of segkit train (metrics.jsonl, config.yaml, best.pt)")
    parser.add_argument("--html", metavar="PATH", help="the page to write (default RUN_DIR/report.html)")


def _run_report(args: argparse.Namespace) -> int:
    from segkit.engine.html import write_page
    from segkit.engine.runs import run_page

    check_output_file(args.html, "--html", "report.html")
    print(f"wrote {write_page(run_page(args.run), args.html or Path(args.run) / 'report.html')}")
    return 0


COMMANDS["report"] = ("a training run as one web page: config, curves, per-class IoU, predictions, throughput",
                      _add_report_args, _run_report)


def _add_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN", help="report JSONs of segkit evaluate --out, or run directories; the first is the baseline")
    parser.add_argument("--html", metavar="PATH", help="also write the comparison as one web page")


def _run_compare(args: argparse.Namespace) -> int:
    from segkit.engine.html import write_page
    from segkit.engine.runs import compare_page, compare_table, load_compared

    check_output_file(args.html, "--html", "compare.html")
    compared = [load_compared(path) for path in args.inputs]
    print(compare_table(compared))
    if args.html:
        print(f"wrote {write_page(compare_page(compared), args.html)}")
    return 0


COMMANDS["compare"] = ("per-class differences between evaluation reports or runs, and which is better where",
                       _add_compare_args, _run_compare)


def _add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run checkpoint (best.pt / last.pt), a run directory, or a YAML config naming its weights (model.weights)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for masks/ (palette PNGs of class indices) and overlays/")
    parser.add_argument("--no-overlays", action="store_true", help="write the masks only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_inference_args(parser)


def _run_predict(args: argparse.Namespace) -> int:
    _check_counts(args)
    check_tile_options(args.tile, args.overlap, args.batch_size)  # before torch is imported
    from segkit.engine.predict import predict_folder

    written = predict_folder(
        args.checkpoint, args.input, args.output, device=args.device, tile=args.tile, overlap=args.overlap,
        tta=args.tta, amp=not args.no_amp, batch_size=args.batch_size, workers=args.workers,
        overlays=not args.no_overlays, progress=not args.quiet,
    )
    print(f"wrote {len(written)} mask{'s' if len(written) != 1 else ''} to {args.output}")
    return 0


COMMANDS["predict"] = ("write predicted masks (palette PNGs) and overlays for a folder of images", _add_predict_args, _run_predict)


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run checkpoint (best.pt / last.pt)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="onnx or torchscript")
    parser.add_argument("--out", help="output file (default: beside the checkpoint, its suffix replaced by .onnx / .torchscript.pt: "
                        "best.pt -> best.onnx, best.torchscript.pt)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example input size (default 256 256; 188 188 for unet_original with valid convolutions)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")


def _run_export(args: argparse.Namespace) -> int:
    if args.size is not None and any(side < 1 for side in args.size):  # before torch is imported
        raise SegkitError(f"--size must be two positive numbers (height width); got {' '.join(map(str, args.size))}.")
    example = "model.onnx" if args.format == "onnx" else "model.torchscript.pt"
    check_output_file(args.out, "--out", example, inputs=[_file(args.checkpoint)],
                      replaces=(lambda p: p.suffix.lower() == ".onnx", "an ONNX model") if args.format == "onnx"
                      else (_is_torchscript, "a TorchScript model"))
    from segkit.engine.export import export_model

    result = export_model(args.checkpoint, args.format, args.out, size=args.size, opset=args.opset)
    print(result.summary())
    if not result.ok:
        print(f"segkit: the exported model differs from PyTorch by {result.max_abs_diff:.3g}", file=sys.stderr)
    return 0 if result.ok else 1


COMMANDS["export"] = ("export a checkpoint's model to ONNX or TorchScript, checked against PyTorch", _add_export_args, _run_export)


def _add_weights_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "fetch"), help="list: names, variants, ImageNet top-1 and cache state; fetch: download into the cache")
    parser.add_argument("name", nargs="?", help="architecture, e.g. resnet50 (list: default all; fetch: required)")
    parser.add_argument("--variant", default="imagenet", help="fetch: imagenet (the default weights) or a variant such as imagenet1k_v2")


def _run_weights(args: argparse.Namespace) -> int:
    if args.action == "fetch" and not args.name:  # before torch is imported
        raise SegkitError("segkit weights fetch needs an architecture name, e.g. segkit weights fetch resnet50; segkit weights list shows them.")
    from segkit.encoders.weights import (PublishedWeights, _why_unpublished, fetch_weights, lookup_published, published_model_names,
                                         published_weights, weights_architectures)

    if args.name and args.name not in (*weights_architectures(), *published_model_names()):
        # The library's message advises weights=None in Python; here the list is the help.
        raise SegkitError(f"{_why_unpublished(args.name)}; `segkit weights list` shows the names that have published weights.")
    if args.action == "fetch":
        weights = lookup_published(args.name, args.variant)
        was_cached = weights.cached
        path = fetch_weights(weights)
        print(f"{args.name} {weights.variant}: {path}" + (" (already cached)" if was_cached else ""))
        return 0
    import math

    def score(w: PublishedWeights) -> str:  # what torchvision publishes for it; blank where it publishes none (or NaN)
        if w.acc1 is not None and math.isfinite(w.acc1):
            return f"ImageNet top-1 {w.acc1:.2f}"
        return f"COCO-VOC mIoU {w.miou:.1f}" if w.miou is not None and math.isfinite(w.miou) else ""

    rows = [("name", "variant", "default", "published score", "cached", "file")]
    # segkit's architectures (encoder_weights="imagenet"), then torchvision's whole segmentation models (weights=...)
    for arch in [args.name] if args.name else [*weights_architectures(), *published_model_names()]:
        for w in published_weights(arch):
            rows.append((arch, w.variant, "yes" if w.default else "", score(w), "yes" if w.cached else "no", str(w.path)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


COMMANDS["weights"] = ("published ImageNet weights by name: list them, or fetch them into torch's hub cache", _add_weights_args, _run_weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segkit",
        description="Semantic segmentation with classic backbones: train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"segkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _setup_logging() -> None:
    """segkit's info lines (e.g. a re-initialised head) on stderr, once; OpenCV's own log lines off."""
    # OpenCV writes its decoders' complaints straight to stderr (a broken PNG: a line or two before
    # segkit's own one-line error naming the file). Quiet unless the user set a level; it only
    # takes effect where cv2 is not imported yet, as in the segkit command.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    logger = logging.getLogger("segkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    # KEY=VALUE overrides may stand anywhere after the config, also after options.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][2](args)
    except SegkitError as err:
        print(f"segkit: error: {user_message(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`segkit check-data ... | head`): no traceback, exit 1 as Python's docs advise
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes stdout
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C in training ("stop at once"), or one in any other command
        print("segkit: interrupted", file=sys.stderr)
        return 130


def check_output_file(value: str | None, flag: str, example: str = "report.json", *,
                      replaces: tuple[Callable[[Path], bool], str] | None = None, inputs: Sequence[str | None] = ()) -> None:
    """A SegkitError when the file ``value`` cannot be written: it is a directory, or a file stands
    where a folder must. Reports and exports never replace an input: ``--html`` refuses a file that
    is not a web page (a run's metrics.jsonl, a compared report, a mask), ``replaces`` (a test and
    what it accepts) says which existing files another flag may overwrite (``--out``: a JSON
    report, an exported model), and
    ``value`` may neither be one of ``inputs`` nor lie inside one of those folders (the figures
    written beside a report would join the masks being scored)."""
    if not value:
        return
    path = Path(value)
    for given in filter(None, inputs):
        source = Path(given).resolve()
        if path.resolve() == source or (source.is_dir() and source in path.resolve().parents):
            raise SegkitError(f"{flag} {path} is {'inside ' if source.is_dir() else ''}the input {given}; write it elsewhere.")
    if replaces is not None and path.is_file() and not replaces[0](path):
        raise SegkitError(f"{flag} {path} would replace a file that is not {replaces[1]}; give a new file name (e.g. {example}).")
    if path.is_dir():
        raise SegkitError(f"{flag} {path} is a directory; give a file name (e.g. {path / example}).")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SegkitError(f"{flag} {path} lies under {parent}, which is a file; give a path in a folder.")
            break
    if flag == "--html" and path.exists() and path.suffix.lower() not in (".html", ".htm"):
        raise SegkitError(f"--html {path} would replace a file that is not a web page; give a new .html file name.")


def _file(value: str | None) -> str | None:
    """``value`` when it names a file (a checkpoint), None for a run directory: a report may go inside a run."""
    return value if value and Path(value).is_file() else None


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/``), not a checkpoint or another file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def user_message(err: SegkitError) -> str:
    """The error's own sentence. A SegkitError raised in a DataLoader worker reaches the main process
    re-raised by torch with the worker's traceback pasted into its message: keep only the sentence."""
    text = str(err)
    marker = f"{SegkitError.__module__}.{SegkitError.__qualname__}: "
    if "Original Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip()
    return text


if __name__ == "__main__":
    raise SystemExit(main())

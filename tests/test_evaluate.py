"""segkit evaluate: a checkpoint on a dataset, and mask folders, against independent numpy computations."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _model_helpers import fit_to_intensity_thirds
from PIL import Image

from segkit import SegkitError
from segkit.cli import main
from segkit.config import config_from_dict, to_dict
from segkit.engine.builders import build_model_from_config
from segkit.engine.checkpoint import save_checkpoint
from segkit.engine.evaluate import evaluate_checkpoint, evaluate_folders
from segkit.engine.report import format_report
from segkit.metrics import ConfusionMatrix

K = 4


# -- independent reference ---------------------------------------------------------------------
def reference(pairs: list[tuple[np.ndarray, np.ndarray]], k: int, ignore: int = 255) -> dict:
    """Metrics of (pred, gt) label arrays by numpy only."""
    total = np.zeros((k, k), np.int64)
    per_image = []
    for pred, gt in pairs:
        keep = gt != ignore
        m = np.bincount(gt[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)
        total += m
        tp, g, p = np.diag(m), m.sum(1), m.sum(0)
        present = g > 0
        per_image.append(np.mean(tp[present] / (g + p - tp)[present]) if present.any() else np.nan)
    tp, g, p = np.diag(total).astype(float), total.sum(1), total.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (g + p - tp)
        dice = 2 * tp / (g + p)
        acc = tp / g
    return {"matrix": total, "iou": iou, "miou": np.nanmean(iou), "dice": dice, "mdice": np.nanmean(dice),
            "accuracy": acc, "mean_accuracy": np.nanmean(acc), "pixel_accuracy": tp.sum() / total.sum(),
            "fwiou": np.nansum(g / g.sum() * iou), "per_image": per_image, "per_image_miou": np.nanmean(per_image)}


def assert_matches(metrics: dict, ref: dict) -> None:
    assert metrics["confusion_matrix"] == ref["matrix"].tolist()
    for key in ("iou", "dice", "accuracy"):
        np.testing.assert_allclose(np.array(metrics[key], dtype=float), ref[key], rtol=1e-12, equal_nan=True)
    for key in ("miou", "mdice", "mean_accuracy", "pixel_accuracy", "fwiou", "per_image_miou"):
        assert metrics[key] == pytest.approx(ref[key], rel=1e-12), key


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:  # the indices are the labels; the colours are only for viewing
        image = Image.fromarray(array.astype(np.uint8), mode="P")
        image.putpalette([v for c in range(256) for v in (c * 7 % 256, c * 13 % 256, c * 29 % 256)])
    image.save(path)
    return path


def make_mask_folders(root: Path, n: int = 6, size: tuple[int, int] = (24, 40), seed: int = 0, ignore: int = 255):
    """pred/ and gt/ folders with blobby labels, ignore pixels, a nested folder, palette and 16-bit files."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        gt = rng.integers(0, K, size).astype(np.uint8)
        gt[rng.random(size) < 0.1] = ignore
        pred = np.where(rng.random(size) < 0.7, np.minimum(gt, K - 1), rng.integers(0, K, size)).astype(np.uint8)
        stem = f"sub/img{i}" if i == 2 else f"img{i}"
        gt_file = root / "gt" / f"{stem}.png"
        if i == 3:  # a 16-bit ground truth
            save(gt_file, gt.astype(np.uint16))
        else:
            save(gt_file, gt)
        save(root / "pred" / f"{stem}.png", pred, palette=i == 1)
        pairs.append((stem, pred, gt))
    return pairs


# -- mask folders ------------------------------------------------------------------------------
@pytest.mark.parametrize(("workers", "ignore"), [(1, 255), (3, 255), (2, 0)])
def test_folder_report_matches_numpy(tmp_path, workers, ignore):
    pairs = make_mask_folders(tmp_path, ignore=ignore)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", K, workers=workers, ignore_index=ignore)
    ref = reference([(p, g) for _, p, g in pairs], K, ignore)
    assert_matches(report.metrics, ref)
    assert [name for name, _ in report.images] == sorted(stem for stem, _, _ in pairs)
    by_name = dict(report.images)
    for (stem, _, _), value in zip(pairs, ref["per_image"]):
        assert by_name[stem] == pytest.approx(value, rel=1e-12)
    worst = report.worst(2)
    assert [v for _, v in worst] == sorted(ref["per_image"])[:2]
    assert report.pixels == ref["matrix"].sum(1).tolist()


def test_per_image_figures_stay_with_their_image_across_batches(tmp_path):
    """Per-image figures are computed a batch of images at once (256 here): 300 pairs cross a batch
    end, and each image keeps its own mean IoU, pixel accuracy and ground-truth classes."""
    rng = np.random.default_rng(7)
    expected = {}
    for i in range(300):
        gt = rng.integers(0, K, (6, 7)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < i / 300, rng.integers(0, K, gt.shape), np.minimum(gt, K - 1)).astype(np.uint8)
        save(tmp_path / "gt" / f"m{i:03d}.png", gt)
        save(tmp_path / "pred" / f"m{i:03d}.png", pred)
        counted = gt != 255
        expected[f"m{i:03d}"] = (reference([(pred, gt)], K)["per_image"][0], float(np.mean(pred[counted] == gt[counted])),
                                 sorted(set(gt[counted].tolist())))
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", K, workers=2)
    assert [name for name, _ in report.images] == sorted(expected)
    for (name, miou), detail in zip(report.images, report.details):
        assert miou == pytest.approx(expected[name][0], rel=1e-12), name
        assert detail["pixel_accuracy"] == pytest.approx(expected[name][1], rel=1e-12), name
        assert detail["classes"] == expected[name][2], name


def test_json_keeps_compute_keys_and_writes_nan_as_null(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    save(tmp_path / "gt" / "a.png", gt)
    save(tmp_path / "pred" / "a.png", gt)  # class 2 absent from both: NaN
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3, class_names=["bg", "cell", "other"])
    data = report.to_dict()
    for key in ("miou", "iou", "mdice", "dice", "pixel_accuracy", "mean_accuracy", "accuracy", "fwiou", "per_image_miou", "confusion_matrix"):
        assert key in data
    assert data["iou"] == [1.0, 1.0, None] and data["miou"] == 1.0
    assert data["classes"] == ["bg", "cell", "other"] and data["pixels"] == [32, 32, 0]
    json.dumps(data, allow_nan=False)  # strict JSON
    text = format_report(report)
    assert "mIoU: 1.000" in text.splitlines() and "other" in text


def test_cli_folders_writes_report_png_and_worst(tmp_path, capsys):
    pairs = make_mask_folders(tmp_path)
    out = tmp_path / "out" / "report.json"
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", str(K),
                 "--out", str(out), "--worst", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    ref = reference([(p, g) for _, p, g in pairs], K)
    assert re.search(r"^mIoU: \d\.\d{3}$", printed, re.M).group(0) == f"mIoU: {ref['miou']:.3f}"
    data = json.loads(out.read_text())
    assert data["miou"] == pytest.approx(ref["miou"]) and len(data["worst_images"]) == 2
    for name in ("report_confusion.png", "report_worst.png"):
        assert Image.open(out.parent / name).size[0] > 100


def test_dollar_signs_in_file_and_class_names_are_text_in_the_pictures(tmp_path, capsys):
    """matplotlib reads $...$ as maths: an unknown symbol raised mid-report (no JSON written)."""
    rng = np.random.default_rng(0)
    for stem in ("a", r"price_$\foo$"):
        gt = rng.integers(0, 2, (17, 23)).astype(np.uint8)
        save(tmp_path / "gt" / f"{stem}.png", gt)
        save(tmp_path / "pred" / f"{stem}.png", 1 - gt)
    out = tmp_path / "out" / "report.json"
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "2",
                 "--class-names", "bg", r"cost $\foo$", "--out", str(out), "--worst", "2"])
    assert code == 0, capsys.readouterr().err
    for name in ("report.json", "report_confusion.png", "report_worst.png"):
        assert (out.parent / name).stat().st_size


def test_binary_and_reduce_zero_label(tmp_path):
    gt = np.array([[0, 255], [255, 0]], np.uint8)
    save(tmp_path / "b" / "gt" / "a.png", gt)
    save(tmp_path / "b" / "pred" / "a.png", np.array([[0, 255], [0, 0]], np.uint8))
    report = evaluate_folders(tmp_path / "b" / "pred", tmp_path / "b" / "gt", 2, binary=True, ignore_index=254)
    assert report.metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    save(tmp_path / "z" / "gt" / "a.png", np.array([[0, 1], [2, 2]], np.uint8))  # 0 unlabelled, classes 1, 2
    save(tmp_path / "z" / "pred" / "a.png", np.array([[1, 0], [1, 0]], np.uint8))
    report = evaluate_folders(tmp_path / "z" / "pred", tmp_path / "z" / "gt", 2, reduce_zero_label=True)
    assert report.metrics["confusion_matrix"] == [[1, 0], [1, 1]]  # (0,0) ignored


def bad_case(root: Path, case: str) -> str:
    """Write a folder pair with one defect; return a regex the error must match (it names the file)."""
    ok = np.zeros((6, 8), np.uint8)
    for stem in ("a", "b"):
        save(root / "gt" / f"{stem}.png", ok)
        save(root / "pred" / f"{stem}.png", ok)
    if case == "size":
        save(root / "pred" / "b.png", np.zeros((6, 9), np.uint8))
        return r"prediction .*b\.png is 9x6 but its ground truth .*b\.png is 8x6"
    if case == "corrupt":
        (root / "pred" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return r"pred/b\.png"
    if case == "truncated":
        data = (root / "gt" / "b.png").read_bytes()
        big = np.random.default_rng(0).integers(0, 3, (64, 64)).astype(np.uint8)
        save(root / "gt" / "b.png", big)
        save(root / "pred" / "b.png", big)
        data = (root / "gt" / "b.png").read_bytes()
        (root / "gt" / "b.png").write_bytes(data[: len(data) // 2])
        return r"gt/b\.png"
    if case == "gt_label":
        save(root / "gt" / "b.png", np.full((6, 8), 7, np.uint8))
        return r"mask .*gt/b\.png holds value 7 \(48 pixels\)"
    if case == "pred_label":
        save(root / "pred" / "b.png", np.full((6, 8), 3, np.uint8))
        return r"prediction .*pred/b\.png holds label\(s\) 3 \(48 pixels\)"
    if case == "missing_pred":
        (root / "pred" / "b.png").unlink()
        return r"ground truth .*gt/b\.png has no prediction .*--skip-missing"
    if case == "missing_gt":
        save(root / "pred" / "c.png", ok)
        return r"prediction .*pred/c\.png has no ground truth"
    if case == "shared_stem":
        Image.fromarray(ok).save(root / "gt" / "a.bmp")
        return r"gt/a\.(bmp|png) and .*gt/a\.(png|bmp) share the stem"
    if case == "rgb":
        save(root / "gt" / "b.png", np.zeros((6, 8, 3), np.uint8))
        return r"mask .*gt/b\.png is a colour \(RGB\) image"
    if case == "empty_gt":
        for path in (root / "gt").iterdir():
            path.unlink()
        return r"no ground-truth masks found in .*gt"
    if case == "no_folder":
        return r"prediction folder .*nowhere does not exist"
    raise AssertionError(case)


BAD_CASES = ["size", "corrupt", "truncated", "gt_label", "pred_label", "missing_pred", "missing_gt", "shared_stem", "rgb",
             "empty_gt", "no_folder"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_folders_name_the_file(tmp_path, case):
    pattern = bad_case(tmp_path, case)
    pred = tmp_path / ("nowhere" if case == "no_folder" else "pred")
    with pytest.raises(SegkitError, match=pattern):
        evaluate_folders(pred, tmp_path / "gt", 3, workers=2)


def test_labels_one_past_the_classes_suggest_the_commands_options(tmp_path, capsys):
    """ADE20K-style ground truth (1..K, 0 unlabelled) scored with --num-classes K: the fix is an
    option of this command, not a config key."""
    rng = np.random.default_rng(0)
    gt = rng.integers(1, K + 1, (9, 13)).astype(np.uint8)
    save(tmp_path / "gt" / "m.png", gt)
    save(tmp_path / "pred" / "m.png", gt - 1)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", str(K)]) == 2
    err = capsys.readouterr().err
    assert f"pass --reduce-zero-label, if 0 is a real class pass --num-classes {K + 1}" in err and "data.options" not in err
    save(tmp_path / "gt" / "m.png", gt + 1)  # 2..K+1: one past the classes even with the flag given
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", str(K),
                 "--reduce-zero-label"]) == 2
    err = capsys.readouterr().err
    assert "pass --reduce-zero-label" not in err and f"the file holds {K + 1})" in err


@pytest.mark.parametrize("extra", [["--ignore-index", "2"], ["--ignore-index", "255"], ["--num-classes", "2", "--binary"],
                                   ["--gt-suffix", "_mask.png"], ["--skip-missing"]])
def test_mask_folder_flags_beside_a_checkpoint_are_refused(tmp_path, capsys, extra):
    """They were ignored in silence: --ignore-index 2 beside --checkpoint still scored class 2."""
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with --checkpoint the checkpoint's config reads the masks" in err
    assert err.startswith(f"segkit: error: {', '.join(f for f in extra if f.startswith('--'))} go")


@pytest.mark.parametrize("extra", [["--tile", "64"], ["--tta"], ["--data", "d"], ["--split", "val"], ["--device", "cpu"],
                                   ["--overlap", "0.5", "--no-amp"]])
def test_checkpoint_flags_beside_mask_folders_are_refused(tmp_path, capsys, extra):
    pairs = make_mask_folders(tmp_path)
    assert pairs
    folders = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", str(K)]
    assert main(["evaluate", *folders, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"go(es)? with --checkpoint \(a model to run\)", err), err
    assert main(["evaluate", *folders, "--workers", "1", "--overlap", "0.25"]) == 0  # shared flags, and defaults spelt out


def test_bad_folder_on_the_command_line_is_one_line(tmp_path, capsys):
    bad_case(tmp_path, "size")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("segkit: error: prediction ")
    assert main(["evaluate", "--pred", str(tmp_path / "pred")]) == 2
    assert "needs --gt, --num-classes" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["corrupt", "truncated"])
def test_a_broken_png_is_one_line_from_the_segkit_command(tmp_path, case):
    """OpenCV prints its decoders' complaints on the process's stderr; the command keeps them quiet."""
    import subprocess
    import sys

    pattern = bad_case(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "segkit", "evaluate", "--pred", str(tmp_path / "pred"), "--gt",
                             str(tmp_path / "gt"), "--num-classes", "3"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and re.search(pattern, result.stderr), result.stderr


def test_the_folder_command_never_imports_torch_and_reports_what_confusion_matrix_computes(tmp_path):
    """`segkit evaluate --pred --gt` (with its JSON, figures and web page) runs without torch (2-3 s
    to import), and its figures are exactly those ConfusionMatrix.compute() gives for the same pixels."""
    import subprocess
    import sys

    pairs = make_mask_folders(tmp_path)  # grey, palette, nested and 16-bit files
    save(tmp_path / "gt" / "many.png", np.array([[0, 1], [2, 300]], np.uint16))  # a label above 255 stays 16-bit
    save(tmp_path / "pred" / "many.png", np.array([[0, 1], [2, 3]], np.uint8))
    kept = [(p, g) for _, p, g in pairs] + [(np.array([[0, 1], [2, 3]]), np.array([[0, 1], [2, 300]]))]
    code = ("import sys\nfrom segkit.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\nsys.exit(code)")
    classes = 301
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", str(classes),
            "--out", str(tmp_path / "report.json"), "--html", str(tmp_path / "report.html"), "--worst", "2"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report_confusion.png").stat().st_size and (tmp_path / "report_worst.png").stat().st_size
    assert (tmp_path / "report.html").stat().st_size
    metrics = json.loads((tmp_path / "report.json").read_text())
    matrix = ConfusionMatrix(classes)
    for pred, gt in kept:
        matrix.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    expected = matrix.compute()
    for key, value in expected.items():
        if isinstance(value, float):
            assert (math.isnan(value) and metrics[key] is None) or metrics[key] == value, key
        elif key != "confusion_matrix":
            assert [None if math.isnan(v) else v for v in value] == metrics[key], key
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert_matches(expected, reference(kept, classes))


def test_confusion_scores_of_edge_cases_are_nan_or_zero_without_warnings():
    """No pixel counted: every figure NaN. A class predicted but absent from the ground truth: IoU
    0 and in the mean; a class absent from both: NaN and out of the means. numpy stays quiet."""
    import warnings

    from segkit.confusion import confusion_scores

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = confusion_scores(np.zeros((3, 3)))
        scores = confusion_scores(np.array([[4, 1, 0], [0, 0, 0], [0, 0, 0]]), 1.5, 2)
    assert all(math.isnan(empty[key]) for key in ("miou", "mdice", "pixel_accuracy", "mean_accuracy", "fwiou", "per_image_miou"))
    assert scores["iou"][0] == pytest.approx(0.8) and scores["iou"][1] == 0.0 and math.isnan(scores["iou"][2])
    assert scores["miou"] == pytest.approx(0.4) and scores["per_image_miou"] == 0.75
    assert scores["pixel_accuracy"] == pytest.approx(0.8) and scores["mean_accuracy"] == pytest.approx(0.8)  # 4 of 5; classes 1, 2 NaN
    assert scores["dice"][0] == pytest.approx(8 / 9) and scores["fwiou"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="square"):
        confusion_scores(np.zeros((2, 3)))


def test_palette_and_colour_folders_are_read_the_checked_way_after_one_try(tmp_path, monkeypatch):
    """Grayscale PNGs are read in one OpenCV call; a folder that gives another kind (palette
    predictions here) stops trying that after its first file, and every label stays the same."""
    from segkit.data import io
    from segkit.engine import folders

    rng = np.random.default_rng(5)
    pairs = []
    for i in range(12):
        gt = rng.integers(0, K, (9, 11)).astype(np.uint8)
        pred = rng.integers(0, K, (9, 11)).astype(np.uint8)
        save(tmp_path / "gt" / f"m{i:02d}.png", gt)
        save(tmp_path / "pred" / f"m{i:02d}.png", pred, palette=True)
        pairs.append((pred, gt))
    tried: list[str] = []

    def counting(path):
        tried.append(Path(path).parent.name)
        return io.read_grey_png(path)

    monkeypatch.setattr(folders, "read_grey_png", counting)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", K, workers=1)
    assert tried.count("gt") == 12 and tried.count("pred") == 1
    assert_matches(report.metrics, reference(pairs, K))


def test_skip_missing_lists_the_unpaired_files(tmp_path):
    bad_case(tmp_path, "missing_pred")
    save(tmp_path / "pred" / "extra.png", np.zeros((6, 8), np.uint8))
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3, skip_missing=True)
    assert [name for name, _ in report.images] == ["a"]
    assert len(report.warnings) == 2 and "gt/b.png" in report.warnings[0] and "pred/extra.png" in report.warnings[1]
    assert "warning: skipped: ground truth" in format_report(report)



# -- a checkpoint on a dataset -----------------------------------------------------------------
def tiny_config(root: Path, **data) -> dict:
    return {"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                      "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}},
            "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1}, **data},
            "trainer": {"batch_size": 2, "seed": 0}}


_FITTED: dict = {}


def fitted_weights(cfg) -> dict:
    """The tiny model after a few Adam steps towards 'class = intensity third' (made once per module):
    its predictions vary with the image, so comparisons of predictions are not vacuous."""
    if not _FITTED:
        torch.manual_seed(0)
        _FITTED.update(fit_to_intensity_thirds(build_model_from_config(cfg)).state_dict())
    return dict(_FITTED)


def write_checkpoint(path: Path, config: dict) -> Path:
    cfg = config_from_dict(config)
    save_checkpoint({"model": fitted_weights(cfg), "config": to_dict(cfg), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from segkit.data import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, n=8, size=64, seed=1)  # val: 0006, 0007
    return root


def model_reference(ckpt: Path, images: list[Path], masks: list[Path], resize: int | None = None) -> dict:
    """Load the model by hand, normalise 8-bit grey as segkit documents ((x / 255 - 0.449) / 0.226), score with numpy."""
    from segkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    model = build_model_from_config(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    pairs = []
    for image_path, mask_path in zip(images, masks):
        pixels = np.asarray(Image.open(image_path), dtype=np.float32) / 255.0
        if resize:
            import cv2

            pixels = cv2.resize(pixels, (resize, resize), interpolation=cv2.INTER_LINEAR)
        x = (torch.from_numpy(pixels)[None, None] - 0.449) / 0.226
        mask = np.asarray(Image.open(mask_path))
        with torch.no_grad():
            logits = F.interpolate(model(x), size=mask.shape, mode="bilinear", align_corners=False) if resize else model(x)
        pairs.append((logits.argmax(1)[0].numpy(), mask))
    return reference(pairs, 3)


def test_a_class_named_like_an_interpolation_loads_from_the_checkpoint(tmp_path, synthetic, monkeypatch):
    """The run's file escaped it (\\${literal}) and the checkpoint stores the resolved text: reading
    that config again took ${literal} for a reference and refused the run's own checkpoint."""
    from segkit.engine.inference import load_model

    monkeypatch.setenv("SEGKIT_TEST_NAME", "cells")
    classes = ["${oc.env:SEGKIT_TEST_NAME}", "\\${literal}", "c"]
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic, classes=classes))
    monkeypatch.delenv("SEGKIT_TEST_NAME")  # the value the run used is stored, not the reference
    _, cfg = load_model(ckpt)
    assert list(cfg.data.classes) == ["cells", "${literal}", "c"]
    report = evaluate_checkpoint(ckpt, synthetic, device="cpu")
    assert report.classes == ["cells", "${literal}", "c"]


def test_checkpoint_report_matches_a_hand_computation_and_training_validation(tmp_path, synthetic):
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic))
    report = evaluate_checkpoint(ckpt, synthetic, device="cpu")
    val = sorted((synthetic / "images" / "val").glob("*.png"))
    ref = model_reference(ckpt, val, [synthetic / "masks" / "val" / p.name for p in val])
    assert_matches(report.metrics, ref)
    assert [name for name, _ in report.images] == ["0006", "0007"]
    assert report.source["split"] == "val"

    from segkit.engine.builders import build_datasets
    from segkit.engine.distributed import DistInfo
    from segkit.engine.inference import load_model
    from segkit.engine.validation import score_validation_split

    model, cfg = load_model(ckpt)
    metrics = score_validation_split(model, build_datasets(cfg)[1], cfg, torch.device("cpu"), DistInfo(rank=0, world_size=1, local_rank=0))
    assert metrics["confusion_matrix"] == report.metrics["confusion_matrix"]


def test_checkpoint_resize_transform_is_scored_at_the_masks_resolution(tmp_path, synthetic):
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic, val_transforms=[{"name": "resize", "size": 32}]))
    report = evaluate_checkpoint(ckpt, synthetic, device="cpu")
    val = sorted((synthetic / "images" / "val").glob("*.png"))
    ref = model_reference(ckpt, val, [synthetic / "masks" / "val" / p.name for p in val], resize=32)
    assert_matches(report.metrics, ref)
    assert sum(report.pixels) == 2 * 64 * 64


def test_checkpoint_pad_transform_is_cropped_back_and_crops_are_left_out(tmp_path, synthetic):
    spec = [{"name": "pad", "divisor": 32}, "hflip", {"name": "center_crop", "size": 16}]
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic, val_transforms=spec))
    rng = np.random.default_rng(3)
    for i in range(2):
        save(tmp_path / "odd" / "images" / f"{i}.png", rng.integers(0, 256, (50, 40)).astype(np.uint8))
        save(tmp_path / "odd" / "masks" / f"{i}.png", rng.integers(0, 3, (50, 40)).astype(np.uint8))
    report = evaluate_checkpoint(ckpt, tmp_path / "odd", device="cpu")
    assert len(report.warnings) == 1 and "hflip, center_crop left out" in report.warnings[0]

    from segkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    model = build_model_from_config(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    pairs = []
    for i in range(2):
        pixels = np.asarray(Image.open(tmp_path / "odd" / "images" / f"{i}.png"), dtype=np.float32) / 255.0
        padded = np.pad(pixels, ((0, 14), (0, 24)))  # to 64 x 64 with 0 before standardisation, as albumentations pads
        with torch.no_grad():
            logits = model((torch.from_numpy(padded)[None, None] - 0.449) / 0.226)[..., :50, :40]
        pairs.append((logits.argmax(1)[0].numpy(), np.asarray(Image.open(tmp_path / "odd" / "masks" / f"{i}.png"))))
    assert_matches(report.metrics, reference(pairs, 3))
    assert len(np.unique(pairs[0][0])) == 3  # the model predicts every class: the comparison is not vacuous


def test_checkpoint_on_a_flat_folder_and_split_errors(tmp_path, synthetic):
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic))
    flat = tmp_path / "flat"
    for sub in ("images", "masks"):
        (flat / sub).mkdir(parents=True)
        for path in sorted((synthetic / sub / "train").glob("*.png"))[:3]:
            (flat / sub / path.name).write_bytes(path.read_bytes())
    report = evaluate_checkpoint(ckpt, flat, device="cpu")
    assert report.source["split"] is None and len(report.images) == 3
    ref = model_reference(ckpt, sorted((flat / "images").glob("*.png")), sorted((flat / "masks").glob("*.png")))
    assert_matches(report.metrics, ref)
    assert len(evaluate_checkpoint(ckpt, synthetic, "train", device="cpu").images) == 6
    only_train = tmp_path / "only_train"
    for sub in ("images", "masks"):
        (only_train / sub / "train").mkdir(parents=True)
        (only_train / sub / "train" / "a.png").write_bytes((synthetic / sub / "train" / "0000.png").read_bytes())
    with pytest.raises(SegkitError, match="holds split folders train but no 'val'; pass --split"):
        evaluate_checkpoint(ckpt, only_train, device="cpu")


def test_cli_checkpoint_prints_the_miou_line_and_writes_json(tmp_path, synthetic, capsys):
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic))
    out = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(synthetic), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    lines = [line for line in printed.splitlines() if line.startswith("mIoU:")]
    assert lines == [f"mIoU: {data['miou']:.3f}"] and re.fullmatch(r"mIoU: \d\.\d{3}", lines[0])
    assert data["num_images"] == 2 and data["source"]["checkpoint"] == str(ckpt)
    assert (tmp_path / "report_confusion.png").is_file() and (tmp_path / "report_worst.png").is_file()


def test_bad_checkpoints_are_one_line_errors(tmp_path, synthetic, capsys):
    torch.save({"weights": {}}, tmp_path / "other.pt")
    torch.save({"model": {}}, tmp_path / "noconfig.pt")
    for path, message in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "other.pt", "has no 'model' entry"),
                          (tmp_path / "noconfig.pt", "holds no config")):
        assert main(["evaluate", "--checkpoint", str(path), "--data", str(synthetic)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--pred", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert not math.isnan(evaluate_checkpoint(ckpt, synthetic, device="cpu").metrics["pixel_accuracy"])


def test_evaluate_reproduces_the_validation_miou_saved_by_training(tmp_path, synthetic):
    from segkit.engine.train import train

    config = tiny_config(synthetic)
    config.update({"optimizer": {"name": "adamw", "lr": 0.01}, "output": {"plots": False},
                   "trainer": {"epochs": 1, "batch_size": 2, "seed": 0, "device": "cpu"}})
    train(config_from_dict(config), tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["metrics"]
    report = evaluate_checkpoint(tmp_path / "run", device="cpu")  # the run directory, the config's own data
    assert report.metrics["confusion_matrix"] == saved["confusion_matrix"]
    assert report.metrics["miou"] == pytest.approx(saved["miou"], rel=1e-12)


def test_pair_counts_equal_a_numpy_confusion_matrix():
    """The per-pair count of evaluate --pred/--gt (by runs of equal labels) against np.add.at."""
    from segkit.engine import folders

    rng = np.random.default_rng(5)
    gt = rng.integers(0, 21, (70, 90)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 21, gt.shape)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = 255
    counted = gt != 255
    expected = np.zeros((21, 21), np.int64)
    np.add.at(expected, (gt[counted].astype(np.int64), pred[counted].astype(np.int64)), 1)
    np.testing.assert_array_equal(folders._pair_counts(pred, gt, 21, 255), expected)
    np.testing.assert_array_equal(folders._pair_counts(pred, gt, 22, 255)[:21, :21], expected)  # a class never seen
    wide = folders._pair_counts(pred, gt, 300, 255)  # more classes than 8-bit values: 255 is still ignored
    assert wide.shape == (300, 300) and wide.sum() == expected.sum()
    np.testing.assert_array_equal(wide[:21, :21], expected)
    bad_pred = pred.copy()
    bad_pred[5, 7] = 21  # a prediction outside [0, C): None, and the caller names it
    assert folders._pair_counts(bad_pred, gt, 21, 255) is None
    bad_pred[counted] = pred[counted]
    bad_pred[~counted] = 99  # ... but not where the ground truth is ignored (ConfusionMatrix's rule)
    np.testing.assert_array_equal(folders._pair_counts(bad_pred, gt, 21, 255), expected)
    gt[0, 0] = 30  # a label outside [0, C) that is not ignore_index: the same
    assert folders._pair_counts(pred, gt, 21, 255) is None


@pytest.mark.parametrize(("num_classes", "ignore"), [(300, 65535), (1000, 7), (3, None)])
def test_pair_counts_of_16_bit_labels_and_an_ignore_index_inside_the_classes(num_classes, ignore):
    """16-bit label maps (more than 256 classes) count by the same runs; ignore_index may be a class
    index, and a mask with nothing counted gives zeros."""
    from segkit.engine import folders

    rng = np.random.default_rng(num_classes)
    gt = np.kron(rng.integers(0, num_classes, (7, 9)), np.ones((5, 6), np.int64)).astype(np.uint16)
    pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, num_classes, gt.shape)).astype(np.uint16)
    if ignore is not None:
        gt[rng.random(gt.shape) < 0.1] = ignore
    counted = np.ones(gt.shape, bool) if ignore is None else gt != ignore
    expected = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(expected, (gt[counted].astype(np.int64), pred[counted].astype(np.int64)), 1)
    np.testing.assert_array_equal(folders._pair_counts(pred, gt, num_classes, ignore), expected)
    if ignore is not None:
        np.testing.assert_array_equal(folders._pair_counts(pred, np.full_like(gt, ignore), num_classes, ignore), 0)
    assert folders._pair_counts(pred[:0], gt[:0], num_classes, ignore).shape == (num_classes, num_classes)


@pytest.mark.parametrize("num_classes", [2, 200, 256])
def test_pair_counts_with_runs_many_classes_and_no_ignore_index(num_classes):
    """Blocky masks (long runs, runs across row ends) and random ones, up to 256 classes."""
    from segkit.engine import folders

    rng = np.random.default_rng(num_classes)
    blocky = np.kron(rng.integers(0, num_classes, (8, 6)), np.ones((9, 11), np.int64)).astype(np.uint8)
    for gt in (blocky, rng.integers(0, num_classes, (64, 64)).astype(np.uint8)):
        pred = np.where(rng.random(gt.shape) < 0.9, gt, rng.integers(0, num_classes, gt.shape)).astype(np.uint8)
        expected = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(expected, (gt.astype(np.int64).ravel(), pred.astype(np.int64).ravel()), 1)
        np.testing.assert_array_equal(folders._pair_counts(pred, gt, num_classes, None), expected)
    one = np.zeros((1, 1), np.uint8)  # a single pixel: one run
    np.testing.assert_array_equal(folders._pair_counts(one, one, num_classes, None)[0, 0], 1)


def test_pair_counts_of_masks_that_share_a_thread_s_buffers():
    """Sizes that round to the same 8-pixel words reuse one thread's buffers: a run start left by a
    bigger mask past a smaller one's end must not count, nor one in the middle of a word."""
    from segkit.engine import folders

    rng = np.random.default_rng(3)
    for height, width in [(1, 16), (1, 10), (1, 9), (3, 3), (1, 15), (2, 8), (1, 1), (5, 13), (4, 16)]:
        for _ in range(3):
            gt = rng.integers(0, 3, (height, width)).astype(np.uint8)
            pred = rng.integers(0, 3, (height, width)).astype(np.uint8)
            expected = np.zeros((3, 3), np.int64)
            np.add.at(expected, (gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)), 1)
            np.testing.assert_array_equal(folders._pair_counts(pred, gt, 3, None), expected)
        full = np.arange(height * width, dtype=np.uint8).reshape(height, width) % 3  # a start at every pixel
        expected = np.zeros((3, 3), np.int64)
        np.add.at(expected, (full.ravel().astype(np.int64), full.ravel().astype(np.int64)), 1)
        np.testing.assert_array_equal(folders._pair_counts(full, full, 3, None), expected)


def test_checkpoint_on_0_255_masks_warns_that_the_foreground_is_ignored(tmp_path, synthetic):
    """A model trained on 0/255 masks without binary learnt background alone; the report says why."""
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(synthetic))
    square = np.zeros((40, 40), np.uint8)
    square[5:25, 10:30] = 255
    for i in range(2):
        save(tmp_path / "binary" / "images" / f"{i}.png", np.full((40, 40), 90, np.uint8))
        save(tmp_path / "binary" / "masks" / f"{i}.png", square)
    report = evaluate_checkpoint(ckpt, tmp_path / "binary", device="cpu")
    [warning] = [w for w in report.warnings if "ignore_index" in w]
    assert "all 2 masks checked" in warning and "data.options.binary: true" in warning
    assert not any("ignore_index" in w for w in evaluate_checkpoint(ckpt, synthetic, device="cpu").warnings)

"""Reports and pages never destroy an input, and say what they show: one-line errors for paths and
report files they cannot use, classes scored on one side only, runs without validation, flat charts."""

from __future__ import annotations

import json

import pytest
from _report_helpers import CLASSES, fake_run, write_mask_folders

from segkit import SegkitError
from segkit.cli import main
from segkit.engine import html
from segkit.engine.checkpoint import save_checkpoint
from segkit.engine.evaluate import evaluate_folders
from segkit.engine.report import write_report
from segkit.engine.runs import compare_table, load_compared, run_page


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    write_mask_folders(root, 6, images=True)
    return root


def test_html_never_replaces_an_input(folders, tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    log = (run / "metrics.jsonl").read_text()
    assert main(["report", str(run), "--html", str(run / "metrics.jsonl")]) == 2
    assert (run / "metrics.jsonl").read_text() == log
    write_report(evaluate_folders(folders / "pred", folders / "gt", 3, class_names=CLASSES), tmp_path / "a.json", plots=False)
    before = (tmp_path / "a.json").read_text()
    assert main(["compare", str(tmp_path / "a.json"), str(run), "--html", str(tmp_path / "a.json")]) == 2
    assert (tmp_path / "a.json").read_text() == before
    mask = sorted((folders / "pred").iterdir())[0]
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--num-classes", "3",
                 "--html", str(mask)]) == 2
    err = capsys.readouterr().err
    assert err.count("would replace a file that is not a web page") == 3 and "Traceback" not in err
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--num-classes", "3",
                 "--out", str(tmp_path / "same.html"), "--html", str(tmp_path / "same.html")]) == 2
    assert "--out and --html are both" in capsys.readouterr().err


def test_unwritable_pages_and_image_folders_are_one_line_errors(folders, tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["report", str(run), "--html", str(run)]) == 2
    assert main(["compare", str(run), str(run), "--html", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("is a directory; give a file name") == 2 and "Traceback" not in err
    base = ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--num-classes", "3"]
    assert main([*base, "--images", str(tmp_path / "nowhere"), "--html", str(tmp_path / "p.html")]) == 2
    assert "--images " in capsys.readouterr().err
    assert main([*base, "--images", str(folders / "images")]) == 2
    assert "add --html PATH" in capsys.readouterr().err
    with pytest.raises(SegkitError, match="cannot write the page"):
        html.write_page("<p>", "/proc/no/such/page.html")


def test_reports_compare_refuses_are_named(tmp_path):
    (tmp_path / "short.json").write_text(json.dumps({"iou": [1.0], "miou": 1.0, "classes": ["a", "b"]}))
    with pytest.raises(SegkitError, match=r"short\.json gives 1 IoU values for 2 classes"):
        load_compared(tmp_path / "short.json")
    (tmp_path / "rows.json").write_text(json.dumps({"iou": [0.5, 0.6], "miou": 0.55, "classes": ["a", "b"], "images": [{"name": "x"}]}))
    with pytest.raises(SegkitError, match=r"rows\.json has image rows without name and miou"):
        load_compared(tmp_path / "rows.json")


def test_a_class_scored_on_one_side_is_not_a_tie(tmp_path):
    base = {"iou": [0.8, 0.6, None], "miou": 0.7, "classes": ["a", "b", "c"]}
    other = {"iou": [0.8, 0.6, 0.4], "miou": 0.6, "classes": ["a", "b", "c"]}
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "other.json").write_text(json.dumps(other))
    table = compare_table([load_compared(tmp_path / "base.json"), load_compared(tmp_path / "other.json")])
    assert "within 0.0005 on 2; not comparable on c (scored by one side only, so the mIoUs average different classes)" in table


def test_classes_absent_from_both_sides_are_no_tie_and_named_sides_must_agree_with_each_other(tmp_path):
    def write(name, iou, classes):
        (tmp_path / name).write_text(json.dumps({"iou": iou, "miou": 0.5, "classes": classes}))
        return load_compared(tmp_path / name)

    base = write("base.json", [0.8, 0.6, None, None], ["a", "b", "c", "d"])
    other = write("other.json", [0.8, 0.7, None, None], ["a", "b", "c", "d"])
    table = compare_table([base, other])
    assert "better on 1 class (b +0.100); worse on no class; within 0.0005 on 1." in table  # c, d: absent from both
    numbered = write("numbered.json", [0.5, 0.5], ["0", "1"])  # a run whose config names no classes
    with pytest.raises(SegkitError, match=r"sky\.json scores classes \['sky', 'tree'\] but .*road\.json"):
        compare_table([numbered, write("road.json", [0.5, 0.5], ["road", "car"]), write("sky.json", [0.5, 0.5], ["sky", "tree"])])


def test_every_compared_run_has_its_own_colour():
    from segkit.engine.runs import RUN_COLORS, run_colors

    colors = run_colors(20)
    assert len(set(colors)) == 20 and colors[:len(RUN_COLORS)] == RUN_COLORS and run_colors(2) == RUN_COLORS[:2]


def test_a_run_without_validation_claims_no_best_epoch_and_flat_series_keep_their_scale(tmp_path):
    run = fake_run(tmp_path / "run", epochs=1)
    save_checkpoint({"model": {}, "config": json.loads(json.dumps(_config(run))), "epoch": 1, "world_size": 1},
                    run / "last.pt")
    (run / "best.pt").unlink()  # interrupted before validation: last.pt without metrics
    page = run_page(run)
    assert "best at epoch" not in page and "No best.pt or last.pt with validation metrics" in page
    chart = html.line_chart([{"label": "lr", "color": "#000", "points": [(1, 0.1), (2, 0.1)]}], xlabel="step", ylabel="lr")
    ticks = [float(label) for _, label in chart["yticks"]]
    assert ticks and min(ticks) >= 0 and max(ticks) < 0.2  # around 0.1, at its scale (was -0.4 .. 0.6)
    one = html.line_chart([{"label": "loss", "color": "#000", "points": [(1, 1.5)], "markers": False}], xlabel="step", ylabel="loss")
    assert len(one["series"][0]["dots"]) == 1  # one point draws no line: it is shown as a dot


def test_a_classification_run_page_names_no_encoder(tmp_path):
    page = run_page(fake_run(tmp_path / "cls", task="classification"))
    assert "cifar_resnet20 on" not in page and "cifar_resnet20" in page


def test_an_ignore_index_that_is_a_class_is_said(tmp_path):
    import numpy as np
    from PIL import Image

    labels = np.random.default_rng(0).integers(0, 3, (16, 16)).astype(np.uint8)  # no 255 anywhere
    for side in ("pred", "gt"):
        (tmp_path / side).mkdir()
        Image.fromarray(labels).save(tmp_path / side / "a.png")
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3, ignore_index=0)
    assert any("--ignore-index 0 is also a class (labels 0..2)" in w and "--reduce-zero-label" in w for w in report.warnings)
    assert not any("also a class" in w for w in evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3).warnings)


def _config(run):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))


def test_out_never_replaces_an_input_or_lands_among_the_masks(folders, tmp_path, capsys):
    """evaluate --out wrote JSON over any file (a checkpoint, a mask) and its figures into the
    prediction folder; export --out wrote a model over the checkpoint it read."""
    base = ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--num-classes", "3"]
    mask = sorted((folders / "pred").iterdir())[0]
    before = mask.read_bytes()
    assert main([*base, "--out", str(mask)]) == 2
    assert main([*base, "--out", str(folders / "gt" / "report.json")]) == 2
    assert mask.read_bytes() == before and not (folders / "gt" / "report.json").exists()
    assert capsys.readouterr().err.count("is inside the input") == 2
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*base, "--out", str(tmp_path / "notes.txt")]) == 2
    assert "would replace a file that is not a JSON report" in capsys.readouterr().err
    (tmp_path / "old.json").write_text("{}")
    assert main([*base, "--out", str(tmp_path / "old.json")]) == 0  # a report replaces a report
    assert json.loads((tmp_path / "old.json").read_text())["num_classes"] == 3

    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": {}, "config": {}}, checkpoint)
    saved = checkpoint.read_bytes()
    for fmt, out in (("onnx", checkpoint), ("torchscript", checkpoint), ("torchscript", tmp_path / "old.json")):
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("is the input") == 2 and "would replace a file that is not a TorchScript model" in err
    assert checkpoint.read_bytes() == saved


def test_a_capped_image_table_keeps_the_highest_scored_images_not_the_unscored(monkeypatch):
    import math

    from segkit.engine.report import EvalReport

    monkeypatch.setattr(html, "TABLE_ROWS", 4)
    images = [("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.8), ("e", 0.9), ("unscored", math.nan)]
    report = EvalReport({}, ["0", "1"], 255, images, [], {"mode": "folders"}, [{"pixel_accuracy": None, "classes": []}] * 6)
    rows, note = html._table_rows(report)
    assert [r[1] for r in rows] == ["a", "b", "d", "e"]
    assert "lists 4 of the 6 images" in note and "the 1 without a score (every pixel ignored) are left out" in note


def test_reports_scored_with_other_settings_are_said_to_be(folders, tmp_path):
    plain = evaluate_folders(folders / "pred", folders / "gt", 3, class_names=CLASSES)
    write_report(plain, tmp_path / "plain.json", plots=False)
    assert json.loads((tmp_path / "plain.json").read_text())["source"]["reduce_zero_label"] is False
    other = json.loads((tmp_path / "plain.json").read_text())
    other["ignore_index"] = 0  # as a report of masks whose 0 was ignored
    (tmp_path / "zero.json").write_text(json.dumps(other))
    table = compare_table([load_compared(tmp_path / "plain.json"), load_compared(tmp_path / "zero.json")])
    assert "Scored differently: ignore_index is 255 for plain, 0 for zero" in table
    same = compare_table([load_compared(tmp_path / "plain.json"), load_compared(tmp_path / "plain.json")])
    assert "Scored differently" not in same


def test_a_capped_table_with_few_scored_images_lists_them_all_and_says_so(monkeypatch):
    import math

    from segkit.engine.report import EvalReport

    monkeypatch.setattr(html, "TABLE_ROWS", 10)
    images = [(f"s{i}", 0.1 * i) for i in range(4)] + [(f"u{i}", math.nan) for i in range(10)]
    report = EvalReport({}, ["0", "1"], 255, images, [], {"mode": "folders"}, [{"pixel_accuracy": None, "classes": []}] * 14)
    rows, note = html._table_rows(report)
    assert [r[1] for r in rows] == ["s0", "s1", "s2", "s3", "u0", "u1", "u2", "u3", "u4", "u5"]
    assert "lists 10 of the 14 images: every scored one and 6 of the 10 without a score" in note


def test_report_names_what_the_path_is_when_it_is_no_run(tmp_path, capsys):
    """A run stopped before its first log point, a missing path and a checkpoint file were all "not a run"."""
    from segkit.cli import main

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text("task: segmentation\n")
    (stopped / "best.pt").write_bytes(b"")
    for path, message in ((stopped, "has no metrics.jsonl yet: the run stopped before its first log point; it saved"),
                          (tmp_path / "nowhere", "nowhere does not exist; pass a run directory"),
                          (stopped / "best.pt", "best.pt is a file; pass the run directory that holds it")):
        assert main(["report", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert main(["report", str(stopped)]) == 2
    assert "it saved nothing to resume, so start it again" in capsys.readouterr().err  # no last.pt: --resume would refuse
    (stopped / "last.pt").write_bytes(b"")
    assert main(["report", str(stopped)]) == 2
    assert "continue it with `segkit train ... --resume`" in capsys.readouterr().err

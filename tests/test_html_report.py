"""The HTML reports (segkit evaluate --html, segkit report, segkit compare): numbers, size cap, escaping, atomic writes."""

from __future__ import annotations

import markupsafe
import json
import math
import os
import re

import numpy as np
import pytest
from _report_helpers import CLASSES, fake_run, page_data, tiny_config, write_checkpoint, write_mask_folders

from segkit import SegkitError
from segkit.cli import main
from segkit.engine import html
from segkit.engine.checkpoint import save_checkpoint
from segkit.engine.evaluate import evaluate_folders
from segkit.engine.report import EvalReport, image_figures, write_report
from segkit.engine.runs import compare_page, compare_table, load_compared, run_page

SIZE_CAP = 20 * 1024 * 1024
COMPUTE_KEYS = ("miou", "iou", "mdice", "dice", "pixel_accuracy", "mean_accuracy", "accuracy", "fwiou", "per_image_miou",
                "confusion_matrix", "classes", "pixels", "ignore_index", "num_images")


def assert_page_matches_json(page: str, report_json: dict) -> dict:
    """The page's embedded figures are the JSON report's, and the headline cards show them."""
    data = page_data(page)
    for key in COMPUTE_KEYS:
        assert data[key] == report_json[key], key
    assert [(row[1], row[2]) for row in data["images"]] == [(row["name"], row["miou"]) for row in report_json["images"]]
    cards = dict(re.findall(r'<div class="value" data-key="([^"]+)">([^<]+)</div>', page))
    for key, label in (("miou", "mIoU"), ("mdice", "mDice"), ("pixel_accuracy", "pixel accuracy"), ("fwiou", "fwIoU"),
                       ("per_image_miou", "per-image mean IoU")):
        assert cards[label] == f"{report_json[key]:.3f}", label
    return data


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    return root, write_mask_folders(root, 12, size=32, images=True)


def test_folder_page_numbers_equal_the_json_report(folders, tmp_path, capsys):
    root, pairs = folders
    args = ["evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt"), "--num-classes", "3", "--class-names", *CLASSES,
            "--out", str(tmp_path / "report.json"), "--html", str(tmp_path / "report.html"), "--worst", "3", "--images", str(root / "images")]
    assert main(args) == 0
    assert f"wrote {tmp_path / 'report.html'}" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    report_json = json.loads((tmp_path / "report.json").read_text())
    data = assert_page_matches_json(page, report_json)
    # each image's pixel accuracy and ground-truth classes, against numpy
    by_name = {row[1]: row for row in data["images"]}
    for stem, pred, gt in pairs:
        counted = gt != 255
        assert by_name[stem][3] == pytest.approx(np.mean(pred[counted] == gt[counted]), rel=1e-12)
        assert by_name[stem][4] == sorted(np.unique(gt[counted]).tolist())
    # the 3 worst and 3 best images are drawn (image, ground truth, prediction, errors), the worst as in the JSON
    worst = [row["name"] for row in report_json["worst_images"]][:3]
    assert data["overlays"] == sorted(worst + [n for n, _ in sorted(report_json_images(report_json), key=lambda r: -r[1])
                                              if n not in worst][:3])
    assert page.count('class="shot"') == 6 and page.count("data:image/jpeg;base64,") == 24
    assert re.findall(r'<div class="shot" data-name="([^"]+)">', page)[:3] == worst
    # the policy and what was evaluated, in words
    assert "mIoU is dataset-level" in page and "ignore_index" in page and str(root / "pred") in page


def report_json_images(report_json: dict) -> list[tuple[str, float]]:
    return [(row["name"], row["miou"]) for row in report_json["images"] if row["miou"] is not None]


def test_masks_alone_without_images(folders, tmp_path):
    root, _ = folders
    report = evaluate_folders(root / "pred", root / "gt", 3)
    names = [name for name, _ in report.worst(2)]
    panels, notes = html.folder_overlays(names, root / "pred", root / "gt", 3)
    assert not notes and set(panels) == set(names)
    assert [title for title, _ in panels[names[0]]] == ["ground truth", "prediction", "errors"]
    assert all(uri.startswith("data:image/png;base64,") for _, uri in panels[names[0]])
    (tmp_path / "few").mkdir()
    panels, notes = html.folder_overlays(names, root / "pred", root / "gt", 3, images_dir=tmp_path / "few")
    assert len(notes) == 2 and "masks are drawn alone" in notes[0]


def test_checkpoint_page_numbers_equal_the_json_report(tmp_path):
    from segkit.data import make_synthetic

    make_synthetic(tmp_path / "data", n=8, size=64, seed=1)  # val: 2 images
    ckpt = write_checkpoint(tmp_path / "best.pt", tiny_config(tmp_path / "data"))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"),
                 "--quiet"]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    report_json = json.loads((tmp_path / "r.json").read_text())
    data = assert_page_matches_json(page, report_json)
    assert data["classes"] == CLASSES and len(data["overlays"]) == 2  # both images among the worst; none left for best
    assert page.count("data:image/jpeg;base64,") == 8
    assert "a checkpoint on a dataset" in page and "val" in page


def test_worst_zero_draws_no_images(folders, tmp_path):
    root, _ = folders
    assert main(["evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt"), "--num-classes", "3", "--worst", "0",
                 "--html", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="shot"' not in page and len(page_data(page)["images"]) == 12
    assert html.checkpoint_overlays(tmp_path / "not-even-read.pt", []) == {}


def test_images_flag_needs_mask_folders(tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--html", str(tmp_path / "x.html"), "--images", str(tmp_path)])
    assert code == 2 and "--images goes with --pred/--gt" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_2000_images_stay_under_the_size_cap(tmp_path, capsys):
    write_mask_folders(tmp_path, 2000, size=32, images=True)
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3",
            "--html", str(tmp_path / "report.html"), "--images", str(tmp_path / "images"), "--worst", "25"]
    assert main(args) == 0
    size = (tmp_path / "report.html").stat().st_size
    print(f"2,000-image page: {size / 1e6:.2f} MB")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    data = page_data(page)
    assert size < SIZE_CAP and len(data["images"]) == 2000 and len(data["overlays"]) == 50


def test_the_cap_holds_for_any_dataset_size(tmp_path):
    """50,000 images, 150 classes, the most overlays a page shows, big noisy pictures: still under 20 MB."""
    rng = np.random.default_rng(0)
    k, n = 150, 50_000
    matrix = rng.integers(0, 1000, (k, k)) * (rng.random((k, k)) < 0.1) + np.diag(rng.integers(10**5, 10**6, k))
    metrics = {"confusion_matrix": matrix.tolist(), "iou": rng.random(k).tolist(), "dice": rng.random(k).tolist(),
               "accuracy": rng.random(k).tolist(), **{key: 0.5 for key in ("miou", "mdice", "pixel_accuracy", "mean_accuracy",
                                                                          "fwiou", "per_image_miou")}}
    images = [(f"some/longish/folder/name/image_{i:06d}", float(v)) for i, v in enumerate(rng.random(n))]
    details = [{"pixel_accuracy": 0.9, "classes": sorted(rng.choice(k, 6, replace=False).tolist())} for _ in range(n)]
    report = EvalReport(metrics, [f"class number {c}" for c in range(k)], 255, images, [f"skipped: file {i}" for i in range(5000)],
                        {"mode": "folders", "pred": "p", "gt": "g"}, details)
    worst, best = html.shown_images(report, 100)
    assert len(worst) == len(best) == html.MAX_SHOWN
    photo = rng.random((600, 800, 3))
    labels = rng.integers(0, k, (600, 800))
    panels = html.label_panels(photo, labels, np.roll(labels, 3), k, 255)
    path = html.write_evaluation_html(report, tmp_path / "big.html", {name: panels for name, _ in worst + best}, 100)
    size = path.stat().st_size
    page = path.read_text(encoding="utf-8")
    data = page_data(page)
    print(f"50,000-image, 150-class page with 50 overlays: {size / 1e6:.2f} MB")
    assert size < SIZE_CAP, size
    assert len(data["images"]) == html.TABLE_ROWS and f"lists {html.TABLE_ROWS:,} of the {n:,} images" in page
    assert "shows 25 worst and 25 best" in page and "5000 files were left unscored" in page and "the first 200 are listed" in page
    assert "file 199<" in page and "file 200<" not in page


def test_class_and_file_names_are_escaped(tmp_path):
    nasty = '<b>&"'
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    for d in ("gt", "pred"):
        (tmp_path / d).mkdir()
        from PIL import Image

        Image.fromarray(gt).save(tmp_path / d / 'a<i>&"x.png')
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3, class_names=["bg", nasty, "<script>alert(1)</script>"])
    panels, _ = html.folder_overlays(['a<i>&"x'], tmp_path / "pred", tmp_path / "gt", 3)
    page = html.evaluation_page(report, panels, 1)
    assert nasty not in page and "<script>alert" not in page and '<i>&"x' not in page
    assert str(markupsafe.escape(nasty)) in page  # shown as text
    data = page_data(page)
    assert data["classes"][1] == nasty and data["images"][0][1] == 'a<i>&"x'
    assert page.count("<script") == 2  # the data and the page's own script, nothing else


def test_writes_are_atomic(tmp_path, monkeypatch, folders):
    target = tmp_path / "report.html"
    target.write_text("the old page")
    with pytest.raises(UnicodeEncodeError):  # fails half-way through writing
        html.write_page("<p>" * 10_000 + "\ud800", target)
    assert target.read_text() == "the old page" and os.listdir(tmp_path) == ["report.html"]
    monkeypatch.setattr(html.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(SegkitError, match=r"cannot write the page .*report\.html \(disk full\)"):
        html.write_page("new", target)
    assert target.read_text() == "the old page" and os.listdir(tmp_path) == ["report.html"]
    monkeypatch.undo()
    root, _ = folders  # a failure while drawing leaves no page at all
    monkeypatch.setattr(html, "label_panels", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        main(["evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt"), "--num-classes", "3", "--html", str(tmp_path / "new.html")])
    assert not (tmp_path / "new.html").exists()
    written = html.write_page("fine", tmp_path / "sub" / "ok.html")
    assert written.read_text() == "fine" and (written.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_image_details():
    counts = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 2]])
    assert image_figures(counts[None])[1][0] == {"pixel_accuracy": 0.7, "classes": [0, 2]}
    assert math.isnan(image_figures(np.zeros((1, 2, 2)))[1][0]["pixel_accuracy"])


# -- runs ----------------------------------------------------------------------------------------------
def test_run_page(tmp_path, capsys):
    run = fake_run(tmp_path / "run", epochs=4)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert f"wrote {run / 'report.html'}" in capsys.readouterr().out
    data = page_data(page)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert data["epochs"] == [r for r in records if r["kind"] == "epoch"]
    assert data["best_epoch"] == 4 and data["best_metrics"]["iou"] == records[-1]["val_iou"]
    for section in ('id="curves"', 'id="class-bars"', 'id="heatmap"', 'id="class-curves"', 'id="epoch-table"', "config.yaml"):
        assert section in page, section
    assert page.count("<tr data-name=") == 4
    assert markupsafe.escape("round <cell>") in page and "round <cell>" not in page
    assert "training loss" in page and "learning rate" in page and "training throughput" in page
    # seconds per epoch: 3 steps x batch 2 / images per second
    assert f"{3 * 2 / 11.0:.1f}</td>" in page


def test_run_page_without_per_class_log_and_for_classification(tmp_path):
    page = run_page(fake_run(tmp_path / "old", per_class=False))
    assert 'id="class-curves"' not in page and "logs no per-class IoU per epoch" in page
    page = run_page(fake_run(tmp_path / "cls", task="classification"))
    assert "top-1 and top-5 error" in page and "top-1 accuracy" in page and 'id="class-bars"' not in page
    with pytest.raises(SegkitError, match="no metrics.jsonl"):
        run_page(tmp_path)
    long = fake_run(tmp_path / "long")  # 50,000 logged steps are drawn as at most 2,000 points
    with (long / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps({"kind": "train", "epoch": 5, "step": s, "loss": 1 / s, "lr": 0.001}) + "\n" for s in range(13, 50_013))
        f.write('{"kind": "epoch", "epoch": 5, "st')  # a run still writing
    page = run_page(long)
    assert max(path.count("L") for path in re.findall(r'<path d="([^"]+)"', page)) <= 2000 and len(page) < 2_000_000


def test_compare_reports_and_runs(folders, tmp_path, capsys):
    root, _ = folders
    a = evaluate_folders(root / "pred", root / "gt", 3, class_names=CLASSES)
    write_report(a, tmp_path / "a" / "report.json", plots=False)
    better = tmp_path / "better_pred"
    better.mkdir()
    for path in sorted((root / "gt").iterdir())[:4]:  # four images predicted perfectly
        from PIL import Image

        gt = np.asarray(Image.open(path))
        Image.fromarray(np.where(gt == 255, 0, gt).astype(np.uint8)).save(better / path.name)
    for path in sorted((root / "pred").iterdir())[4:]:
        (better / path.name).write_bytes(path.read_bytes())
    b = evaluate_folders(better, root / "gt", 3, class_names=CLASSES)
    write_report(b, tmp_path / "b.json", plots=False)
    run = fake_run(tmp_path / "run")
    assert main(["compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b.json"), str(run), "--html", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["class", "a", "b", "run", "b", "-", "a", "run", "-", "a", "best"]
    delta = b.metrics["miou"] - a.metrics["miou"]
    assert delta > 0 and f"b against a: mIoU {delta:+.3f}; better on" in out
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert 'id="delta-chart"' in page and f"b against a: mIoU {delta:+.3f}" in page
    moved = re.findall(r'<tr data-name="(img\d+)">', page)
    by_change = sorted(((n, dict(b.images)[n] - v) for n, v in a.images), key=lambda item: -abs(item[1]))
    assert moved == [n for n, d in by_change if abs(d) >= 5e-4][:15]
    data = page_data(page)
    assert data["iou"][0] == a.to_dict()["iou"] and data["names"] == ["a", "b", "run"]
    assert "run directories hold only the validation totals" not in page  # a and b have per-image figures


def test_compare_refuses_what_it_cannot_compare(tmp_path, folders):
    root, _ = folders
    write_report(evaluate_folders(root / "pred", root / "gt", 3, class_names=["x", "y", "z"]), tmp_path / "three.json", plots=False)
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(SegkitError, match="not a report of `segkit evaluate --out`"):
        load_compared(tmp_path / "other.json")
    with pytest.raises(SegkitError, match="compare evaluations of the same classes"):
        compare_table([load_compared(tmp_path / "three.json"), load_compared(fake_run(tmp_path / "run"))])
    numbered = fake_run(tmp_path / "numbered")  # a run whose config names no classes compares by number
    state = __import__("torch").load(numbered / "best.pt", weights_only=True)
    state["config"]["data"]["classes"] = None
    save_checkpoint(state, numbered / "best.pt")
    assert load_compared(numbered).classes == ["0", "1", "2"]
    table = compare_table([load_compared(numbered), load_compared(fake_run(tmp_path / "named"))])
    assert table.splitlines()[2].startswith("background ")
    with pytest.raises(SegkitError, match="at least two"):
        compare_page([load_compared(tmp_path / "three.json")])
    with pytest.raises(SegkitError, match="does not exist"):
        load_compared(tmp_path / "missing.json")

"""scripts/degradation.py: a tiny plain-vs-residual run writes its plot and its table of errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def degradation():
    spec = importlib.util.spec_from_file_location("degradation", REPO / "scripts" / "degradation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_run_writes_the_plot_and_the_table(tmp_path, degradation, capsys):
    out = tmp_path / "deg"
    code = degradation.main(["--synthetic", "--out", str(out), "--depths", "20", "32", "--epochs", "2", "--n", "72",
                             "--batch-size", "20", "--device", "cpu", "--warmup-iters", "1"])
    assert code == 0
    with Image.open(out / "degradation.png") as image:
        assert image.width > 2 * image.height  # two panels side by side
    rows = [line for line in (out / "errors.md").read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["plain-20", "plain-32", "ResNet-20", "ResNet-32"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert all(0.0 <= float(v) <= 100.0 for v in cells[3:6]), row
    results = json.loads((out / "errors.json").read_text())
    assert set(results) == {"plain20", "plain32", "resnet20", "resnet32"}
    for name, result in results.items():
        assert [e["epoch"] for e in result["epochs"]] == [1, 2], name
        last = result["epochs"][-1]
        # The table shows the last epoch's errors of the run's own log, in percent.
        row = next(r for r in rows if r.split("|")[1].strip().lower().replace("-", "") == name)
        assert float(row.split("|")[4]) == pytest.approx(100 * last["train_top1_error"], abs=0.006)
        assert float(row.split("|")[5]) == pytest.approx(100 * last["val_top1_error"], abs=0.006)
    assert results["plain32"]["parameters"] == results["resnet32"]["parameters"]  # option A adds no parameters
    assert (out / "data" / "data_batch_1").is_file() and (out / "resnet32" / "last.pt").is_file()
    assert "ResNet-32" in capsys.readouterr().out
    # A second call reuses the finished runs instead of training again.
    before = (out / "plain20" / "metrics.jsonl").read_text()
    assert degradation.main(["--synthetic", "--out", str(out), "--depths", "20", "32", "--epochs", "2", "--n", "72",
                             "--batch-size", "20", "--device", "cpu", "--warmup-iters", "1"]) == 0
    assert (out / "plain20" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("depth", ["1202", "8"])
def test_a_depth_without_both_nets_is_refused_before_training(tmp_path, degradation, capsys, depth):
    with pytest.raises(SystemExit) as stop:
        degradation.main(["--synthetic", "--out", str(tmp_path / "d"), "--depths", "20", depth])
    assert stop.value.code == 2
    assert re.search(rf"invalid choice: {depth} \(choose from 20, 32, 44, 56, 110\)", capsys.readouterr().err)
    assert not (tmp_path / "d").exists()


def test_a_run_of_one_iteration_has_a_valid_schedule(tmp_path, degradation):
    """Milestones at 50 % and 75 % of one iteration were [0, 0], which the config refuses."""
    from segkit.config import config_from_dict

    args = degradation.parse_args(["--synthetic", "--out", str(tmp_path)])
    for total in (1, 2, 3, 8):
        cfg = config_from_dict(degradation.run_config("cifar_plain20", tmp_path, 1, args, total))
        assert list(cfg.schedule.milestones) == sorted(set(cfg.schedule.milestones)) and min(cfg.schedule.milestones) >= 1

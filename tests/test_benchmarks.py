"""Every benchmark in scripts/benchmark.py runs end to end at tiny sizes and writes its JSON.

These are not timings (those come from running the benchmarks); they keep the benchmarks working
and check the invariants each one reports, e.g. that segkit and the peer agree on the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "metrics": ["--batch", "1", "--size", "32", "--classes", "4", "--repeats", "1", "--warmup", "0"],
    "train_step": ["--batch", "1", "--size", "64", "--encoder", "resnet18", "--widths", "16,16,16,16,16",
                   "--repeats", "1", "--warmup", "0"],
    "training": ["--epochs", "2", "--rounds", "1", "--amp-rows", "--gpu-batch", "1", "--gpu-size", "64",
                 "--gpu-encoder", "resnet18", "--gpu-repeats", "1", "trainer.batch_size=4", "data.synthetic.n=8",
                 "data.synthetic.size=64", "model.decoder.decoder_channels=[8,8,8,8,8]"],
    "loader": ["--n", "4", "--size", "64", "--crop", "32", "--batch", "2", "--workers", "0", "--rounds", "1"],
    "evaluate": ["--pairs", "6", "--size", "32", "--classes", "3", "--repeats", "1", "--warmup", "0", "--startup-repeats", "0"],
    "accuracy": ["--datasets", "quickstart", "--models", "unet-nearest,plain-unet-nearest,smp-unet", "--seeds", "0", "--epochs", "1",
                 "--quickstart-n", "8", "--quickstart-size", "64", "--batch", "4", "--threads", "1"],
    "predict_scaling": ["--sizes", "64,96", "--tile", "64", "--format", "tif", "--threads", "1"],
    "stride_bound": ["--datasets", "quickstart", "--quickstart-n", "4", "--quickstart-size", "32", "--strides", "4,8",
                     "--iterations", "5"],
    "end_to_end": ["--size", "32", "--tiny-epochs", "2", "--long-n", "16", "--long-epochs", "1", "--rounds", "1",
                   "model.decoder.decoder_channels=[8,8,8,8,8]"],
}


def test_every_benchmark_has_a_smoke_run():
    found = {p.stem for p in (REPO / "scripts" / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert found == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_writes_json(name, tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), name, "--json", str(out), *TINY[name]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == name and report["rows"]
    for row in report["rows"]:
        if "same_result" in row:
            assert row["same_result"] is True, row
    if name == "training":
        kinds = [row["case"] for row in report["rows"]]
        assert len(kinds) == 3 and any("amp+channels_last" in k for k in kinds)
        assert all(row.get("ratio", 1.0) > 0 for row in report["rows"])
    if name == "accuracy":  # segkit's engine, segkit's model in the plain loop, smp's model in the plain loop
        rows = {row["model"]: row for row in report["rows"]}
        assert {m: r["library"] for m, r in rows.items()} == {"unet-nearest": "segkit", "plain-unet-nearest": "plain", "smp-unet": "smp"}
        assert rows["plain-unet-nearest"]["comparator"] == "smp-unet" and rows["smp-unet"]["comparator"] is None
    if name == "end_to_end":
        assert [row["case"].split(":")[0] for row in report["rows"]] == ["many tiny epochs", "few long epochs"]
        for row in report["rows"]:
            assert row["segkit_s"] > 0 and row["plain_loop_s"] > 0 and 0 <= row["segkit_miou"] <= 1 and 0 <= row["plain_miou"] <= 1


def test_plain_accuracy_rows_train_segkit_s_model():
    """``plain-unet-*`` rows build the model ``segkit train`` builds for ``unet-*`` (same config, same weights for one seed)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchmarks import accuracy
    finally:
        sys.path.remove(str(REPO / "scripts"))
    import torch

    from segkit.engine.builders import build_model_from_config

    recipe = {"model": {"encoder": "resnet18", "encoder_weights": None, "num_classes": 2, "in_channels": 1},
              "data": {"kind": "folder", "root": "unused"}, "trainer": {"epochs": 1, "batch_size": 2}}
    plain_cfg = accuracy.task_config(recipe, "plain-unet-transposed", "cpu")
    segkit_cfg = accuracy.task_config(recipe, "unet-transposed", "cpu")
    assert plain_cfg.model == segkit_cfg.model
    torch.manual_seed(0)
    plain = accuracy.build_plain_model("plain-unet-transposed", plain_cfg)
    torch.manual_seed(0)
    ours = build_model_from_config(segkit_cfg)
    assert type(plain) is type(ours)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ours.state_dict().values()))

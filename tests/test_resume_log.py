"""The run log across interruptions: a resumed epoch's record covers the whole epoch, records a
hard kill left past last.pt are not kept twice, and a run that failed before any checkpoint starts over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

from segkit import SegkitError
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.engine.train import train
from segkit.metrics import TopKAccuracy


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _epochs(run: Path) -> list[tuple[int, int, float]]:
    return [(r["epoch"], r["step"], r["train_loss"]) for r in _records(run) if r["kind"] == "epoch"]


def test_a_resumed_epoch_records_the_loss_of_the_whole_epoch(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=2))  # 3 steps an epoch
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", max_steps=2, progress=False)  # stops inside epoch 1
    train(cfg, tmp_path / "split", max_steps=4, resume=True, progress=False)  # and inside epoch 2
    train(cfg, tmp_path / "split", resume=True, progress=False)
    straight, split = _epochs(tmp_path / "straight"), _epochs(tmp_path / "split")
    assert [(e, s) for e, s, _ in split] == [(e, s) for e, s, _ in straight] == [(1, 3), (2, 6)]
    for (_, _, a), (_, _, b) in zip(straight, split):
        assert b == pytest.approx(a, rel=1e-12)  # the same losses, summed in two parts
    steps = [r["step"] for r in _records(tmp_path / "split") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_records_a_hard_kill_left_past_last_pt_are_not_kept_twice(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=2))
    train(cfg, tmp_path / "straight", progress=False)
    run = tmp_path / "killed"
    train(cfg, run, max_steps=2, progress=False)  # last.pt at step 2
    with (run / "metrics.jsonl").open("a") as log:  # what the killed process wrote after it, and a line cut short
        log.write(json.dumps({"kind": "train", "epoch": 1, "step": 3, "loss": 0.5, "lr": 0.01}) + "\n")
        log.write(json.dumps({"kind": "epoch", "epoch": 1, "step": 3, "train_loss": 0.7}) + "\n")
        log.write('{"kind": "train", "epo')
    train(cfg, run, resume=True, progress=False)
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _records(run)]
    reference = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _records(tmp_path / "straight")]
    assert [(r["kind"], r["step"]) for r in strip] == [(r["kind"], r["step"]) for r in reference]
    assert strip[0] == reference[0]


def test_a_run_that_failed_before_its_first_checkpoint_starts_over(tmp_path, data_root, caplog):
    cfg = config_from_dict(tiny_config(data_root, epochs=1))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "epoch": 1, "step": 1, "loss": 9.0, "lr": 0.01}\n')
    assert train(cfg, run, progress=False).steps == 3
    assert "stopped before its first checkpoint; starting it over" in caplog.text
    assert [r["step"] for r in _records(run) if r["kind"] == "train"] == [1, 2, 3]
    (run / "last.pt").unlink()  # a best.pt to lose: refused
    with pytest.raises(SegkitError, match=r"holds a best\.pt but no last\.pt, so its run cannot be continued; choose another --out"):
        train(cfg, run, progress=False)


def test_accuracy_counts_carry_over(tmp_path):
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    target = torch.tensor([0, 2, 2, 1])
    whole = TopKAccuracy((1, 2))
    whole.update(logits, target)
    first, second = TopKAccuracy((1, 2)), TopKAccuracy((1, 2))
    first.update(logits[:2], target[:2])
    second.restore_counts(first.counts().tolist())
    second.update(logits[2:], target[2:])
    assert second.compute() == whole.compute() == {"top1": 0.5, "top2": 0.75}
    with pytest.raises(ValueError, match="expected 3 counts"):
        second.restore_counts([1.0])


def test_a_data_error_in_a_loader_worker_prints_one_line(tmp_path, data_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    mask = root / "masks" / "train" / "0003.png"
    labels = np.array(Image.open(mask))
    labels[:4, :4] = 7
    Image.fromarray(labels).save(mask)
    config = tiny_config(root, epochs=1)
    config["data"].update(kind="folder", num_workers=1)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segkit: error: mask ") and "0003.png holds value 7" in err, err
    assert "Traceback" not in err and "DataLoader worker" not in err and err.count("\n") == 1


def test_a_run_resumed_at_another_length_follows_the_schedule_of_the_new_length(tmp_path, data_root, caplog):
    """Another process count changes the steps an epoch has; here the epochs change instead (one process):
    the learning rates after the resume are those of a run of the new length, decaying to its end (poly)."""
    straight = config_from_dict(tiny_config(data_root, epochs=2))  # 6 steps
    train(straight, tmp_path / "straight", progress=False)
    train(config_from_dict(tiny_config(data_root, epochs=4)), tmp_path / "changed", max_steps=2, progress=False)
    train(straight, tmp_path / "changed", resume=True, progress=False)
    assert "the run now has 6 steps (12 before): the learning-rate schedule continues at step 2 of the new length" in caplog.text

    def lrs(run: Path) -> dict[int, float]:
        return {r["step"]: r["lr"] for r in _records(run) if r["kind"] == "train"}

    expected, got = lrs(tmp_path / "straight"), lrs(tmp_path / "changed")
    assert [got[s] for s in range(3, 7)] == pytest.approx([expected[s] for s in range(3, 7)], rel=1e-12)
    assert 0.0 < got[6] < got[5]  # the last step runs at poly's last rate (logged as run); 0 comes after it


def test_a_repeated_sigterm_is_one_request_and_a_second_ctrl_c_stops_at_once():
    import os
    import signal

    from segkit.engine.loop import StopFlag

    with StopFlag() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding the scheduler's signal once more
        except KeyboardInterrupt:
            pytest.fail("a repeated SIGTERM stopped the run at once, before its last.pt")
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)

"""Run checkpoints: atomic writes, safe loading, RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segkit import SegkitError
from segkit.engine import checkpoint
from segkit.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def test_round_trip_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "metrics": {"miou": 0.5, "iou": [0.4, None]}}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert load_checkpoint(tmp_path / "last.pt")["metrics"]["iou"] == [0.4, None]


def test_checkpoints_get_the_mode_any_new_file_gets(tmp_path):
    """mkstemp made them 0600 whatever the umask, while config.yaml and metrics.jsonl were 0644:
    another user of a shared run directory could read neither best.pt nor last.pt."""
    import os
    import stat

    save_checkpoint({"model": {}}, tmp_path / "best.pt")
    (tmp_path / "plain").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "best.pt").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


def crash_torch_save(monkeypatch) -> None:
    """Make checkpoint's torch.save write half a file and fail, as a full disk does."""

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)


def test_crash_mid_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, path)
    crash_torch_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class Payload:
    def __reduce__(self):  # what a poisoned checkpoint would run on unpickling
        return (print, ("owned",))


def test_poisoned_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(SegkitError, match="evil.pt refused: it needs unpickling arbitrary Python objects"):
        load_checkpoint(path)
    assert "owned" not in capsys.readouterr().out


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(SegkitError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:200])
    with pytest.raises(SegkitError, match="cut.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')  # a run's other files, passed by mistake
    with pytest.raises(SegkitError, match=r"metrics\.jsonl is not a PyTorch checkpoint \(it is neither a torch\.save archive nor a pickle\)"):
        load_checkpoint(tmp_path / "metrics.jsonl")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SegkitError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_states_survive_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"model": {}, "rng": capture_rng()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_a_temp_file_left_by_a_killed_writer_is_removed_at_the_next_save(tmp_path):
    """SIGKILL during a save left .last.pt.XXXX.tmp (29 MB in a real run) that nothing removed."""
    leftover = tmp_path / ".last.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    other = tmp_path / ".best.pt.abc123.tmp"  # another file's temp: not this save's business
    other.write_bytes(b"x")
    save_checkpoint({"model": {}, "step": 1}, tmp_path / "last.pt")
    assert not leftover.exists() and other.exists() and load_checkpoint(tmp_path / "last.pt")["step"] == 1

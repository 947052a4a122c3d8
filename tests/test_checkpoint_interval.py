"""Checkpoints by time (trainer.checkpoint_interval), best.pt without optimizer state, background writes, cheap plots."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine import checkpoint
from segkit.engine.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from segkit.engine.train import _best_of, train
from tests.test_checkpoint import crash_torch_save
from tests.test_train import tiny_config


@pytest.fixture
def writes(monkeypatch):
    """Every checkpoint file written, in order (by name), through the real atomic writer."""
    real, names = checkpoint.save_checkpoint, []

    def recording(state, path):
        names.append(Path(path).name)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", recording)
    return names


def test_large_interval_writes_last_pt_only_at_the_end(tmp_path, data_root, writes):
    cfg = config_from_dict(tiny_config(data_root, epochs=3, checkpoint_interval=1e9))
    result = train(cfg, tmp_path / "run", progress=False)
    assert writes.count("last.pt") == 1 and writes[-1] == "last.pt"
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == result.steps == 9 and state["epoch"] == 3


def test_large_interval_still_writes_last_pt_at_max_steps_inside_an_epoch(tmp_path, data_root, writes):
    cfg = config_from_dict(tiny_config(data_root, epochs=3, checkpoint_interval=1e9))
    train(cfg, tmp_path / "run", max_steps=4, progress=False)  # epoch 1 complete (3 steps), stops in epoch 2
    assert writes.count("last.pt") == 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 1, 4)


def test_zero_interval_writes_last_pt_every_epoch(tmp_path, data_root, writes):
    cfg = config_from_dict(tiny_config(data_root, epochs=3, checkpoint_interval=0))
    train(cfg, tmp_path / "run", progress=False)
    assert writes.count("last.pt") == 3


def test_resume_with_a_large_interval_is_exact(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=2, checkpoint_interval=1e9))
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", max_steps=2, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_best_pt_has_no_optimizer_state_and_serves_evaluation_and_fine_tuning(tmp_path, data_root):
    from segkit.engine.inference import load_model

    cfg = config_from_dict(tiny_config(data_root, epochs=1))
    train(cfg, tmp_path / "run", progress=False)
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert not {"optimizer", "scheduler", "scaler", "rng"} & best.keys() and best["kind"] == "best"
    assert {"optimizer", "scheduler", "scaler", "rng"} <= last.keys()
    assert best["config"] == last["config"] and "miou" in best["metrics"]
    assert (tmp_path / "run" / "best.pt").stat().st_size < (tmp_path / "run" / "last.pt").stat().st_size / 2
    model, _ = load_model(tmp_path / "run" / "best.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key
    # Fine-tuning: a new run starting from best.pt's weights.
    tuned = config_from_dict(tiny_config(data_root, epochs=1), [f"model.weights={tmp_path / 'run' / 'best.pt'}"])
    assert train(tuned, tmp_path / "tuned", max_steps=1, progress=False).steps == 1


def test_resume_refuses_a_best_pt(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=1))
    train(cfg, tmp_path / "run", progress=False)
    shutil.copy(tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt")
    with pytest.raises(SegkitError, match=r"holds model weights only \(a best.pt.*--resume cannot continue it"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_resume_keeps_a_best_pt_newer_than_last_pt(tmp_path):
    save_checkpoint({"model": {}, "best_score": 0.7, "score_key": "miou"}, tmp_path / "best.pt")
    assert _best_of(0.5, tmp_path / "best.pt", "miou") == 0.7
    assert _best_of(None, tmp_path / "best.pt", "miou") == 0.7
    assert _best_of(0.9, tmp_path / "best.pt", "miou") == 0.9
    assert _best_of(0.5, tmp_path / "best.pt", "top1") == 0.5  # another task's score is not comparable
    assert _best_of(0.5, tmp_path / "none.pt", "miou") == 0.5


def test_background_writer_copies_first_and_does_not_block(tmp_path, monkeypatch):
    real = checkpoint.save_checkpoint

    def slow(state, path):
        time.sleep(0.5)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow)
    weights = torch.zeros(4)
    with CheckpointWriter() as writer:
        t0 = time.perf_counter()
        writer.submit({"model": {"w": weights}, "step": 1}, tmp_path / "last.pt")
        assert time.perf_counter() - t0 < 0.3  # the caller did not wait for the write
        weights += 1  # the next training step changes the live tensor in place
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.zeros(4))


def test_background_write_failure_keeps_the_previous_file_and_is_raised(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(2)}, "step": 1}, path)
    crash_torch_save(monkeypatch)
    writer = CheckpointWriter()
    writer.submit({"model": {"w": torch.ones(2)}, "step": 2}, path)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_training_continues_while_a_slow_write_is_pending(tmp_path, data_root, monkeypatch):
    """The epoch after a checkpoint starts before that checkpoint's (slow) write has finished; the run
    waits for it at the end, and the final file is complete."""
    import segkit.engine.train as engine

    real, finished, started = checkpoint.save_checkpoint, {}, {}

    def slow(state, path):
        assert threading.current_thread() is not threading.main_thread()
        time.sleep(1.0)
        real(state, path)
        finished.setdefault((Path(path).name, state["epoch"]), time.monotonic())

    real_epoch = engine.train_epoch

    def timed_epoch(run, epoch, batch, step, carried=None):
        started[epoch] = time.monotonic()
        return real_epoch(run, epoch, batch, step, carried)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow)
    monkeypatch.setattr(engine, "train_epoch", timed_epoch)
    cfg = config_from_dict(tiny_config(data_root, epochs=2, checkpoint_interval=0))
    train(cfg, tmp_path / "run", progress=False)
    assert started[1] < finished[("last.pt", 1)]  # epoch 2 trained while epoch 1's last.pt was being written
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 6 and state["epoch"] == 2


def test_curves_drawn_at_validation_points_only(tmp_path, data_root, monkeypatch):
    import segkit.engine.train as engine
    from segkit.engine.tasks import SegmentationTask

    calls = []
    monkeypatch.setattr(engine, "_PLOT_EVERY_S", 0.0)
    monkeypatch.setattr(SegmentationTask, "plot_curves", lambda self, log_path, out_path: calls.append(out_path))
    cfg = config_from_dict(tiny_config(data_root, epochs=3, val_interval=2), ["output.plots=true"])
    train(cfg, tmp_path / "run", progress=False)
    assert len(calls) == 2  # after epochs 2 and 3 (the validations), not after epoch 1
    assert (tmp_path / "run" / "predictions.png").is_file()


def test_predictions_figure_reads_only_num_vis_samples(tmp_path):
    from segkit.engine.plots import plot_predictions

    class Counting:
        num_classes = 2

        def __init__(self) -> None:
            self.reads = 0

        def __len__(self) -> int:
            return 50

        def __getitem__(self, index: int):
            self.reads += 1
            return torch.rand(1, 16, 16), torch.zeros(16, 16, dtype=torch.long)

    dataset = Counting()
    plot_predictions(torch.nn.Conv2d(1, 2, 1), dataset, torch.device("cpu"), tmp_path / "p.png", 3)
    assert dataset.reads == 3 and (tmp_path / "p.png").is_file()

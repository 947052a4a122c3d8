"""The training engine end to end on tiny generated data (CPU): learning, exact resume, failures, torchrun."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _process_helpers import group_empties

from segkit import SegkitError
from segkit.cli import main
from segkit.config import config_from_dict, load_config
from segkit.engine.checkpoint import load_checkpoint
from segkit.engine.train import train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, **trainer) -> dict:
    return {
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                  "decoder": {"decoder_channels": [16, 16, 16, 16, 16]}},
        "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1},
                 "train_transforms": ["hflip", "vflip", {"name": "rotate", "limit": 20}], "val_transforms": []},
        "loss": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5, "mode": "multiclass"}],
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "poly", "warmup_iters": 2},
        "trainer": {"epochs": 2, "batch_size": 2, "seed": 3, "log_interval": 1, **trainer},
        "output": {"plots": False},
    }


def test_training_lowers_the_loss_and_writes_the_run_directory(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=3), ["output.plots=true"])
    result = train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 3 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert 0.0 <= epochs[-1]["val_miou"] <= 1.0
    for name in ("config.yaml", "last.pt", "best.pt", "curves.png", "predictions.png"):
        assert (tmp_path / "run" / name).is_file(), name
    # Checkpoints are plain: they load with weights_only=True.
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == result.steps == 9
    # The saved config reproduces the run's settings.
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_tensorboard_gets_the_logged_scalars(tmp_path, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config_from_dict(tiny_config(data_root, epochs=2), ["output.tensorboard=true", "trainer.log_interval=1"])
    train(cfg, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == losses
    miou = [(r["step"], r["val_miou"]) for r in records if r["kind"] == "epoch"]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("epoch/val_miou")] == miou


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, data_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    cfg = config_from_dict(tiny_config(data_root, epochs=1), ["output.tensorboard=true"])
    with pytest.raises(SegkitError, match=r"output.tensorboard.*pip install"):
        train(cfg, tmp_path / "run", progress=False)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=2))  # 6 training images: 3 steps per epoch, 6 in all
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", max_steps=2, progress=False)  # stops inside epoch 1
    mid = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (0, 2, 2)
    train(cfg, tmp_path / "split", max_steps=4, resume=True, progress=False)  # stops inside epoch 2
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    cfg = config_from_dict(tiny_config(data_root, epochs=2))
    train(cfg, tmp_path / "run", max_steps=3, progress=False)  # one good epoch: last.pt at step 3
    good = load_checkpoint(tmp_path / "run" / "last.pt")["model"]

    import segkit.engine.train as engine

    real_build = engine.build_loss_fn

    def poisoned(cfg):  # a loss that turns NaN on its second call, as a diverging run does
        loss_fn, calls = real_build(cfg), []

        class Poisoned(torch.nn.Module):
            def forward(self, logits, target):
                calls.append(1)
                value = loss_fn(logits, target)
                return value * float("nan") if len(calls) == 2 else value

        return Poisoned()

    monkeypatch.setattr(engine, "build_loss_fn", poisoned)
    with pytest.raises(SegkitError, match=r"the loss became nan at step 5 \(epoch 2\)"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 3 and all(torch.equal(kept["model"][k], v) for k, v in good.items())


def test_resume_with_another_optimizer_is_refused(tmp_path, data_root):
    train(config_from_dict(tiny_config(data_root, epochs=2)), tmp_path / "run", max_steps=1, progress=False)
    with pytest.raises(SegkitError, match="optimizer.name is 'sgd' here but the run in .* was trained with 'adamw'"):
        train(config_from_dict(tiny_config(data_root, epochs=2), ["optimizer.name=sgd"]), tmp_path / "run", resume=True, progress=False)


def test_existing_run_directory_needs_resume(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root, epochs=1))
    with pytest.raises(SegkitError, match="--resume needs"):
        train(cfg, tmp_path / "fresh", resume=True, progress=False)
    train(cfg, tmp_path / "run", max_steps=1, progress=False)
    with pytest.raises(SegkitError, match="already holds a run"):
        train(cfg, tmp_path / "run", progress=False)


def test_channel_mismatch_between_data_and_model(tmp_path, data_root):
    from segkit.engine.builders import build_datasets

    # Grey images for an RGB model (e.g. ImageNet weights) are repeated, as predict and mixed folders do.
    train_set, val_set = build_datasets(config_from_dict(tiny_config(data_root), ["model.in_channels=3"]))
    assert train_set.in_channels == val_set.in_channels == 3 and train_set[(0, 0)][0].shape[0] == 3
    cfg = config_from_dict(tiny_config(data_root), ["model.in_channels=2"])
    with pytest.raises(SegkitError, match=r"have 1 channel\(s\) but in_channels \(model\.in_channels in a config\) is 2; .*in_channels=1"):
        train(cfg, tmp_path / "run", progress=False)


def test_cli_prints_user_errors_in_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segkit: error: config file") and "Traceback" not in err and err.count("\n") == 1
    config = tmp_path / "c.yaml"
    config.write_text("trainer: {epochs: 1}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "trainer.epoch=3"]) == 2
    assert "did you mean 'trainer.epochs'?" in capsys.readouterr().err


def test_torchrun_two_processes_on_cpu(tmp_path, data_root):
    """torchrun --nproc_per_node 2 scripts/train.py ... --device cpu: gloo, one run directory, rank 0 writes."""
    config = tmp_path / "c.yaml"
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(tiny_config(data_root, epochs=1))
    cfg.schedule.warmup_iters = 50  # longer than the run: a warning every rank would print
    OmegaConf.save(cfg, config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "scripts" / "train.py"), str(config), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 1  # 6 training images / 2 ranks = 3 each; batch 2 with drop_last: 1 step
    assert result.stdout.count("epoch 1/1") == 1  # printed by rank 0 only
    assert result.stderr.count("the warm-up is cut") == 1, result.stderr[-3000:]  # so are the warnings
    # Validation counted each of the 2 validation images once, across both ranks (no padding duplicates).
    matrix = torch.tensor(state["metrics"]["confusion_matrix"])
    assert int(matrix.sum()) == 2 * 64 * 64


def test_sigterm_to_the_process_group_with_loader_workers_saves_last_checkpoint(tmp_path, data_root):
    """SLURM, timeout and systemd signal every process of the job: the DataLoader workers died of it and
    the run failed inside its step ('DataLoader worker is killed by signal') without writing last.pt.
    Now it saves, exits 130, and leaves no worker behind."""
    from omegaconf import OmegaConf

    config = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config(data_root, epochs=50)), config)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts" / "train.py"), str(config), "--out", str(run), "--quiet",
               "data.num_workers=2", "trainer.checkpoint_interval=3600"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        log = run / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text().count('"kind": "train"') >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # the main process and its loader workers alike
        out, err = process.communicate(timeout=120)
        assert process.returncode == 130, err[-2000:]
        assert "interrupted" in out and "Traceback" not in err
        assert load_checkpoint(run / "last.pt")["step"] >= 2
        assert group_empties(process.pid, 30), "loader workers outlived the training process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _sleep_after_worker_init(ready) -> None:
    from segkit.engine.loop import ignore_foreign_sigterm

    ignore_foreign_sigterm(0)
    ready.set()
    time.sleep(60)


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="sigtimedwait (Linux) only")
def test_loader_workers_ignore_a_foreign_sigterm_but_not_their_parents():
    """The parent's multiprocessing terminates leftover workers with SIGTERM at exit and waits for them:
    a worker that ignored every SIGTERM hung that exit. Only a SIGTERM from elsewhere is ignored."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_sleep_after_worker_init, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
        worker.join(1.0)
        assert worker.is_alive()
        worker.terminate()  # sent by the parent
        worker.join(30)
        assert not worker.is_alive() and worker.exitcode == 0  # torch's SIGCHLD check takes any other code for a failure
    finally:
        if worker.is_alive():
            worker.kill()


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="sigtimedwait (Linux) only")
def test_a_loader_worker_its_parent_terminates_is_not_reported_as_failed():
    """multiprocessing's exit terminates workers a failed run left alive; torch's SIGCHLD check then
    printed 'DataLoader worker exited unexpectedly' under the run's one-line error."""
    from torch.utils.data import DataLoader

    from segkit.engine.loop import ignore_foreign_sigterm

    loader = DataLoader(list(range(8)), batch_size=1, num_workers=1, worker_init_fn=ignore_foreign_sigterm,
                        persistent_workers=True)
    batches = iter(loader)
    next(batches)
    worker = batches._workers[0]
    os.kill(worker.pid, signal.SIGTERM)  # what multiprocessing's exit does
    worker.join(30)
    assert worker.exitcode == 0
    time.sleep(0.5)  # torch's SIGCHLD handler would raise here
    del batches


def test_sigint_saves_last_checkpoint_and_resume_finishes(tmp_path, data_root):
    """Ctrl-C mid-run: the step in flight finishes, last.pt records the position, --resume completes the run."""
    import signal
    import time

    from omegaconf import OmegaConf

    config = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config(data_root, epochs=50)), config)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts" / "train.py"), str(config), "--out", str(run), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count('"kind": "train"') >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted" in out and "Traceback" not in err
    state = load_checkpoint(run / "last.pt")
    assert 2 <= state["step"] < 150
    resumed = subprocess.run([*command, "--resume", "trainer.epochs=50", "--max-steps", str(state["step"] + 1)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "last.pt")["step"] == state["step"] + 1


@pytest.mark.parametrize(("dtype", "scaler"), [(torch.bfloat16, False), (torch.float16, True)], ids=["bf16", "fp16+scaler"])
def test_gpu_code_paths_run_and_resume_exactly_on_the_cpu(tmp_path, data_root, monkeypatch, dtype, scaler):
    """The AMP / grad-scaler / channels_last branches (taken on CUDA only) run on the CPU here, so CI
    covers them: training learns, the scaler's state is checkpointed, and resume stays exact."""
    import segkit.engine.train as engine

    monkeypatch.setattr(engine, "_amp_settings", lambda cfg, device: (True, dtype, scaler))
    monkeypatch.setattr(engine, "_use_channels_last", lambda cfg, device: True)
    cfg = config_from_dict(tiny_config(data_root, epochs=2))
    result = train(cfg, tmp_path / "straight", progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in epochs if r["kind"] == "epoch"]
    assert all(math.isfinite(v) for v in losses) and result.steps == 6
    state = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert bool(state["scaler"]) == scaler  # an enabled scaler saves its scale and growth tracker
    if scaler:
        assert state["scaler"]["scale"] > 0
    train(cfg, tmp_path / "split", max_steps=2, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = state["model"], load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_misspelt_data_option_names_the_key_and_the_fix(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root), ["data.options={binry: true}"])
    with pytest.raises(SegkitError, match=r"data.options.binry .*did you mean 'binary'"):
        train(cfg, tmp_path / "run", progress=False)


def test_gradient_accumulation_matches_a_hand_written_loop(tmp_path, data_root):
    """grad_accum=2: windows of two batches, each batch's loss / 2, one step per window, the last
    window of the epoch short (3 batches -> steps after batches 2 and 3) and averaged over the one
    batch it holds (it was divided by 2 as well: half the gradient); the same as by hand."""
    from torch.utils.data import default_collate

    from segkit.engine.builders import build_datasets, build_loss_fn, build_model_from_config
    from segkit.engine.distributed import SeededSampler

    overrides = ["optimizer.name=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.lr=0.05",
                 "schedule.name=constant", "schedule.warmup_iters=0"]
    cfg = config_from_dict(tiny_config(data_root, epochs=1, grad_accum=2), overrides)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 2
    engine = load_checkpoint(tmp_path / "run" / "last.pt")["model"]

    torch.manual_seed(cfg.trainer.seed)  # the engine's order: seed, datasets, model
    train_set, _ = build_datasets(cfg)
    train_set.dataset.device_scaling = True  # as the engine loads: standardised in the step (DeviceScaling)
    from segkit.engine.inputs import DeviceScaling

    scaling = DeviceScaling.of(train_set)
    model = build_model_from_config(cfg).train()
    loss_fn = build_loss_fn(cfg)
    sampler = SeededSampler(train_set, shuffle=True, seed=cfg.trainer.seed)
    sampler.set_epoch(0)
    items = list(sampler)
    batches = [default_collate([train_set[item] for item in items[i : i + 2]]) for i in range(0, 6, 2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for window in (batches[:2], batches[2:]):
        optimizer.zero_grad()
        for images, masks in window:
            (loss_fn(model(scaling(images)), masks.long()) / len(window)).backward()
        optimizer.step()
    by_hand = model.state_dict()
    for key in engine:
        torch.testing.assert_close(engine[key], by_hand[key], rtol=1e-5, atol=1e-6, msg=key)

    single = config_from_dict(tiny_config(data_root, epochs=1), overrides)  # no accumulation: 3 steps, other weights
    train(single, tmp_path / "single", progress=False)
    other = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    assert any(not torch.allclose(other[k], engine[k]) for k in engine if engine[k].is_floating_point())


def test_the_logged_learning_rate_is_the_one_each_step_ran_at(tmp_path, data_root, caplog):
    """metrics.jsonl logged the rate after the schedule had moved on (step 1 showed step 2's); a
    warm-up longer than the run is cut, and said."""
    overrides = ["optimizer.lr=0.01", "schedule.name=constant", "schedule.warmup_iters=2", "schedule.warmup_factor=0.1"]
    train(config_from_dict(tiny_config(data_root, epochs=1), overrides), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if row.get("kind") == "train"]
    assert lrs == pytest.approx([0.001, 0.0055, 0.01])  # 3 steps: the ramp from 0.1 x lr, then the rate itself
    with caplog.at_level("WARNING", logger="segkit"):
        train(config_from_dict(tiny_config(data_root, epochs=1), ["schedule.warmup_iters=1000"]), tmp_path / "long", progress=False)
    assert "schedule.warmup_iters is 1000 but the run has 3 optimizer steps: the warm-up is cut to 2" in caplog.text


def _lrs(run: Path) -> list[float]:
    return [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_a_run_resumed_on_another_process_count_ends_its_schedule_where_the_run_ends(tmp_path, data_root):
    """The schedule was replayed to the saved step count, which counts steps of the old length: from 2
    processes to 1 the run ended before its cosine did (lr 0.0019 against 6e-5)."""
    from segkit.engine.checkpoint import save_checkpoint

    overrides = ["schedule.name=cosine", "schedule.warmup_iters=0"]
    cfg = config_from_dict(tiny_config(data_root, epochs=3), overrides)  # 6 training images, batch 2: 3 steps an epoch
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "moved", max_steps=4, progress=False)  # epoch 2, batch 1
    state = load_checkpoint(tmp_path / "moved" / "last.pt")
    # As if two processes had saved it: one batch each of epoch 2 is batch 2 of one process; 3 steps in all before.
    state.update(world_size=2, step=2, total_steps=6)
    state["epoch_progress"]["seconds"] = 1000.0  # the epoch's time: the rest of it is negligible beside this
    save_checkpoint(state, tmp_path / "moved" / "last.pt")
    train(cfg, tmp_path / "moved", resume=True, progress=False)
    assert _lrs(tmp_path / "moved")[-1] == pytest.approx(_lrs(tmp_path / "straight")[-1], rel=1e-9)
    # Epoch 2 trained 2 images on each of the 2 processes, then 2 more on 1: 6 images (not 2 + 2).
    records = [json.loads(line) for line in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()]
    epoch2 = next(r for r in records if r["kind"] == "epoch" and r["epoch"] == 2 and r["step"] > 2)
    assert epoch2["images_per_s"] * 1000 == pytest.approx(6, rel=0.02)


def test_resume_refuses_another_seed_and_says_when_a_run_is_finished(tmp_path, data_root, capsys):
    cfg = config_from_dict(tiny_config(data_root, epochs=1))
    train(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(SegkitError, match=r"trainer\.seed is 7 here but the run .* was trained with 3"):
        train(config_from_dict(tiny_config(data_root, epochs=2, seed=7)), tmp_path / "run", resume=True, progress=False)
    # A finished run resumed with no more epochs: nothing to do, said (scripts resume whatever has a last.pt).
    capsys.readouterr()
    shorter = config_from_dict(tiny_config(data_root, epochs=1), ["trainer.log_interval=5"])
    result = train(shorter, tmp_path / "run", resume=True, progress=False)
    out = capsys.readouterr().out
    assert "has trained 1 epochs already and trainer.epochs is 1: nothing to resume (pass trainer.epochs=2" in out
    assert "resumed from" not in out  # nothing was resumed
    assert result.steps == load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # still the run's own

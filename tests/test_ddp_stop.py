"""torchrun/DDP ranks stop together: two gloo processes on the CPU, started by torchrun itself (a
SIGTERM to torchrun) or each as torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
in the environment) so that the test knows each rank's pid and exit code. A SIGTERM to one rank, or a NaN loss on one rank, stops both at the same
step, within seconds; last.pt is written once and loads; both exit with the documented code
(130 after a signal, 2 for a SegkitError). A rank-0-only error (the run directory holds a run)
reaches rank 1 instead of leaving it in a barrier. Validation sees rank 0's BatchNorm statistics
on both ranks. Every wait has a timeout: a hang fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segkit.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds for a whole two-rank run; each test takes 10-30 s on 2 cores

# The rank script: `segkit train` with optional test hooks, applied by monkeypatching in this
# process only (segkit itself has no test hooks). HOOK=nan: rank HOOK_RANK's loss is NaN at its
# HOOK_AT-th batch. HOOK=bn: each rank saves its BatchNorm buffers before and after the broadcast
# that precedes validation.
RANK_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch
    import segkit.engine.train as engine
    from segkit.cli import main

    hook, rank = os.environ.get("HOOK"), int(os.environ["RANK"])
    if hook == "nan" and rank == int(os.environ["HOOK_RANK"]):
        real_build, calls = engine.build_loss_fn, []

        class Poisoned(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, logits, target, **extra):
                calls.append(1)
                value = self.inner(logits, target, **extra)
                return value * float("nan") if len(calls) == int(os.environ["HOOK_AT"]) else value

        engine.build_loss_fn = lambda cfg: Poisoned(real_build(cfg))
    if hook == "bn":
        real_broadcast, out = engine.broadcast_batchnorm_buffers, os.environ["HOOK_OUT"]

        def broadcast(model, info):
            buffers = lambda: {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
            torch.save(buffers(), f"{out}/before{rank}.pt")
            real_broadcast(model, info)
            torch.save(buffers(), f"{out}/after{rank}.pt")

        engine.broadcast_batchnorm_buffers = broadcast
    if hook == "comm":  # count DDP's gradient exchanges (one call per bucket per all-reduce)
        import atexit
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        calls, out = [], os.environ["HOOK_OUT"]

        class CountingDDP(torch.nn.parallel.DistributedDataParallel):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)

                def hook(state, bucket):
                    calls.append(1)
                    return default_hooks.allreduce_hook(None, bucket)

                self.register_comm_hook(None, hook)

        torch.nn.parallel.DistributedDataParallel = CountingDDP
        atexit.register(lambda: open(f"{out}/comm{rank}.txt", "w").write(str(len(calls))))
    sys.exit(main(["train", *sys.argv[1:]]))
''')


def tiny_config(root: Path, **trainer) -> dict:
    return {
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                  "decoder": {"decoder_channels": [16, 16, 16, 16, 16]}},
        "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1},
                 "train_transforms": ["hflip", "vflip"], "val_transforms": []},
        "loss": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5, "mode": "multiclass"}],
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "poly", "warmup_iters": 2},
        # 6 training images, 2 ranks, batch 1: 3 steps per epoch
        "trainer": {"epochs": 2, "batch_size": 1, "seed": 3, "log_interval": 2, **trainer},
        "output": {"plots": False},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path: Path, config: dict, run: Path, hook: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start the two ranks of `torchrun --nproc-per-node 2 scripts/train.py CONFIG --out RUN --device cpu`."""
    (tmp_path / "c.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **(hook or {})}
        command = [sys.executable, str(script), str(tmp_path / "c.yaml"), "--out", str(run), "--device", "cpu", "--quiet"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """Wait for every rank (killing all of them if one hangs); ``(exit code, stdout, stderr)`` per rank."""
    results = []
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((process.returncode, out, err))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        outputs = [p.communicate() for p in processes]
        pytest.fail(f"a rank hung (no exit within {timeout} s); stderr: {[e[-1500:] for _, e in outputs]}")
    return results


def test_sigterm_on_one_rank_stops_both_at_the_same_step(tmp_path, data_root):
    run = tmp_path / "run"
    processes = launch(tmp_path, tiny_config(data_root, epochs=200), run)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.exists() and log.read_text().count('"kind": "train"') >= 2):
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            pytest.fail(f"the run did not get going: {[r[2][-1500:] for r in finish(processes, 10)]}")
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGTERM)  # rank 1 only, as a scheduler preempting one node would
    sent = time.monotonic()
    results = finish(processes)
    assert time.monotonic() - sent < 30, "the ranks took more than 30 s to stop"
    for code, out, err in results:
        assert code == 130, err[-2000:]  # both ranks: the shell's code for "stopped by a signal"
        assert "Traceback" not in err
    assert "interrupted" in results[0][1]  # rank 0 prints; rank 1 is silent
    state = load_checkpoint(run / "last.pt")  # written once, by rank 0, and intact
    # Both stopped at one step: a log point (every 2 steps) or the end of an epoch (every 3 steps).
    assert state["step"] >= 2 and (state["step"] % 2 == 0 or state["step"] % 3 == 0)
    assert state["world_size"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not list(run.glob(".last.pt.*"))  # no temporary file left


def test_sigterm_to_torchrun_stops_its_ranks_together(tmp_path, data_root):
    """The real launcher: torchrun passes a SIGTERM (a scheduler's preemption) to its ranks, which stop
    at one step and save last.pt; torchrun then exits 1 with its own SignalException, as it always does."""
    config, run = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text(OmegaConf.to_yaml(OmegaConf.create(tiny_config(data_root, epochs=200))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "scripts" / "train.py"), str(config), "--out", str(run), "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.exists() and log.read_text().count('"kind": "train"') >= 2):
        if torchrun.poll() is not None or time.monotonic() > deadline:
            torchrun.kill()
            pytest.fail(f"the run did not get going: {torchrun.communicate()[1][-2000:]}")
        time.sleep(0.1)
    torchrun.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        out, err = torchrun.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        torchrun.kill()
        pytest.fail(f"torchrun's ranks hung after SIGTERM: {torchrun.communicate()[1][-2000:]}")
    assert time.monotonic() - sent < 30
    assert torchrun.returncode == 1 and "SignalException" in err
    assert "interrupted" in out and "KeyboardInterrupt" not in err and "segkit/engine" not in err, err[-3000:]
    state = load_checkpoint(run / "last.pt")
    assert state["step"] >= 2 and state["world_size"] == 2


def test_nan_loss_on_one_rank_stops_both_with_the_same_error(tmp_path, data_root):
    """Rank 1's loss is NaN at its 4th batch (step 4, epoch 2): both ranks raise at the log point of
    step 4, naming step 4; last.pt is the end of epoch 1 (step 3)."""
    run = tmp_path / "run"
    hook = {"HOOK": "nan", "HOOK_RANK": "1", "HOOK_AT": "4"}
    results = finish(launch(tmp_path, tiny_config(data_root, epochs=20, checkpoint_interval=0), run, hook))
    for code, _, err in results:
        assert code == 2, err[-2000:]  # segkit's exit code for a SegkitError, on both ranks
        assert "segkit: error: the loss became nan at step 4 (epoch 2)" in err and "Traceback" not in err
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_rank_0_only_error_reaches_every_rank(tmp_path, data_root):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")  # the directory holds a run: only rank 0 checks
    started = time.monotonic()
    results = finish(launch(tmp_path, tiny_config(data_root), run), timeout=60)
    assert time.monotonic() - started < 60
    for code, _, err in results:
        assert code == 2, err[-2000:]
        assert "already holds a run; pass --resume" in err and "Traceback" not in err


def test_validation_sees_rank_0s_batchnorm_statistics_on_every_rank(tmp_path, data_root):
    run = tmp_path / "run"
    hook = {"HOOK": "bn", "HOOK_OUT": str(tmp_path)}
    results = finish(launch(tmp_path, tiny_config(data_root, epochs=1), run, hook))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    before = [torch.load(tmp_path / f"before{r}.pt", weights_only=True) for r in range(2)]
    after = [torch.load(tmp_path / f"after{r}.pt", weights_only=True) for r in range(2)]
    running = [k for k in before[0] if "running_mean" in k]
    assert running
    # Each rank's own batches moved its statistics apart (what validation used to see) ...
    assert any(not torch.equal(before[0][k], before[1][k]) for k in running)
    # ... and both ranks validate with rank 0's.
    for key in after[0]:
        assert torch.equal(after[0][key], after[1][key]), key
        assert torch.equal(after[0][key], before[0][key]), key
    saved = load_checkpoint(run / "last.pt")["model"]
    for key in after[0]:
        assert torch.equal(saved[key], after[0][key]), key  # the model scored is the model saved


def test_gradient_accumulation_exchanges_gradients_once_per_window(tmp_path, data_root):
    """Under DDP every backward all-reduced the gradients; inside an accumulation window only the
    last one needs to (no_sync for the others): 3 batches per rank in windows of 2 and 1 make 2
    exchanges where grad_accum 1 makes 3."""
    counts = {}
    for accum in (1, 2):
        run = tmp_path / f"run{accum}"
        results = finish(launch(tmp_path, tiny_config(data_root, epochs=1, grad_accum=accum), run,
                                {"HOOK": "comm", "HOOK_OUT": str(tmp_path)}))
        assert [code for code, _, _ in results] == [0, 0], [err[-1500:] for _, _, err in results]
        counts[accum] = [int((tmp_path / f"comm{rank}.txt").read_text()) for rank in range(2)]
    # (DDP regroups its buckets after the first exchange, so calls are not a fixed multiple of exchanges:
    # 3 exchanges gave 7 calls here, 2 gave 4; every backward exchanging gave 7 for both.)
    assert counts[1][0] == counts[1][1] and counts[2][0] == counts[2][1]
    assert 0 < counts[2][0] < counts[1][0], counts

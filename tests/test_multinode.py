"""The README's multi-node recipe, on one machine: two torchrun "nodes" (--nnodes 2, c10d rendezvous on
127.0.0.1, gloo on the CPU) train the same run as one node with two processes, also when stopped
(--max-steps) and resumed (--resume) on both nodes; and an elastic restart for real: torchrun
--max-restarts 1, one worker SIGKILLed mid-epoch, the group restarts from last.pt and ends with the
weights of an uninterrupted run. Every subprocess has a timeout: a hang fails the test, not CI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segkit import SegkitError

from segkit.engine.checkpoint import load_checkpoint
from segkit.engine.train import train
from tests.test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_command(port: int, config: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "segkit-test", str(REPO / "scripts" / "train.py"), str(config),
            "--out", str(out), "--device", "cpu", "--quiet", *options]


def _standalone_command(config: Path, out: Path, *torchrun_options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *torchrun_options,
            str(REPO / "scripts" / "train.py"), str(config), "--out", str(out), "--device", "cpu", "--quiet"]


def _run_two_nodes(config: Path, out: Path, *options: str) -> list[tuple[str, str]]:
    """Both "nodes" of a --nnodes 2 run, to the end (both killed if either hangs); their (stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = _node_command(_free_port(), config, out, *options)
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            _stop(node)
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    return outputs


def _run_standalone(config: Path, out: Path) -> None:
    """`torchrun --standalone --nproc-per-node 2` to the end (stopped, workers included, if it hangs)."""
    torchrun = subprocess.Popen(_standalone_command(config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, err = torchrun.communicate(timeout=300)
    finally:
        _stop(torchrun)
    assert torchrun.returncode == 0, err[-3000:]


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers), from /proc; [] once it has exited."""
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def _stop(torchrun: subprocess.Popen) -> None:
    """End a torchrun that is still running, workers included (they run in sessions of their own and
    would outlive a killed torchrun): SIGTERM first, which torchrun passes on; SIGKILL after 30 s."""
    if torchrun.poll() is not None:
        return
    workers = _children(torchrun.pid)
    torchrun.terminate()
    try:
        torchrun.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        torchrun.kill()
        torchrun.communicate()


def _assert_same_weights(a: Path, b: Path) -> None:
    one, two = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert torch.equal(value, two[key]), key


# 6 training images on 2 processes, batch 1: 3 steps per epoch, 12 in all; last.pt after every epoch.
EPOCHS, STEPS_PER_EPOCH = 4, 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """(config, last.pt) of an uninterrupted `torchrun --standalone --nproc-per-node 2` run of EPOCHS epochs."""
    tmp = tmp_path_factory.mktemp("reference")
    config = tmp / "c.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config(data_root, epochs=EPOCHS, batch_size=1, checkpoint_interval=0)), config)
    _run_standalone(config, tmp / "run")
    assert load_checkpoint(tmp / "run" / "last.pt")["step"] == EPOCHS * STEPS_PER_EPOCH
    return config, tmp / "run" / "last.pt"


def test_two_nodes_train_as_one_node_with_two_processes(tmp_path, data_root):
    config = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config(data_root, epochs=2)), config)
    _run_standalone(config, tmp_path / "one")
    outputs = _run_two_nodes(config, tmp_path / "two")
    assert sum(out.count("epoch 2/2") for out, _ in outputs) == 1  # global rank 0 alone prints (and writes)
    assert sum(out.count("best mIoU") for out, _ in outputs) == 1

    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert two["world_size"] == 2 and two["step"] == one["step"] == 2
    assert two["metrics"]["miou"] == one["metrics"]["miou"]
    for key, value in one["model"].items():
        assert torch.equal(value, two["model"][key]), key



def test_an_elastic_restart_resumes_from_last_pt(tmp_path, data_root, monkeypatch):
    """A group torchrun --max-restarts started again (TORCHELASTIC_RESTART_COUNT > 0) runs the same
    command: it continues from last.pt, exactly; before the first last.pt it starts over."""
    from segkit.config import config_from_dict

    cfg = config_from_dict(tiny_config(data_root, epochs=2, checkpoint_interval=1e9))
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "run", max_steps=2, progress=False)  # the first attempt, stopped inside epoch 1
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    result = train(cfg, tmp_path / "run", progress=False)  # no --resume: the restart finds last.pt
    assert result.steps == 6
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt")["model"], load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key

    (tmp_path / "early").mkdir()  # failed before its first last.pt: only a partial log
    (tmp_path / "early" / "metrics.jsonl").write_text('{"kind": "train", "epoch": 1, "step": 1, "loss": 1.0}\n')
    assert train(cfg, tmp_path / "early", progress=False).steps == 6
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    with pytest.raises(SegkitError, match="already holds a run"):  # outside a restart the guard stays
        train(cfg, tmp_path / "early", progress=False)


def test_a_two_node_run_stopped_and_resumed_ends_as_an_uninterrupted_one(tmp_path, reference):
    """--max-steps 5 on both nodes stops inside epoch 2; --resume on both nodes continues from last.pt
    to the weights of the uninterrupted two-process run."""
    config, straight = reference
    _run_two_nodes(config, tmp_path / "run", "--max-steps", "5")
    mid = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"], mid["world_size"]) == (1, 2, 5, 2)
    outputs = _run_two_nodes(config, tmp_path / "run", "--resume")
    assert sum(out.count("resumed from") for out, _ in outputs) == 1  # global rank 0 alone prints
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH and final["epoch"] == EPOCHS
    _assert_same_weights(straight, tmp_path / "run" / "last.pt")


def _rank_of(pid: int) -> str | None:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((e[5:].decode() for e in entries if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc (Linux)")
def test_torchrun_max_restarts_survives_a_killed_worker(tmp_path, reference):
    """The README's elastic recipe for real: `torchrun --standalone --nproc-per-node 2 --max-restarts 1`,
    rank 1 SIGKILLed inside epoch 2 (after last.pt of epoch 1). torchrun stops rank 0 (its next
    collective fails: "Connection closed by peer"), starts both again, and segkit continues from
    last.pt by itself: exit 0, every step done, and the weights of the uninterrupted run (resume is
    exact, so the redone steps give the same result).

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (in torchrun's environment): without it torchrun keeps one
    TCPStore (same MASTER_PORT) for every restart, and the restarted group's gloo process group can
    read the dead workers' addresses from it: "Connection refused" (the restart fails) or a hang in
    init_process_group, depending on which rank publishes first."""
    config, straight = reference
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    torchrun = subprocess.Popen(_standalone_command(config, run, "--max-restarts", "1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        log, deadline = run / "metrics.jsonl", time.monotonic() + 240
        # Mid-epoch: epoch 1's last.pt is written and a step of epoch 2 (step 4) is logged.
        while not ((run / "last.pt").exists() and log.exists() and any(
                r.get("kind") == "train" and r["step"] > STEPS_PER_EPOCH for r in map(json.loads, log.read_text().splitlines()))):
            assert torchrun.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
            time.sleep(0.05)
        saved = load_checkpoint(run / "last.pt")["step"]  # the checkpoint the restart can at least count on
        victim = next(pid for pid in _children(torchrun.pid) if _rank_of(pid) == "1")
        os.kill(victim, signal.SIGKILL)
        out, err = torchrun.communicate(timeout=240)
    finally:
        _stop(torchrun)
    assert torchrun.returncode == 0, err[-4000:]
    assert f"(pid: {victim})" in err and "exitcode: -9" in err  # torchrun saw the kill and restarted the group
    resumed = [line for line in out.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, out  # the restarted group continued from last.pt, without --resume
    resumed_step = int(resumed[0].rsplit("step ", 1)[1])
    # At most checkpoint_interval of work lost: the restart continued from an epoch end (every epoch
    # is saved here) at or after the last.pt that existed when the worker died.
    assert resumed_step >= saved and resumed_step % STEPS_PER_EPOCH == 0
    final = load_checkpoint(run / "last.pt")
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH and final["epoch"] == EPOCHS and final["world_size"] == 2
    _assert_same_weights(straight, run / "last.pt")


def _restart_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from segkit.engine.distributed import DistInfo, elastic_restart

    os.environ["TORCHELASTIC_RESTART_COUNT"] = "1" if rank == 1 else "0"  # only rank 1's node saw a failure
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        agreed = elastic_restart(DistInfo(rank=rank, world_size=2), torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}").write_text(str(agreed))


def test_every_rank_sees_a_restart_that_one_node_counted(tmp_path, monkeypatch):
    """torchrun counts restarts per node: a rank whose node restarted nothing still continues the run."""
    import torch.multiprocessing as mp

    from segkit.engine.distributed import DistInfo, elastic_restart

    mp.spawn(_restart_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["True", "True"]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # one process: its own count
    assert elastic_restart(DistInfo(), torch.device("cpu")) is False
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert elastic_restart(DistInfo(), torch.device("cpu")) is True

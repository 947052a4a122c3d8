"""The README's multi-node recipe, on one machine: two torchrun "nodes" (--nnodes 2, c10d rendezvous on
127.0.0.1, gloo on the CPU) train the same run as one node with two processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def _node_command(port: int, config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "segkit-test", str(REPO / "scripts" / "train.py"), str(config),
            "--out", str(out), "--device", "cpu", "--quiet"]


def test_two_nodes_train_as_one_node_with_two_processes(tmp_path, data_root):
    config = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config(data_root, epochs=2)), config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(REPO / "scripts" / "train.py"), str(config), "--out", str(tmp_path / "one"), "--device", "cpu",
                             "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    command = _node_command(_free_port(), config, tmp_path / "two")
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert sum(out.count("epoch 2/2") for out, _ in outputs) == 1  # global rank 0 alone prints (and writes)

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

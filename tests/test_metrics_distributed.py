"""ConfusionMatrix and TopKAccuracy under torch.distributed: two gloo processes on the CPU give the
numbers one process gives over the same data, and syncing twice counts nothing twice."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segkit.metrics import ConfusionMatrix, TopKAccuracy

NUM_CLASSES = 4


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Four batches of (segmentation logits, masks, classifier logits, labels); class 3 never occurs."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(4):
        logits = torch.randn(2, NUM_CLASSES, 8, 8, generator=gen)
        logits[:, 3] = -10
        mask = torch.randint(0, 3, (2, 8, 8), generator=gen)
        mask[torch.rand(mask.shape, generator=gen) < 0.2] = 255
        out.append((logits, mask, torch.randn(5, 10, generator=gen), torch.randint(0, 10, (5,), generator=gen)))
    return out


def evaluate(rank: int, world: int) -> dict:
    cm, topk = ConfusionMatrix(NUM_CLASSES), TopKAccuracy()
    for logits, mask, cls_logits, labels in batches()[rank::world]:
        cm.update(logits, mask)
        topk.update(cls_logits, labels)
    first = cm.compute()
    second = cm.compute()  # a second sync must not add the other process's counts again
    cm.sync()
    return {"first": first, "second": second, "third": cm.compute(), "topk": topk.compute(), "topk_again": topk.compute()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = evaluate(rank, world)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same(a: object, b: object) -> bool:
    """Equality with NaN == NaN (json round-trips NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b or (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-12))


def test_two_gloo_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(json.dumps(evaluate(0, 1)))
    assert math.isnan(single["first"]["iou"][3])
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in ("first", "second", "third"):
            assert same(got[key], single["first"]), (rank, key)
        assert same(got["topk"], single["topk"]) and same(got["topk_again"], single["topk"])

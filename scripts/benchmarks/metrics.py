"""ConfusionMatrix.update against torchmetrics' MulticlassJaccardIndex.update (same results checked)."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from benchmarks._timing import comparison_row, time_alternating
from segkit.metrics import ConfusionMatrix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="images per update (default 8)")
    parser.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    parser.add_argument("--classes", type=int, default=21, help="number of classes (default 21)")
    parser.add_argument("--ignore-fraction", type=float, default=0.1, help="share of pixels labelled 255 (default 0.1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7; torchmetrics is slow)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or this process's CPU time (steadier on a busy machine; use --threads 1)")
    parser.add_argument("--inputs", default="labels,logits", help="comma-separated: labels and/or logits (default both)")


def _agree(pred: torch.Tensor, target: torch.Tensor, classes: int) -> bool:
    """One update each from fresh metrics: the same confusion matrix and the same per-class IoU."""
    ours = ConfusionMatrix(classes, ignore_index=255)
    ours.update(pred, target)
    peer = MulticlassJaccardIndex(classes, ignore_index=255, average=None).to(target.device)
    peer.update(pred, target)
    same_matrix = torch.equal(ours.matrix.cpu(), peer.confmat.cpu().long())
    same_iou = torch.allclose(torch.tensor(ours.compute()["iou"], dtype=torch.float64), peer.compute().double().cpu(), rtol=1e-6, equal_nan=True)
    return same_matrix and same_iou


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.size, args.size)
    target = torch.randint(0, args.classes, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < args.ignore_fraction] = 255
    # a plausible prediction: right on 70 % of the pixels
    noise = torch.randint(0, args.classes, shape, generator=gen)
    labels = torch.where(torch.rand(shape, generator=gen) < 0.7, target.clamp(max=args.classes - 1), noise)
    logits = torch.randn(args.batch, args.classes, args.size, args.size, generator=gen)
    target = target.to(device)
    inputs = {"labels": labels.to(device), "logits": logits.to(device)}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []
    for kind in args.inputs.split(","):
        pred = inputs[kind]
        agree = _agree(pred, target, args.classes)
        ours = ConfusionMatrix(args.classes, ignore_index=255)
        peers = {
            "torchmetrics MulticlassJaccardIndex": MulticlassJaccardIndex(args.classes, ignore_index=255).to(device),
            "torchmetrics, validate_args=False": MulticlassJaccardIndex(args.classes, ignore_index=255, validate_args=False).to(device),
        }
        candidates = {"segkit": lambda: ours.update(pred, target)}
        candidates |= {name: (lambda m=metric: m.update(pred, target)) for name, metric in peers.items()}
        times = time_alternating(candidates, args.repeats, args.warmup, sync, args.clock)
        case = f"{kind} {args.batch}x{args.size}x{args.size} C={args.classes} {device.type}"
        for name in peers:
            rows.append(comparison_row(case, times["segkit"], name, times[name], same_result=agree,
                                       threads=torch.get_num_threads(), clock=args.clock))
    return rows

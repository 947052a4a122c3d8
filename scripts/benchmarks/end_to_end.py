"""Wall time from command to number: `segkit train` then `segkit evaluate` against a plain PyTorch loop (same model, data, schedule, seed).

Each side is a fresh Python process, timed from its start to its exit, as a user meets it:
``segkit train CONFIG --out RUN`` followed by ``segkit evaluate --checkpoint RUN`` (two processes,
two start-ups; evaluate prints the metrics, its mIoU is read from there) against one process running the loop written below: the torchvision-reference
loop (DataLoader with shuffle, forward, loss, backward, optimizer and scheduler step), validation
at the same epochs with the best weights saved by ``torch.save``, then the best weights evaluated
on the validation split. Model, datasets, loss, optimizer and schedule come from the same config
(default ``configs/quickstart.yaml``, its data generated into a temporary folder) and seed.

Two cases, the issue-18 shapes on generated data: ``many tiny epochs`` (12 training tiles of
``--size`` pixels, batch 4: 3 steps per epoch, ``--tiny-epochs`` of them) and ``few long epochs``
(``--long-n`` images, 75 % training, batch 4, ``--long-epochs``). ``ratio`` = segkit / plain loop
(goal <= 1.10); the runs alternate, ``--rounds`` times each, and the medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"), help="training config (default: the quickstart)")
    parser.add_argument("--size", type=int, default=128, help="generated image size (default 128)")
    parser.add_argument("--tiny-epochs", type=int, default=60, help="case a: epochs of 3 steps (default 60)")
    parser.add_argument("--long-n", type=int, default=160, help="case b: generated images, 75%% for training (default 160: 30 steps per epoch)")
    parser.add_argument("--long-epochs", type=int, default=6, help="case b: epochs (default 6)")
    parser.add_argument("--rounds", type=int, default=1, help="segkit and plain runs per case, alternating (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both sides, e.g. trainer.val_interval=1")


def _cases(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    batch = "trainer.batch_size=4"
    return [
        (f"many tiny epochs: 12 train tiles {args.size}^2, {args.tiny_epochs} x 3 steps",
         ["data.synthetic.n=16", f"data.synthetic.size={args.size}", batch, f"trainer.epochs={args.tiny_epochs}"]),
        (f"few long epochs: {args.long_n * 3 // 4} train tiles {args.size}^2, {args.long_epochs} x {args.long_n * 3 // 4 // 4} steps",
         [f"data.synthetic.n={args.long_n}", f"data.synthetic.size={args.size}", batch, f"trainer.epochs={args.long_epochs}",
          f"trainer.val_interval={max(args.long_epochs // 3, 1)}"]),
    ]


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _segkit_run(args: argparse.Namespace, overrides: list[str], run_dir: Path, env: dict[str, str]) -> dict[str, float]:
    train_s, _ = _timed([sys.executable, "-m", "segkit", "train", args.config, "--out", str(run_dir), "--quiet",
                         "--device", args.device, *overrides], env)
    # The number, as the plain loop gives it: printed (no --out, so no report files or figures)
    evaluate_s, out = _timed([sys.executable, "-m", "segkit", "evaluate", "--checkpoint", str(run_dir), "--device", args.device], env)
    miou = next((float(line.split()[-1]) for line in out.splitlines() if line.startswith("mIoU:")), float("nan"))
    return {"train_s": train_s, "evaluate_s": evaluate_s, "total_s": train_s + evaluate_s, "miou": miou}


def _plain_run(args: argparse.Namespace, overrides: list[str], run_dir: Path, env: dict[str, str]) -> dict[str, float]:
    seconds, out = _timed([sys.executable, __file__, "--plain", args.config, str(run_dir), args.device, *overrides], env)
    return {"total_s": seconds, "miou": float(out.strip().splitlines()[-1].split()[-1])}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    env = {**os.environ}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (case, overrides) in enumerate(_cases(args)):
            overrides = [f"data.root={Path(tmp) / f'data{index}'}", *overrides, *args.overrides]
            segkit, plain = [], []
            for round_ in range(args.rounds):  # the order alternates from round to round
                sides = [lambda r=round_: segkit.append(_segkit_run(args, overrides, Path(tmp) / f"s{index}_{r}", env)),
                         lambda r=round_: plain.append(_plain_run(args, overrides, Path(tmp) / f"p{index}_{r}", env))]
                if round_ == 0:  # generate the case's data once, outside the timings
                    _timed([sys.executable, __file__, "--generate", args.config, *overrides], env)
                for side in sides[:: 1 if round_ % 2 == 0 else -1]:
                    side()
            median = {key: statistics.median(r[key] for r in segkit) for key in ("train_s", "evaluate_s", "total_s")}
            plain_s = statistics.median(r["total_s"] for r in plain)
            rows.append({"case": case, "segkit_train_s": median["train_s"], "segkit_evaluate_s": median["evaluate_s"],
                         "segkit_s": median["total_s"], "plain_loop_s": plain_s, "ratio": median["total_s"] / plain_s,
                         "segkit_miou": segkit[-1]["miou"], "plain_miou": plain[-1]["miou"], "device": args.device,
                         "threads": torch.get_num_threads()})
    return rows


def _generate(config: str, overrides: list[str]) -> None:
    from segkit.config import load_config
    from segkit.engine.builders import build_datasets

    build_datasets(load_config(config, overrides))  # writes the synthetic data into data.root


def _plain(config: str, run_dir: Path, device_name: str, overrides: list[str]) -> None:
    """The hand-written loop: train, validate every val_interval epochs keeping the best weights, evaluate them."""
    import torch
    from torch.utils.data import DataLoader

    from benchmarks._plain import plain_pieces
    from segkit.config import load_config

    device = torch.device(device_name)
    cfg = load_config(config, overrides)
    pieces = plain_pieces(cfg, device, cfg.trainer.epochs)
    model, loss_fn, loader, optimizer, scheduler = pieces.model, pieces.loss_fn, pieces.loader, pieces.optimizer, pieces.scheduler
    val_loader = DataLoader(getattr(pieces.val_set, "dataset", pieces.val_set), batch_size=cfg.trainer.batch_size)
    classes = cfg.model.num_classes
    run_dir.mkdir(parents=True)

    @torch.no_grad()
    def miou() -> float:
        model.eval()
        matrix = torch.zeros(classes * classes, dtype=torch.long, device=device)
        for images, masks in val_loader:
            images, masks = images.to(device), masks.to(device).long()
            pred = model(images).argmax(1)
            valid = masks < classes
            matrix += torch.bincount(masks[valid] * classes + pred[valid], minlength=classes * classes)
        model.train()
        m = matrix.view(classes, classes).double()
        union = m.sum(0) + m.sum(1) - m.diag()
        return float((m.diag()[union > 0] / union[union > 0]).mean())

    best = -1.0
    model.train()
    for epoch in range(cfg.trainer.epochs):
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True).long()
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % cfg.trainer.val_interval == 0 or epoch + 1 == cfg.trainer.epochs:
            score = miou()
            if score > best:
                best = score
                torch.save(model.state_dict(), run_dir / "best.pt")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "last.pt")
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    print(f"miou {miou():.4f}")


if __name__ == "__main__":  # the child processes of the benchmark
    sys.path.insert(0, str(REPO / "scripts"))  # run as a file: its sibling modules as the parent imports them
    if sys.argv[1] == "--generate":
        _generate(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "--plain":
        _plain(sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5:])

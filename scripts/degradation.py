#!/usr/bin/env python
"""The degradation experiment of He et al. 2016 (Figure 1 / Figure 6) in small: plain vs residual nets.

Trains the CIFAR plain nets and ResNets of two depths (default 20 and 56) on the same data with
the same schedule (SGD, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 50% and 75% of
the iterations: the paper's 32k and 48k of 64k) and draws their training error (dashed: on the
augmented batches in training mode) and test error (solid) per epoch, plain nets on the left,
ResNets on the right. The paper's finding: the deeper *plain* net has the higher training error
(an optimisation difficulty, not overfitting), while the deeper ResNet has the lower one.

One departure from the paper: the learning rate warms up linearly over the first 100
iterations (``--warmup-iters``) for every net alike; the paper warms up only ResNet-110 (lr 0.01
for about 400 iterations). Without it, at lr 0.1, ResNet-56 diverges in its first ten steps on the
synthetic data (logits near 300) and ends at chance; with a 31-iteration warm-up it still does.

    python scripts/degradation.py --synthetic --out runs/degradation          # minutes on a CPU
    python scripts/degradation.py --data ~/data/cifar-10-batches-py --out runs/degradation_cifar \\
        --epochs 164 --device cuda                                           # the paper's setting

``--synthetic`` writes a built-in dataset of generated shapes (CIFAR format, 16x16 by default)
into ``OUT/data``. Writes ``OUT/degradation.png``, ``OUT/errors.md`` (the table of final errors,
also printed) and ``OUT/errors.json``; each net's run directory is ``OUT/<net>`` (a run already
there is resumed, or reused when finished). Extra ``KEY=VALUE`` arguments override the config of
every run (e.g. ``data.num_workers=4``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segkit.errors import SegkitError  # noqa: E402

FAMILIES = (("plain", "plain"), ("resnet", "ResNet"))  # (arch family, label)
PANELS = {"plain": "plain nets", "resnet": "ResNets"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a CIFAR-10/100 'python version' folder (data_batch_1..5, test_batch, ...)")
    source.add_argument("--synthetic", action="store_true", help="generated CIFAR-format shapes (no download; runs on a CPU)")
    parser.add_argument("--out", required=True, help="output folder: one run directory per net, the plot and the table")
    parser.add_argument("--depths", type=int, nargs=2, default=(20, 56), choices=(20, 32, 44, 56, 110), metavar="DEPTH",
                        help="two depths of 6n+2 layers that both families have: 20, 32, 44, 56, 110 (default 20 56)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per net (default: 15 synthetic, 164 CIFAR = 64k iterations)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128, the paper's)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    parser.add_argument("--warmup-iters", type=int, default=100,
                        help="linear warm-up of the learning rate over the first iterations, for every net alike (default 100; 0: none)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=4800, help="synthetic: images in all, 1/6 of them for testing (default 4800)")
    parser.add_argument("--size", type=int, default=16, help="synthetic: image size (default 16)")
    parser.add_argument("--noise", type=float, default=0.15, help="synthetic: std of the pixel noise (default 0.15)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    return parser.parse_args(argv)


def run_config(arch: str, data_root: Path, epochs: int, args: argparse.Namespace, iters_per_epoch: int) -> dict[str, Any]:
    """The CIFAR recipe of the paper with the schedule scaled to ``epochs``."""
    total = epochs * iters_per_epoch
    warmup = min(args.warmup_iters, total // 2)
    return {
        "task": "classification",
        "model": {"arch": arch, "num_classes": 10, "in_channels": 3},
        "data": {"kind": "cifar", "root": str(data_root), "train_split": "train", "val_split": "test", "augment": "pad_crop"},
        "loss": [{"name": "ce"}],
        # every parameter decayed, as configs/cifar_*.yaml and the paper's Torch code
        "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4, "decay_norm_and_bias": True},
        # at 50 % and 75 % of the run (milestones count from 1: a run of a few iterations keeps them apart and positive)
        "schedule": {"name": "multistep", "milestones": [max(total // 2, 1), max(total * 3 // 4, 2)], "gamma": 0.1,
                     "warmup_iters": warmup},
        "trainer": {"epochs": epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device, "log_interval": 50},
        "output": {"plots": False},
    }


def _add_time(path: Path, seconds: float) -> float:
    total = seconds + (float(path.read_text()) if path.is_file() else 0.0)
    path.write_text(f"{total:.1f}\n")
    return total


def curves(run_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "epoch"]


def plot(results: dict[str, dict[str, Any]], depths: tuple[int, int], out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {depths[0]: "tab:orange", depths[1]: "tab:red"}
    for ax, (family, title) in zip(axes, FAMILIES):
        for depth in depths:
            epochs = results[f"{family}{depth}"]["epochs"]
            x = [r["epoch"] for r in epochs]
            label = f"{title}-{depth}"
            ax.plot(x, [100 * r["train_top1_error"] for r in epochs], "--", lw=1, color=colors[depth], label=f"{label} train")
            ax.plot(x, [100 * r["val_top1_error"] for r in epochs], "-", lw=2.2, color=colors[depth], label=f"{label} test")
        ax.set(title=PANELS[family], xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("top-1 error (%)")
    fig.suptitle("Training (dashed) and test (solid) error: plain vs residual (He et al. 2016, Fig. 6)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict[str, Any]], depths: tuple[int, int]) -> str:
    lines = ["| net | layers | parameters | final train error (%) | final test error (%) | best test error (%) | wall time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for family, title in FAMILIES:
        for depth in depths:
            r = results[f"{family}{depth}"]
            last = r["epochs"][-1]
            best = min(e["val_top1_error"] for e in r["epochs"])
            lines.append(f"| {title}-{depth} | {depth} | {r['parameters']:,} | {100 * last['train_top1_error']:.2f} | "
                         f"{100 * last['val_top1_error']:.2f} | {100 * best:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from segkit.config import config_from_dict
    from segkit.data.cifar import CifarDataset, make_synthetic_cifar
    from segkit.engine.train import train
    from segkit.models import create_classifier

    out = Path(args.out)
    depths = tuple(args.depths)
    try:
        for depth in depths:
            for family, _ in FAMILIES:
                create_classifier(f"cifar_{family}{depth}")  # an unknown depth fails here, before any training
        if args.synthetic:
            data_root = out / "data"
            if not (data_root / "test_batch").is_file():
                make_synthetic_cifar(data_root, n=args.n, size=args.size, seed=args.seed, noise=args.noise)
        else:
            data_root = Path(args.data).expanduser()
        train_images = len(CifarDataset(data_root, "train"))
        epochs = args.epochs or (15 if args.synthetic else 164)
        iters_per_epoch = max(train_images // args.batch_size, 1)
        results: dict[str, dict[str, Any]] = {}
        for depth in depths:
            for family, _ in FAMILIES:
                name, arch = f"{family}{depth}", f"cifar_{family}{depth}"
                run_dir = out / name
                cfg = config_from_dict(run_config(arch, data_root, epochs, args, iters_per_epoch), args.overrides, source=arch)
                start = time.perf_counter()
                print(f"training {arch} for {epochs} epochs -> {run_dir}", flush=True)
                train(cfg, run_dir, resume=(run_dir / "last.pt").is_file(), progress=False)
                seconds = _add_time(run_dir / "seconds.txt", time.perf_counter() - start)  # summed over resumed calls
                parameters = sum(p.numel() for p in create_classifier(arch).parameters())
                results[name] = {"arch": arch, "depth": depth, "parameters": parameters, "seconds": seconds, "epochs": curves(run_dir)}
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plot(results, depths, out / "degradation.png")  # type: ignore[arg-type]
    text = table(results, depths)  # type: ignore[arg-type]
    (out / "errors.md").write_text(text + "\n")
    (out / "errors.json").write_text(json.dumps(results, indent=1))
    print(text)
    print(f"wrote {out / 'degradation.png'}, {out / 'errors.md'}, {out / 'errors.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

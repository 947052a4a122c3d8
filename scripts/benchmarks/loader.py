"""Data-loader throughput (images/s): segkit's FolderDataset + DataLoader against a bare single-threaded PNG decode.

The data: ``--n`` synthetic microscopy image/mask pairs (``segkit.data.make_synthetic``, 8-bit
grayscale PNGs of ``--size`` pixels) in a temporary folder. segkit rows: one pass over
``FolderDataset`` through a ``DataLoader`` (batch ``--batch``, ``--workers`` processes, worker
start-up included) with no augmentation and with the default training pipeline (random resized
crop to ``--crop``, flips, rotation, elastic deformation, brightness/contrast; see
``segkit.data.transforms``), in the seeded wrapper the engine uses. The peer: a plain loop that
decodes each pair with PIL into tensors, nothing else: the floor any loader pays. ``ratio`` =
segkit images/s / bare-decode images/s; the rounds alternate in one process, medians reported.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segkit.data import FolderDataset, build_transforms, default_spec, make_synthetic
from segkit.engine.builders import SeededDataset
from segkit.engine.distributed import SeededSampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=64, help="image/mask pairs (default 64)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    parser.add_argument("--crop", type=int, default=256, help="training crop of the augmented pipeline (default 256)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts (default 0,2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of each candidate (default 3)")


def _bare_decode(pairs: list[tuple[Path, Path]]) -> int:
    for image_path, mask_path in pairs:
        with Image.open(image_path) as im:
            image = torch.from_numpy(np.asarray(im, dtype=np.uint8))
        with Image.open(mask_path) as m:
            mask = torch.from_numpy(np.asarray(m, dtype=np.uint8))
        del image, mask
    return len(pairs)


def _segkit_pass(dataset: SeededDataset, batch: int, workers: int, epoch: int) -> int:
    sampler = SeededSampler(dataset, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    return sum(images.shape[0] for images, _ in loader)


def _rate(fn: Any) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)  # loaders are process-parallel; keep the main process to one thread
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp), n=args.n, size=args.size, seed=0, val_fraction=0.0)
        pipelines = {"none": None, "default train": build_transforms(default_spec(train=True, size=args.crop), train=True, seed=0)}
        datasets = {name: SeededDataset(FolderDataset(root, "train", num_classes=3, transforms=p)) for name, p in pipelines.items()}
        pairs = datasets["none"].dataset.samples
        workers = [int(w) for w in args.workers.split(",")]
        epochs = itertools.count()  # each pass a new epoch: new order, new augmentations
        candidates: dict[str, Any] = {"bare": lambda: _bare_decode(pairs)}
        for name, dataset in datasets.items():
            for w in workers:
                candidates[f"{name}|{w}"] = lambda d=dataset, w=w: _segkit_pass(d, args.batch, w, next(epochs))
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                rates[name].append(_rate(candidates[name]))
        bare = statistics.median(rates["bare"])
        for name in names[1:]:
            pipeline, w = name.split("|")
            segkit = statistics.median(rates[name])
            rows.append({"case": f"{args.n}x {args.size}^2 gray PNG, augmentation: {pipeline}", "workers": int(w),
                         "segkit_images_per_s": segkit, "bare_decode_images_per_s": bare, "ratio": segkit / bare})
    return rows

"""Data-loader throughput (images/s): segkit's FolderDataset + DataLoader against a bare decode of the same PNGs.

The data: ``--n`` synthetic microscopy image/mask pairs (``segkit.data.make_synthetic``, 8-bit
grayscale PNGs of ``--size`` pixels) and the same number of RGB pairs (the grey image tinted per
channel), in a temporary folder. segkit rows: one pass over ``FolderDataset`` through a
``DataLoader`` (batch ``--batch``, ``--workers`` processes, worker start-up included), as the
training engine builds it (``device_scaling``: workers decode and augment, the float conversion and
standardisation run in the training step on the device; ``with_cpu_scaling`` rows also time that
step on the CPU after each batch arrives, as a CPU-only run pays it), with no augmentation and with the default training pipeline (random resized crop to
``--crop``, flips, rotation, elastic deformation, brightness/contrast; see
``segkit.data.transforms``), in the seeded wrapper the engine uses, batches stacked by the
engine's ``collate_interleaved``. The peer, the floor any loader pays: a DataLoader with the same
batch and workers over a dataset that decodes each pair with the decoder segkit uses for these
files (imagecodecs' ``png_decode`` of the file's bytes) into uint8 tensors and does nothing else. ``ratio`` = segkit images/s / bare-decode
images/s at the same worker count; rounds alternate in one process, medians reported.
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
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of each candidate (default 3)")


def _decode(path: Path) -> np.ndarray:
    """imagecodecs' decode of a PNG's bytes (grey as is, colour as RGB): the decoder segkit uses for these files."""
    import imagecodecs

    with open(path, "rb", buffering=0) as file:
        return imagecodecs.png_decode(file.read())


class _BareDecode(torch.utils.data.Dataset):
    """Decode of image and mask into uint8 tensors with the same decoder as segkit, nothing else."""

    def __init__(self, pairs: list[tuple[Path, Path]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        return torch.from_numpy(_decode(image_path)), torch.from_numpy(_decode(mask_path))


def _bare_pass(pairs: list[tuple[Path, Path]], batch: int, workers: int) -> int:
    loader = DataLoader(_BareDecode(pairs), batch_size=batch, shuffle=True, num_workers=workers)
    return sum(images.shape[0] for images, _ in loader)


def _segkit_pass(dataset: SeededDataset, batch: int, workers: int, epoch: int, scale: bool) -> int:
    from segkit.engine.inputs import DeviceScaling, collate_interleaved

    scaling = DeviceScaling.of(dataset)
    sampler = SeededSampler(dataset, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_interleaved)
    count = 0
    for images, _ in loader:
        count += (scaling(images) if scale else images).shape[0]  # scale: what the step does on the device, here on the CPU
    return count


def _rgb_copy(root: Path, out: Path) -> Path:
    """The grey pairs under ``root`` as RGB images (each channel a different tint), same masks."""
    import shutil

    for sub in ("images/train", "masks/train"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted((root / "images" / "train").glob("*.png")):
        grey = np.asarray(Image.open(image), dtype=np.float32)
        rgb = np.stack([grey, grey * 0.8 + 30, 255 - grey], axis=-1).clip(0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(out / "images" / "train" / image.name)
        shutil.copy(root / "masks" / "train" / image.name, out / "masks" / "train" / image.name)
    return out


def _rate(fn: Any) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)  # loaders are process-parallel; keep the main process to one thread
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        grey = make_synthetic(Path(tmp) / "grey", n=args.n, size=args.size, seed=0, val_fraction=0.0)
        roots = {"gray": grey, "RGB": _rgb_copy(grey, Path(tmp) / "rgb")}
        workers = [int(w) for w in args.workers.split(",")]
        epochs = itertools.count()  # each pass a new epoch: new order, new augmentations
        candidates: dict[str, Any] = {}
        for kind, root in roots.items():
            pipelines = {"none": None, "default train": build_transforms(default_spec(train=True, size=args.crop), train=True, seed=0)}
            for name, pipeline in pipelines.items():
                dataset = FolderDataset(root, "train", num_classes=3, transforms=pipeline)
                dataset.device_scaling = True  # as the training engine builds it
                for w in workers:
                    for scale in (False, True):
                        candidates[f"{kind}|{name}|{w}|{scale}"] = (
                            lambda d=SeededDataset(dataset), w=w, scale=scale: _segkit_pass(d, args.batch, w, next(epochs), scale))
                    pairs = dataset.samples
                    candidates[f"{kind}|bare|{w}|"] = lambda p=pairs, w=w: _bare_pass(p, args.batch, w)
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                rates[name].append(_rate(candidates[name]))
        for name in names:
            kind, pipeline, w, scale = name.split("|")
            if pipeline == "bare" or scale == "True":
                continue
            segkit, bare = statistics.median(rates[name]), statistics.median(rates[f"{kind}|bare|{w}|"])
            scaled = statistics.median(rates[f"{kind}|{pipeline}|{w}|True"])
            rows.append({"case": f"{args.n}x {args.size}^2 {kind} PNG, augmentation: {pipeline}", "workers": int(w),
                         "segkit_images_per_s": segkit, "bare_decode_images_per_s": bare, "ratio": segkit / bare,
                         "with_cpu_scaling_images_per_s": scaled, "ratio_with_cpu_scaling": scaled / bare})
    return rows

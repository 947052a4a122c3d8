"""segkit evaluate --pred/--gt (400 pairs of 512x512 PNG masks) against a bare single-threaded decode of the same files.

The target (issue 16): with process start-up set aside, evaluating a folder on two cores takes at
most 0.7x the time of decoding its PNG files one after the other with the fastest decoder
(``speedup`` >= 1.43 against the fastest peer row). Rows: evaluation time against the bare
single-threaded decode (Pillow; OpenCV's ``imread``, as is and into one reused array, which
spares the allocation; OpenCV's ``imdecode`` of the file's bytes; imagecodecs' ``png_decode`` of
the file's bytes, which segkit uses, as is and into one reused array), ``speedup`` = decode / evaluation (the medians'
ratio), ``speedup_paired`` = the median of the ratios within each
round (steadier on a machine whose speed drifts over seconds). The ``floor`` row times what no
evaluation can skip, on this machine: segkit's reader and pair count alone, the pairs split over
as many forked processes as segkit has threads (no GIL, no pairing of names, no report);
``floor_of_decode`` is its time over the fastest single-threaded decode's (within rounds), the
best ratio this machine allows that count. Then the start-up of ``segkit
--help``, of ``segkit evaluate --help`` and the whole ``segkit evaluate --pred --gt`` command
against ``python -c "import torch"`` (each a fresh process). Run it on two cores to match the
issue:

    taskset -c 0,1 python scripts/benchmark.py evaluate
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks._timing import comparison_row, paired_speedup, time_rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=400, help="prediction/ground-truth pairs (default 400)")
    parser.add_argument("--size", type=int, default=512, help="mask height and width (default 512)")
    parser.add_argument("--classes", type=int, default=21, help="number of classes (default 21)")
    parser.add_argument("--data", help="folder for the generated masks (default: a temporary folder); reused if present")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: segkit's, the usable CPUs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1; also fills the page cache)")
    parser.add_argument("--startup-repeats", type=int, default=5, help="fresh processes per start-up timing (default 5; 0 skips)")


def _masks(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A blobby ground truth with a few ignore pixels, and a prediction that is mostly right."""
    yy, xx = np.mgrid[0:size, 0:size]
    gt = np.zeros((size, size), np.uint8)
    for _ in range(12):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(size // 25, size // 4)
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, classes)
    pred = gt.copy()
    for _ in range(4):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(size // 50, size // 8)
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, classes)
    gt[rng.random((size, size)) < 0.002] = 255
    return pred, gt


def _make_data(root: Path, pairs: int, size: int, classes: int) -> None:
    stamp = root / f".made-{pairs}-{size}-{classes}"
    if stamp.exists():
        return
    rng = np.random.default_rng(0)
    for sub in ("pred", "gt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(pairs):
        pred, gt = _masks(rng, size, classes)
        Image.fromarray(pred).save(root / "pred" / f"{i:05d}.png")
        Image.fromarray(gt).save(root / "gt" / f"{i:05d}.png")
    stamp.touch()


def _floor_chunk(chunk: list[tuple[str, str]], classes: int) -> np.ndarray:
    """Read and count a few pairs as segkit's threads do, and nothing else (the ``floor`` row's work)."""
    from segkit.data.io import read_grey_png
    from segkit.engine.folders import _pair_counts

    total = np.zeros((classes, classes), np.int64)
    for pred_path, gt_path in chunk:
        total += _pair_counts(read_grey_png(pred_path), read_grey_png(gt_path), classes, 255)
    return total


def _startup(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import cv2
    import imagecodecs
    import torch

    from segkit.engine.folders import default_workers, evaluate_folders

    temp = None if args.data else tempfile.TemporaryDirectory(prefix="segkit-bench-eval-")
    root = Path(args.data or temp.name)  # type: ignore[union-attr]
    _make_data(root, args.pairs, args.size, args.classes)
    files = [root / sub / f"{i:05d}.png" for i in range(args.pairs) for sub in ("gt", "pred")]
    workers = args.workers or default_workers()

    def pillow() -> None:
        for path in files:
            with Image.open(path) as image:
                np.asarray(image)

    def opencv() -> None:
        for path in files:
            cv2.imread(str(path), cv2.IMREAD_UNCHANGED)

    def opencv_bytes() -> None:  # the file read whole, decoded from memory: how segkit reads masks, faster here than imread
        for path in files:
            cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)

    out = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)  # every generated mask has this size and type

    def codecs() -> None:  # how segkit reads masks: one unbuffered read, imagecodecs' libpng from memory
        for path in files:
            with open(path, "rb", buffering=0) as file:
                imagecodecs.png_decode(file.read())

    def codecs_reused() -> None:  # the same into one array allocated once, as opencv_reused
        for path in files:
            with open(path, "rb", buffering=0) as file:
                imagecodecs.png_decode(file.read(), out=out)

    def opencv_reused() -> None:
        # The same decoder writing into one array allocated once. A fresh 256 KB array per file can
        # cost more than the decode: in the main thread, glibc may hand each one back to the
        # system and fault it in again (96 page faults a mask, 1.4x the time, depending on what the
        # process allocated before), which would flatter segkit's ratio. This row never does.
        for path in files:
            cv2.imread(str(path), out, cv2.IMREAD_UNCHANGED)

    result: dict[str, Any] = {}

    def segkit() -> None:
        result["report"] = evaluate_folders(root / "pred", root / "gt", args.classes, workers=workers)

    # Forked before any timing, while the process runs no other thread.
    pool = multiprocessing.get_context("fork").Pool(workers) if "fork" in multiprocessing.get_all_start_methods() else None
    chunks = [[(str(root / "pred" / f"{i:05d}.png"), str(root / "gt" / f"{i:05d}.png")) for i in range(start, min(start + 8, args.pairs))]
              for start in range(0, args.pairs, 8)]
    floor_total: list[np.ndarray] = []

    def floor() -> None:
        floor_total[:] = [sum(pool.starmap(_floor_chunk, [(chunk, args.classes) for chunk in chunks]))]  # type: ignore[union-attr]

    cv2.setNumThreads(1)
    candidates = {"segkit": segkit, "pillow": pillow, "opencv": opencv, "opencv_reused": opencv_reused, "opencv_bytes": opencv_bytes,
                  "imagecodecs": codecs, "imagecodecs_reused": codecs_reused}
    if pool is not None:
        candidates["floor"] = floor
    try:
        rounds = time_rounds(candidates, args.repeats, args.warmup)
    finally:
        if pool is not None:
            pool.terminate()
    times = {name: statistics.median(values) for name, values in rounds.items()}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    case = f"{args.pairs} pairs {args.size}x{args.size} C={args.classes}"
    extra = {"workers": workers, "cpus": cpus, "torch_threads": torch.get_num_threads(), "miou": result["report"].metrics["miou"]}
    peers = {"pillow": "bare decode, Pillow, 1 thread", "opencv": "bare decode, OpenCV imread, 1 thread",
             "opencv_reused": "bare decode, OpenCV imread into one reused array, 1 thread",
             "opencv_bytes": "bare decode, OpenCV imdecode of the file's bytes, 1 thread",
             "imagecodecs": "bare decode, imagecodecs png_decode of the file's bytes, 1 thread",
             "imagecodecs_reused": "bare decode, imagecodecs png_decode into one reused array, 1 thread"}
    rows = [comparison_row(case, times["segkit"], label, times[name], **extra,
                           speedup_paired=paired_speedup(rounds["segkit"], rounds[name]))
            for name, label in peers.items()]
    if pool is not None:
        fastest = min(peers, key=times.__getitem__)
        # The floor counts what segkit counts (255 ignored, as the generated masks mark it): a check that it did the same work.
        same = bool(np.array_equal(floor_total[0], np.array(result["report"].metrics["confusion_matrix"])))
        rows.append(comparison_row(case, times["segkit"], f"floor: segkit's reader and pair count alone in {workers} forked "
                                   "process(es)", times["floor"], **extra, speedup_paired=paired_speedup(rounds["segkit"], rounds["floor"]),
                                   floor_of_decode=paired_speedup(rounds[fastest], rounds["floor"]), fastest_decode=fastest,
                                   same_result=same))
    if args.startup_repeats > 0:
        torch_s = _startup([sys.executable, "-c", "import torch"], args.startup_repeats)
        whole = ["evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt"), "--num-classes", str(args.classes)]
        for command, case in ((["--help"], "start-up: segkit --help"), (["evaluate", "--help"], "start-up: segkit evaluate --help"),
                              (whole, "whole command: segkit evaluate --pred --gt (start-up included)")):
            segkit_s = _startup([sys.executable, "-m", "segkit", *command], args.startup_repeats)
            rows.append(comparison_row(case, segkit_s, "python -c 'import torch'", torch_s, cpus=cpus))
    if temp is not None:
        temp.cleanup()
    return rows

"""segkit predict --tile on images of growing size: seconds and peak memory per size, against linear scaling.

The goal (issue 16): prediction time grows linearly with the pixel count and peak memory stays
bounded by the tile batch, not the image: at 8k x 8k within 2x of the peak at 1k x 1k, plus the
label image itself (1 byte per pixel). Each size runs in a fresh process (so its peak RSS is its
own): an 8-bit grayscale image (PNG, or an uncompressed TIFF that segkit memory-maps with
``--format tif``) is predicted by ``predict_folder`` with a U-Net/ResNet-18 checkpoint of random
weights (the work per pixel does not depend on the weights). Rows: ``seconds`` (prediction only,
start-up and model loading excluded), ``s_per_mpix`` and ``time_vs_linear`` (seconds per pixel
against the smallest size's), ``peak_rss_mb`` of the process, ``labels_mb`` and
``rss_vs_smallest`` = (peak - labels) / the smallest size's peak (<= 2 meets the goal).

    python scripts/benchmark.py predict_scaling                       # 1k, 4k, 8k
    python scripts/benchmark.py predict_scaling --sizes 1024,20480 --format tif
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    from segkit.engine.predict import predict_folder
    ckpt, image, out, tile, batch, threads = sys.argv[1:7]
    torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    predict_folder(ckpt, image, out, device="cpu", tile=int(tile), batch_size=int(batch), overlays=False)
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    """
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1024,4096,8192", help="image sides, comma-separated (default 1024,4096,8192)")
    parser.add_argument("--tile", type=int, default=512, help="sliding-window tile (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--format", choices=("png", "tif"), default="png", help="image file format (default png)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the child (default: all CPUs)")
    parser.add_argument("--work", help="folder for the images and checkpoint (default: a temporary folder)")


def _checkpoint(path: Path) -> None:
    import torch

    from segkit.config import config_from_dict, to_dict
    from segkit.engine.builders import build_model_from_config
    from segkit.engine.checkpoint import save_checkpoint

    cfg = config_from_dict({"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1},
                            "data": {"kind": "folder", "root": "unused"}})
    torch.manual_seed(0)
    save_checkpoint({"model": build_model_from_config(cfg).state_dict(), "config": to_dict(cfg), "epoch": 0}, path)


def _image(path: Path, side: int) -> None:
    """A smooth 8-bit image written in stripes (an 20k x 20k one never exists as float in memory)."""
    import numpy as np

    rows = (np.add.outer(np.arange(side) % 251, np.arange(side) % 241) % 256).astype(np.uint8)
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, rows)  # uncompressed, contiguous: memory-mappable
    else:
        from PIL import Image

        Image.fromarray(rows).save(path, compress_level=1)


def _run_child(args: list[str], threads: int) -> tuple[float, float]:
    """(prediction seconds, peak RSS in MB) of one fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"prediction failed:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])["seconds"], usage.ru_maxrss / 1024  # Linux: kilobytes


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = work / "unet_resnet18.pt"
        if not ckpt.is_file():
            _checkpoint(ckpt)
        rows: list[dict[str, Any]] = []
        for side in sizes:
            image = work / f"image_{side}.{args.format}"
            if not image.is_file():
                _image(image, side)
            seconds, rss = _run_child([str(ckpt), str(image), str(work / f"out_{side}"), str(args.tile), str(args.batch),
                                       str(args.threads)], args.threads)
            mpix = side * side / 1e6
            rows.append({"size": f"{side}x{side}", "format": args.format, "tile": args.tile, "seconds": seconds,
                         "s_per_mpix": seconds / mpix, "peak_rss_mb": rss, "labels_mb": side * side / 2**20})
    first = rows[0]
    for row in rows:
        row["time_vs_linear"] = row["s_per_mpix"] / first["s_per_mpix"]
        row["rss_vs_smallest"] = (row["peak_rss_mb"] - row["labels_mb"]) / first["peak_rss_mb"]
    return rows

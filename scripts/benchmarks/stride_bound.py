"""The best mIoU any model can reach that predicts class scores at stride S and upsamples them bilinearly.

For each validation mask of a real dataset of ``scripts/benchmark.py accuracy`` (``--datasets``,
default hela-binary; ``quickstart``: the synthetic data, generated at ``--quickstart-size``), free class scores at stride S (one value per class and S x S block of the
zero-padded frame; no network) are fitted by Adam to the mask itself through a fixed bilinear
upsampling by S (FCN-8s's last step, ``align_corners=False``), then scored as the benchmark
scores (one ConfusionMatrix over the split). No model with that output stage can do better on
these masks, whatever it learns: an upper bound that says how much of a gap is the stride. Rows:
dataset, stride, ``miou_bound``.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import _real_data
from benchmarks.accuracy import REAL_DATASETS, _choices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", type=_choices((*REAL_DATASETS, "quickstart")), default=["hela-binary"],
                        help="comma list (default hela-binary)")
    parser.add_argument("--quickstart-n", type=int, default=64, help="quickstart: images generated (default 64, a quarter validate)")
    parser.add_argument("--quickstart-size", type=int, default=128, help="quickstart: image size (default 128)")
    parser.add_argument("--strides", default="2,4,8,16", help="comma list of output strides (default 2,4,8,16)")
    parser.add_argument("--iterations", type=int, default=300, help="Adam steps per mask (default 300)")
    parser.add_argument("--cache", default=None, help="prepared data folder (default: the accuracy benchmark's)")


def fitted_labels(mask: torch.Tensor, num_classes: int, stride: int, iterations: int) -> torch.Tensor:
    """``mask (H, W)`` int64 -> the argmax of the best-fitting bilinearly upsampled stride-``stride`` scores."""
    height, width = mask.shape
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    scores = torch.zeros(1, num_classes, padded[0] // stride, padded[1] // stride, requires_grad=True)
    optimizer = torch.optim.Adam([scores], lr=0.5)
    for _ in range(iterations):
        logits = F.interpolate(scores, scale_factor=stride, mode="bilinear", align_corners=False)[..., :height, :width]
        loss = F.cross_entropy(logits, mask[None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = F.interpolate(scores, scale_factor=stride, mode="bilinear", align_corners=False)[..., :height, :width]
    return logits.argmax(1)[0]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from segkit.data.io import read_mask_pixels
    from segkit.metrics import ConfusionMatrix

    cache = Path(args.cache) if args.cache else _real_data.default_cache()
    strides = [int(s) for s in args.strides.split(",") if s.strip()]
    rows = []
    temp = tempfile.TemporaryDirectory(prefix="segkit-stride-bound-")
    for dataset in args.datasets:
        if dataset == "quickstart":
            from segkit.data import make_synthetic

            root = make_synthetic(Path(temp.name) / "quickstart", n=args.quickstart_n, size=args.quickstart_size, seed=0)
        else:
            root = _real_data.prepare(dataset, cache)
        num_classes = 2 if dataset.endswith("binary") else 3
        masks = [torch.from_numpy(read_mask_pixels(p).astype(np.int64)) for p in sorted(glob.glob(str(root / "masks" / "val" / "*.png")))]
        for stride in strides:
            matrix = ConfusionMatrix(num_classes)
            for mask in masks:
                matrix.update(fitted_labels(mask, num_classes, stride, args.iterations)[None], mask[None])
            rows.append({"dataset": dataset, "stride": stride, "miou_bound": matrix.compute()["miou"], "masks": len(masks)})
    temp.cleanup()
    return rows

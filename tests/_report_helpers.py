"""Writers for the HTML report tests: mask folders, a tiny checkpoint, run directories; no fixtures here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.config import config_from_dict, to_dict
from segkit.engine.builders import build_model_from_config
from segkit.engine.checkpoint import save_checkpoint
from segkit.metrics import ConfusionMatrix

CLASSES = ["background", "round <cell>", "long & \"thin\""]


def write_mask_folders(root: Path, n: int, size: int = 32, num_classes: int = 3, seed: int = 0, images: bool = False,
                       noise: float = 0.1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """root/pred, root/gt (and root/images) of ``n`` blobby label maps; a share ``noise`` of each
    prediction's pixels (different per image) is replaced by random labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for d in ("pred", "gt", *(("images",) if images else ())):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gt = np.zeros((size, size), np.uint8)
        for c in range(1, num_classes):
            cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 8, size // 3))]
            gt[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
        gt[: size // 16] = 255 if i % 5 == 0 else gt[: size // 16]  # some ignored rows
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        flip = rng.random((size, size)) < noise * (i % 7) / 6
        pred[flip] = rng.integers(0, num_classes, int(flip.sum()))
        stem = f"img{i:05d}"
        Image.fromarray(gt).save(root / "gt" / f"{stem}.png")
        Image.fromarray(pred).save(root / "pred" / f"{stem}.png")
        if images:
            picture = (40 + 60 * np.where(gt == 255, 0, gt) + rng.integers(0, 40, (size, size))).clip(0, 255).astype(np.uint8)
            Image.fromarray(picture).save(root / "images" / f"{stem}.png")
        pairs.append((stem, pred, gt))
    return pairs


def page_data(html: str) -> dict:
    """The JSON the page embeds for its script (and for these tests)."""
    match = re.search(r'<script type="application/json" id="segkit-data">(.*?)</script>', html, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1))


def tiny_config(root: Path, **trainer) -> dict:
    return {"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                      "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}},
            "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1}, "classes": CLASSES},
            "trainer": {"batch_size": 2, "seed": 0, "log_interval": 1, "val_interval": 1, **trainer},
            "output": {"plots": False}}


def write_checkpoint(path: Path, config: dict, seed: int = 0) -> Path:
    """A checkpoint of the (untrained) model of ``config``: enough for evaluation pages."""
    import torch

    cfg = config_from_dict(config)
    torch.manual_seed(seed)
    save_checkpoint({"model": build_model_from_config(cfg).state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return path


def fake_metrics(rng: np.random.Generator, k: int = 3) -> dict:
    matrix = ConfusionMatrix(k, ignore_index=255)
    gt = torch_labels(rng, k)
    pred = torch_labels(rng, k)
    pred[:8] = gt[:8]
    matrix.update(pred, gt)
    return matrix.compute()


def torch_labels(rng: np.random.Generator, k: int):
    import torch

    return torch.from_numpy(rng.integers(0, k, (2, 16, 16)))


def fake_run(run_dir: Path, task: str = "segmentation", epochs: int = 4, per_class: bool = True) -> Path:
    """A run directory as `segkit train` leaves it (metrics.jsonl, config.yaml, best.pt with validation
    metrics), written directly: fast and exact."""
    from omegaconf import OmegaConf

    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(run_dir, epochs=epochs)
    if task == "classification":
        config = {"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 10}, "data": {"kind": "cifar10"},
                  "trainer": {"epochs": epochs, "batch_size": 4}}
    records, step, best = [], 0, None
    for epoch in range(1, epochs + 1):
        for _ in range(3):
            step += 1
            records.append({"kind": "train", "epoch": epoch, "step": step, "loss": 2.0 / step, "lr": 0.01 * (1 - step / 20)})
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 1.5 / epoch, "images_per_s": 10.0 + epoch}
        if task == "classification":
            record.update({"train_top1_error": 0.9 / epoch, "val_top1": 1 - 0.8 / epoch, "val_top5": 1 - 0.3 / epoch,
                           "val_top1_error": 0.8 / epoch, "val_top5_error": 0.3 / epoch})
            metrics = {"top1": 1 - 0.8 / epoch, "top5": 1 - 0.3 / epoch, "mean_class_accuracy": 1 - 0.85 / epoch}
        else:
            metrics = fake_metrics(rng)
            record.update({"val_miou": metrics["miou"], "val_mdice": metrics["mdice"], "val_per_image_miou": metrics["per_image_miou"]})
            if per_class:
                record["val_iou"] = metrics["iou"]
        records.append(record)
        best = (epoch, metrics)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    save_checkpoint({"model": {}, "config": config, "epoch": best[0], "metrics": best[1], "world_size": 1}, run_dir / "best.pt")
    return run_dir

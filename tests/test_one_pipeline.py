"""One input pipeline: training validation, `segkit evaluate` and `segkit predict` score the same model alike.

Each case trains a tiny U-Net briefly with `segkit.engine.train.train`, then checks that
`evaluate_checkpoint(best.pt)` reproduces the confusion matrix stored in best.pt exactly, on image
sizes that are not multiples of 32, on a folder of mixed sizes, and on 16-bit TIFF images, and that
the masks `predict` writes score to the same matrix with `evaluate --pred/--gt`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine.builders import build_datasets, transform_steps
from segkit.engine.checkpoint import load_checkpoint
from segkit.engine.evaluate import evaluate_checkpoint, evaluate_folders
from segkit.engine.predict import predict_folder
from segkit.engine.train import train


def _pair(rng: np.random.Generator, h: int, w: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image and its mask 'class = intensity third' (learnable in a few steps)."""
    coarse = rng.random((h // 8 + 2, w // 8 + 2)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-6)
    mask = np.minimum(smooth * 3, 2).astype(np.uint8)
    if bits == 16:
        return (smooth * 40000 + 1000).astype(np.uint16), mask
    return (smooth * 255).astype(np.uint8), mask


def _write(root: Path, split: str, sizes: list[tuple[int, int]], bits: int = 8, seed: int = 0) -> None:
    import tifffile

    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        image, mask = _pair(rng, h, w, bits)
        if bits == 16:
            tifffile.imwrite(root / "images" / split / f"{i:03d}.tif", image)
        else:
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")


def _config(root: Path, **data) -> dict:
    return {"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                      "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}},
            "data": {"kind": "folder", "root": str(root), "train_transforms": [], **data},
            "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
            "trainer": {"epochs": 3, "batch_size": 2, "val_batch_size": 3, "seed": 0, "device": "cpu"},
            "output": {"plots": False}}


CASES = {
    "odd": ([(48, 80)] * 4, [(48, 80), (48, 80), (48, 80)], 8),
    "mri": ([(181, 217)] * 2, [(181, 217), (181, 217)], 8),
    "mixed": ([(64, 64)] * 4, [(48, 80), (33, 47), (33, 47), (181, 217), (64, 64)], 8),
    "tiff16": ([(48, 80)] * 4, [(48, 80), (70, 50)], 16),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_and_predict_reproduce_training_validation(tmp_path, case):
    train_sizes, val_sizes, bits = CASES[case]
    root = tmp_path / "data"
    _write(root, "train", train_sizes, bits, seed=0)
    _write(root, "val", val_sizes, bits, seed=1)
    run = tmp_path / "run"
    train(config_from_dict(_config(root)), run, progress=False)
    stored = load_checkpoint(run / "best.pt")["metrics"]["confusion_matrix"]

    report = evaluate_checkpoint(run / "best.pt", device="cpu")
    assert report.metrics["confusion_matrix"] == stored
    assert sum(map(sum, stored)) == sum(h * w for h, w in val_sizes)  # every pixel, at the file's own size
    predicted = np.asarray(stored).sum(0)
    assert (predicted > 0).sum() >= 2, "the model predicts one class only: the comparison would be vacuous"

    # predict writes the labels evaluate scores: the written masks give the same matrix
    predict_folder(run / "best.pt", root / "images" / "val", tmp_path / "pred", device="cpu", overlays=False)
    folders = evaluate_folders(tmp_path / "pred" / "masks", root / "masks" / "val", num_classes=3)
    assert folders.metrics["confusion_matrix"] == stored


def test_evaluate_batch_size_does_not_change_the_matrix(tmp_path):
    """Mixed sizes are never padded to a neighbour's size: any batch size scores the same."""
    root = tmp_path / "data"
    _write(root, "train", [(48, 80)] * 2, seed=0)
    _write(root, "val", [(48, 80), (33, 47), (48, 80), (181, 217)], seed=1)
    run = tmp_path / "run"
    train(config_from_dict({**_config(root), "trainer": {"epochs": 1, "batch_size": 2, "device": "cpu"}}), run, progress=False)
    matrices = [evaluate_checkpoint(run / "last.pt", device="cpu", batch_size=b).metrics["confusion_matrix"] for b in (1, 4)]
    assert matrices[0] == matrices[1]


def _first_item(cfg_dict: dict, seeds: range) -> list[torch.Tensor]:
    train_set, _ = build_datasets(config_from_dict(cfg_dict))
    return [train_set[(0, seed)][0] for seed in seeds]


def test_empty_transform_list_means_none_and_auto_means_defaults(tmp_path):
    root = tmp_path / "data"
    _write(root, "train", [(48, 80)] * 2)
    _write(root, "val", [(48, 80)])
    cfg = _config(root)
    plain = _first_item(cfg, range(6))
    assert all(torch.equal(plain[0], x) for x in plain)  # no augmentation whatever the seed
    reference = (torch.from_numpy(np.asarray(Image.open(root / "images" / "train" / "000.png"), np.float32) / 255.0) - 0.449) / 0.226
    torch.testing.assert_close(plain[0][0], reference)

    without_key = {**cfg, "data": {k: v for k, v in cfg["data"].items() if k != "train_transforms"}}
    augmented = _first_item(without_key, range(6))
    assert any(not torch.equal(augmented[0], x) for x in augmented)
    for spec in ("auto", None):
        steps = transform_steps(config_from_dict({**cfg, "data": {**cfg["data"], "train_transforms": spec, "val_transforms": spec}}), True)
        assert [s["name"] for s in steps] == ["hflip", "vflip", "rotate", "elastic", "brightness_contrast"]
    assert transform_steps(config_from_dict(without_key), False) == []  # validation: none by default
    assert transform_steps(config_from_dict(cfg), True) == []


def test_transform_key_of_the_wrong_kind_is_a_segkit_error(tmp_path):
    with pytest.raises(SegkitError, match=r"data.train_transforms' is 'none'; give 'auto'"):
        config_from_dict({**_config(tmp_path), "data": {"train_transforms": "none"}})


@pytest.mark.parametrize("native, amp_dtype, trained_amp, requested, expected", [
    (True, "auto", True, True, torch.bfloat16),
    (False, "auto", True, True, torch.float16),
    (False, "bfloat16", True, True, torch.float16),  # emulated bf16 is slower than fp32: fp16 instead
    (True, "float16", True, True, torch.float16),
    (True, "auto", False, True, False),  # the run trained without AMP
    (True, "auto", True, False, False),  # --no-amp
])
def test_inference_runs_in_the_precision_training_chose(monkeypatch, native, amp_dtype, trained_amp, requested, expected):
    import segkit.engine.amp as amp
    from segkit.engine.inputs import checkpoint_amp

    monkeypatch.setattr(amp, "native_bf16", lambda device: native)
    cfg = config_from_dict({"trainer": {"amp": trained_amp, "amp_dtype": amp_dtype}})
    assert checkpoint_amp(cfg, requested, torch.device("cuda", 0)) == expected
    assert checkpoint_amp(cfg, requested, torch.device("cpu")) is False


def test_device_scaling_is_the_datasets_standardisation(tmp_path):
    """The loader hands uint8 (8-bit, pixel-moving steps only) or [0, 1] float images; DeviceScaling
    makes them what the dataset's own CPU path gives: (x / 255 - mean) / std."""
    from segkit.data import FolderDataset
    from segkit.engine.inputs import DeviceScaling

    root = tmp_path / "data"
    _write(root, "train", [(48, 80)] * 2)
    plain = FolderDataset(root, "train", num_classes=3, mean=0.3, std=0.2)
    lean = FolderDataset(root, "train", num_classes=3, mean=0.3, std=0.2)
    lean.device_scaling = True
    image, mask = lean[1]
    assert image.dtype == torch.uint8 and mask.dtype == torch.uint8  # 4x / 8x fewer bytes through the loader
    scaling = DeviceScaling.of(lean)
    expected, expected_mask = plain[1]
    torch.testing.assert_close(scaling(image[None])[0], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scaling(image), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask.long(), expected_mask)
    unit = image.float() / 255.0  # float input: already in [0, 1]
    torch.testing.assert_close(scaling(unit), expected, rtol=1e-6, atol=1e-6)

    from segkit.data import build_transforms

    lean.transforms = build_transforms(["rotate"], train=True, seed=0)  # interpolating: float32 in [0, 1]
    assert lean[1][0].dtype == torch.float32 and float(lean[1][0].max()) <= 1.0


def test_smallest_max_size_resizes_the_input_and_scores_at_the_masks_size():
    from segkit.engine.inputs import InputPipeline

    pipeline = InputPipeline([{"name": "smallest_max_size", "max_size": 32}])
    image, scored = pipeline(np.random.default_rng(0).random((48, 80, 1)).astype(np.float32))
    assert tuple(image.shape) == (1, 32, 53) and scored == (32, 53)  # shorter side 32, aspect kept
    logits = torch.randn(1, 3, 32, 53)
    assert tuple(InputPipeline.to_mask_size(logits, scored, (48, 80)).shape) == (1, 3, 48, 80)


def test_a_config_naming_its_weights_evaluates_as_the_checkpoint_does(tmp_path):
    """`segkit evaluate --checkpoint CONFIG.yaml`: the model built from model.weights (here a run's best.pt;
    torchvision's published files by name alike), with no checkpoint written first."""
    from omegaconf import OmegaConf

    from segkit.cli import main

    root = tmp_path / "data"
    _write(root, "train", [(48, 80)] * 2, seed=0)
    _write(root, "val", [(48, 80), (33, 47)], seed=1)
    run = tmp_path / "run"
    train(config_from_dict({**_config(root), "trainer": {"epochs": 1, "batch_size": 2, "device": "cpu"}}), run, progress=False)
    config = OmegaConf.load(run / "config.yaml")
    config.model.weights = str(run / "last.pt")
    OmegaConf.save(config, tmp_path / "published.yaml")
    from_config = evaluate_checkpoint(tmp_path / "published.yaml", device="cpu")
    assert from_config.metrics["confusion_matrix"] == evaluate_checkpoint(run / "last.pt", device="cpu").metrics["confusion_matrix"]
    config.model.weights = None
    OmegaConf.save(config, tmp_path / "none.yaml")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.yaml"), "--quiet"]) == 2

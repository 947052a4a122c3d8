"""COCO data from a config: both splits checked before training, evaluation reads the same keys,
and reports keep images that share a file name apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _data_helpers import gray, rgb, write_png

from segkit import SegkitError
from segkit.config import config_from_dict, to_dict
from segkit.engine.builders import build_datasets, build_model_from_config
from segkit.engine.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _square(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_split(root: Path, name: str, grey: bool = False) -> tuple[Path, Path]:
    """Three 40x48 images, two of them ``x.png`` in different subfolders; one has no annotation."""
    images = root / name
    files = ["a/x.png", "b/x.png", "empty.png"]
    for i, file_name in enumerate(files):
        write_png(images / file_name, gray(40, 48, i) if grey else rgb(40, 48, i))
    anns = [{"id": 1, "image_id": 1, "category_id": 4, "iscrowd": 0, "segmentation": _square(2, 2, 20, 30)},
            {"id": 2, "image_id": 2, "category_id": 9, "iscrowd": 0, "segmentation": _square(10, 5, 40, 35)}]
    data = {"images": [{"id": i + 1, "file_name": f, "height": 40, "width": 48} for i, f in enumerate(files)],
            "annotations": anns, "categories": [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}]}
    annotations = root / f"{name}.json"
    annotations.write_text(json.dumps(data))
    return images, annotations


def coco_config(root: Path, grey_val: bool = False, **data: object) -> object:
    train_images, train_annotations = write_split(root, "train")
    val_images, val_annotations = write_split(root, "val", grey=grey_val)
    return config_from_dict({
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 3},
        "data": {"kind": "coco", "train_images": str(train_images), "train_annotations": str(train_annotations),
                 "val_images": str(val_images), "val_annotations": str(val_annotations), **data},
        "trainer": {"epochs": 1, "batch_size": 2, "device": "cpu"},
    })


def test_skip_empty_drops_training_images_only(tmp_path):
    train, val = build_datasets(coco_config(tmp_path, options={"skip_empty": True}))
    assert len(train) == 2 and len(val) == 3  # validation scores every image


def test_a_grey_validation_set_for_an_rgb_model_is_repeated_to_rgb(tmp_path):
    """As grey images among RGB ones are, and as predict reads them."""
    _, val = build_datasets(coco_config(tmp_path, grey_val=True))
    assert val.in_channels == 3
    image = val[(0, 0)][0]
    unit = image * val.std + val.mean  # before the per-channel standardisation: one grey plane, three times
    assert image.shape[0] == 3 and torch.allclose(unit[0], unit[1], atol=1e-6) and torch.allclose(unit[1], unit[2], atol=1e-6)


def test_the_channel_message_names_the_images_and_the_key(tmp_path):
    cfg = coco_config(tmp_path)
    cfg.model.in_channels = 1
    with pytest.raises(SegkitError, match=r"the images in .*train have 3 channel\(s\) but in_channels \(model\.in_channels in a "
                                          r"config\) is 1; use images like the model's, or set in_channels=3"):
        build_datasets(cfg)


def test_class_names_must_name_every_coco_class(tmp_path):
    with pytest.raises(SegkitError, match=r"data\.classes names 2 classes but the COCO data has 3 \(background, cat, dog\)"):
        build_datasets(coco_config(tmp_path, classes=["cat", "dog"]))
    train, _ = build_datasets(coco_config(tmp_path / "ok", classes=["bg", "kitty", "puppy"]))
    assert len(train) == 3


def test_a_missing_image_folder_names_its_key(tmp_path):
    cfg = coco_config(tmp_path)
    cfg.data.val_images = str(tmp_path / "nope")
    with pytest.raises(SegkitError, match=r"data\.val_images .*nope is not a folder; point it at the COCO images"):
        build_datasets(cfg)


def _checkpoint(cfg, path: Path) -> Path:
    model = build_model_from_config(cfg)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
    return path


def test_evaluate_reads_the_config_keys_as_training_does(tmp_path, monkeypatch):
    """``~`` in a path, an empty key: evaluate --checkpoint gives what training gives."""
    cfg = coco_config(tmp_path / "home")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg.data.val_images = "~/val"
    cfg.data.val_annotations = "~/val.json"
    report = evaluate_checkpoint(_checkpoint(cfg, tmp_path / "tilde.pt"), device="cpu")
    assert len(report.images) == 3
    cfg.data.val_images = None
    with pytest.raises(SegkitError, match=r"config key 'data\.val_images' is empty"):
        evaluate_checkpoint(_checkpoint(cfg, tmp_path / "empty.pt"), device="cpu")


def test_evaluate_split_picks_the_coco_annotations_and_refuses_others(tmp_path):
    """--split was ignored for a COCO checkpoint: train, val and a misspelt name all scored val."""
    cfg = coco_config(tmp_path)
    checkpoint = _checkpoint(cfg, tmp_path / "model.pt")
    assert evaluate_checkpoint(checkpoint, device="cpu").source["data"] == cfg.data.val_annotations
    assert evaluate_checkpoint(checkpoint, device="cpu", split="train").source["data"] == cfg.data.train_annotations
    with pytest.raises(SegkitError, match=r"--split 'trian': a COCO checkpoint is scored on its config's annotations; use "
                                          r"--split val \(data\.val_annotations, the default\) or --split train"):
        evaluate_checkpoint(checkpoint, device="cpu", split="trian")


def test_images_sharing_a_file_name_keep_their_own_names_and_figures(tmp_path):
    cfg = coco_config(tmp_path)
    checkpoint = _checkpoint(cfg, tmp_path / "model.pt")
    figure = tmp_path / "worst.png"
    report = evaluate_checkpoint(checkpoint, device="cpu", worst=3, worst_figure=figure)
    assert [name for name, _ in report.images] == ["a/x", "b/x", "empty"]
    assert figure.is_file()

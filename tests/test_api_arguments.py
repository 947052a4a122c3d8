"""Arguments a notebook user passes: numpy integers work like ints, and what cannot work is a
SegkitError naming the argument (not a TypeError or a torch error from deep inside)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import segkit
from segkit import SegkitError
from segkit.data import CocoDataset, FolderDataset, make_synthetic
from segkit.engine.inference import check_tile_options
from segkit.engine.train import resolve_device


def test_numpy_integers_are_counts():
    model = segkit.create_model("unet", encoder="resnet18", num_classes=np.int64(3), in_channels=np.int32(1)).eval()
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    classifier = segkit.create_classifier("cifar_resnet20", num_classes=np.int64(4)).eval()
    assert classifier(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(SegkitError, match="num_classes must be a positive integer"):
            segkit.create_model("unet", encoder="resnet18", num_classes=bad)


@pytest.mark.parametrize("build,match", [
    (lambda: segkit.create_encoder("resnet18", foo=1), "encoder 'resnet18' has no option 'foo'"),
    (lambda: segkit.create_classifier("vgg11", bar=2), "classifier 'vgg11' has no option 'bar'"),
    (lambda: resolve_device("gpu0"), "device 'gpu0' is not a device"),
    (lambda: check_tile_options(None, 0.25, 0), r"--batch-size \(batch_size=\) must be a positive integer"),
    (lambda: check_tile_options("64", 0.25), r"--tile \(tile=\) must be a positive number of pixels"),
])
def test_bad_arguments_are_named(build, match):
    with pytest.raises(SegkitError, match=match):
        build()


def test_dataset_arguments_of_the_wrong_kind(tmp_path):
    with pytest.raises(SegkitError, match="make_synthetic needs n >= 1"):
        make_synthetic(tmp_path / "s", n="4")
    make_synthetic(tmp_path / "s", n=np.int64(4), size=(np.int64(20), 24))
    with pytest.raises(SegkitError, match="transforms is 'hflip'; give a callable"):
        FolderDataset(tmp_path / "s", "train", transforms="hflip")

    (tmp_path / "coco").mkdir()
    annotations = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}], "annotations": [],
                   "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "cat"}]}
    (tmp_path / "coco.json").write_text(json.dumps(annotations))
    with pytest.raises(SegkitError, match=r"categories is 'car'; give a list of category ids or names, e.g. \['car'\]"):
        CocoDataset(tmp_path / "coco", tmp_path / "coco.json", categories="car")

"""make_synthetic: a folder dataset on disk, same seed same bytes, readable by FolderDataset."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import tree_digest
from PIL import Image
from scipy import ndimage

from segkit.data import SYNTHETIC_CLASSES, FolderDataset, make_synthetic
from segkit.errors import SegkitError


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_synthetic(tmp_path / "a", n=6, size=64, seed=3)
    b = make_synthetic(tmp_path / "b", n=6, size=64, seed=3)
    c = make_synthetic(tmp_path / "c", n=6, size=64, seed=4)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    # image i does not depend on n
    d = make_synthetic(tmp_path / "d", n=8, size=64, seed=3, val_fraction=0.0)
    assert (a / "images" / "train" / "0002.png").read_bytes() == (d / "images" / "train" / "0002.png").read_bytes()


def test_layout_split_and_contents(tmp_path):
    root = make_synthetic(tmp_path, n=8, size=(96, 128), seed=0)
    train = FolderDataset(root, "train", num_classes=len(SYNTHETIC_CLASSES))
    val = FolderDataset(root, "val", num_classes=len(SYNTHETIC_CLASSES))
    assert len(train) == 6 and len(val) == 2 and train.in_channels == 1
    assert not set(train.stems) & set(val.stems)
    image = Image.open(train.samples[0][0])
    assert image.mode == "L" and image.size == (128, 96)
    report = train.check_files()
    assert report.ok and not report.hints, report.format()
    share = {k: v / sum(report.histogram.values()) for k, v in report.histogram.items()}
    assert set(share) == {0, 1, 2}
    assert 0.6 < share[0] < 0.95 and share[1] > 0.02 and share[2] > 0.02


def _axis_ratio(region: np.ndarray) -> float:
    ys, xs = np.nonzero(region)
    low, high = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float)))
    return float(np.sqrt(high / max(low, 1e-6)))


def test_cells_are_visible_touching_and_the_two_kinds_differ(tmp_path):
    root = make_synthetic(tmp_path, n=8, size=128, seed=1, val_fraction=0.0)
    inside, outside, touching = [], [], 0
    ratios: dict[int, list[float]] = {1: [], 2: []}
    for path in sorted((root / "masks" / "train").glob("*.png")):
        mask = np.array(Image.open(path))
        image = np.array(Image.open(root / "images" / "train" / path.name)).astype(np.float32)
        inside.append(image[mask > 0].mean())
        outside.append(image[mask == 0].mean())
        counts = {}
        for kind in (1, 2):
            objects, counts[kind] = ndimage.label(mask == kind)
            ratios[kind] += [_axis_ratio(objects == i) for i in range(1, counts[kind] + 1) if (objects == i).sum() > 20]
        # cells of different kinds touch: fewer foreground blobs than blobs of each kind counted apart
        touching += counts[1] + counts[2] - ndimage.label(mask > 0)[1]
    assert np.mean(inside) > np.mean(outside) + 40  # cells are visible
    assert touching >= 3
    assert np.median(ratios[2]) > 1.8 > 1.3 > np.median(ratios[1])  # elongated vs round


def test_bad_arguments(tmp_path):
    with pytest.raises(SegkitError, match="n >= 1"):
        make_synthetic(tmp_path, n=0)
    with pytest.raises(SegkitError, match="val_fraction"):
        make_synthetic(tmp_path, n=4, val_fraction=1.0)

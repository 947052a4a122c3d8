"""scripts/benchmarks/_real_data.py: the array steps that turn instance stacks into a folder dataset.

Small in-memory arrays only; nothing is downloaded (the wheel is the benchmark's business).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("_real_data", REPO / "scripts" / "benchmarks" / "_real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def squares() -> np.ndarray:
    """Squares 1 and 2 touch along a vertical line (columns 3 | 4); square 5 stands alone."""
    instances = np.zeros((8, 9), np.uint16)
    instances[1:4, 1:4] = 1
    instances[1:4, 4:7] = 2
    instances[6:8, 0:2] = 5
    return instances


def test_binary_masks_mark_every_cell_pixel(real_data):
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
    ], np.uint8)
    labels = real_data.semantic_masks(squares(), "binary", 3)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)


def test_3class_masks_mark_the_band_where_two_cells_touch(real_data):
    # Border (2): every pixel, cell or background, whose 3x3 neighbourhood holds ids 1 and 2:
    # columns 3-4, from the row above the contact to the row below it. The isolated square has none.
    expected = np.array([
        [0, 0, 0, 2, 2, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0],
        [0, 0, 0, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
    ], np.uint8)
    np.testing.assert_array_equal(real_data.semantic_masks(squares(), "3class", 3), expected)


def test_3class_border_grows_with_the_neighbourhood_and_frames_stay_apart(real_data):
    spaced = np.zeros((12, 9), np.uint16)
    spaced[:5] = squares()[:5]
    spaced[10:, :2] = 5  # further away: a 5x5 window would otherwise reach square 1 from square 5
    wide = real_data.semantic_masks(spaced, "3class", 5)
    # A 5x5 window reaches two pixels: columns 2-5 and rows 0-5 see both squares.
    assert (wide[:6, 2:6] == 2).all() and (wide == 2).sum() == 24 and (wide[10:, :2] == 1).all()
    stack = np.stack([squares(), np.where(squares() == 2, 0, squares())])  # frame 1: square 2 gone, nothing touches
    labels = real_data.semantic_masks(stack, "3class", 3)
    np.testing.assert_array_equal(labels[0], real_data.semantic_masks(squares(), "3class", 3))
    assert not (labels[1] == 2).any()


def test_semantic_masks_rejects_bad_arguments(real_data):
    with pytest.raises(ValueError, match="kind"):
        real_data.semantic_masks(squares(), "4class", 3)
    with pytest.raises(ValueError, match="border"):
        real_data.semantic_masks(squares(), "3class", 1)


def test_binning_averages_images_and_samples_instances(real_data):
    images = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7) * 3
    binned = real_data.bin_images(images, 2)
    assert binned.shape == (2, 2, 3) and binned.dtype == np.uint16  # the odd last row and column are dropped
    assert binned[1, 1, 2] == round(images[1, 2:4, 4:6].mean())
    instances = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    np.testing.assert_array_equal(real_data.bin_instances(instances, 2), [[0, 2, 4], [14, 16, 18]])  # top-left pixels
    assert real_data.scaled_border(5, 1) == 5 and real_data.scaled_border(5, 2) == 3 and real_data.scaled_border(9, 2) == 5


def test_time_split_puts_the_last_frames_in_val_and_none_in_both(real_data):
    train, val = real_data.time_split(range(20), 5)
    assert train == list(range(15)) and val == list(range(15, 20))
    assert not set(train) & set(val) and max(train) < min(val)
    instances = np.zeros((6, 4, 4), np.uint16)
    instances[[0, 1, 2, 4], 1, 1] = 7  # frames 3 and 5 unlabelled
    frames = real_data.annotated_frames(instances, n_images=5)
    assert frames == [0, 1, 2, 4]
    assert real_data.time_split(frames, 1) == ([0, 1, 2], [4])
    with pytest.raises(ValueError, match="val_frames"):
        real_data.time_split(frames, 4)


def test_tiles_cover_the_frame_in_a_grid(real_data):
    frame = np.arange(7 * 9).reshape(7, 9)
    tiles = real_data.tile(frame, 2)
    assert list(tiles) == ["_r0c0", "_r0c1", "_r1c0", "_r1c1"]
    assert all(t.shape == (3, 4) for t in tiles.values())
    np.testing.assert_array_equal(np.block([[tiles["_r0c0"], tiles["_r0c1"]], [tiles["_r1c0"], tiles["_r1c1"]]]), frame[:6, :8])
    assert real_data.tile(frame, 1) == {"": frame}

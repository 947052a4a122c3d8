"""0/255 binary masks read without ``binary``: their whole foreground is ignore_index 255, so training
learns background alone and every score covers class 0 alone (a 0/255 prediction folder scores a
perfect 1.0). Nothing fails, so each path says so: training, evaluate --pred/--gt, evaluate
--checkpoint (tests/test_evaluate.py) and check-data (tests/test_data_folder.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data import FolderDataset
from segkit.data.masks import binary_masks_hint, is_zero_255
from segkit.engine.evaluate import evaluate_folders


def _square(value: int, size: int = 32, dtype=np.uint8) -> np.ndarray:
    mask = np.zeros((size, size), dtype)
    mask[4:20, 6:26] = value
    return mask


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folders(tmp_path: Path, gt_value: int, pred_value: int, n: int = 3, dtype=np.uint8) -> tuple[Path, Path]:
    for i in range(n):
        _write(tmp_path / "gt" / f"{i}.png", _square(gt_value, dtype=dtype))
        pred = np.zeros((32, 32), dtype)
        pred[6:20, 6:26] = pred_value  # a little smaller than the ground truth
        _write(tmp_path / "pred" / f"{i}.png", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_a_mask_is_flagged_when_it_has_ignored_pixels_and_no_other_label():
    assert is_zero_255([100, 0], 20, 255) and is_zero_255([100, 0, 0], 20, 255)
    assert not is_zero_255([100, 3], 20, 255)  # a real class 1: 255 is a boundary
    assert not is_zero_255([100, 0], 0, 255)  # nothing ignored
    assert not is_zero_255([100, 0], 20, 254)  # not the 0/255 pattern
    assert binary_masks_hint([], 5, "--binary") is None
    assert binary_masks_hint(["a.png"], 1, "--binary").startswith("the mask checked (a.png) holds only 0 and 255")
    assert binary_masks_hint(["a.png"], 4, "--binary").startswith("1 of the 4 masks checked (a.png) holds")
    assert binary_masks_hint(["a.png", "b.png"], 5, "--binary").startswith("2 of the 5 masks checked (e.g. a.png) hold only 0 and 255")


@pytest.mark.parametrize("pred_value", [255, 1], ids=["pred 0-255", "pred 0-1"])  # the two counting branches
def test_prediction_folders_of_0_255_masks_get_the_warning(tmp_path, pred_value):
    pred, gt = _folders(tmp_path, 255, pred_value)
    report = evaluate_folders(pred, gt, 2)
    if pred_value == 255:
        assert report.metrics["miou"] == 1.0  # what the warning is for: a perfect score of background alone
    [warning] = [w for w in report.warnings if "ignore_index" in w]
    assert "all 3 masks checked" in warning and "set --binary" in warning

    binary = evaluate_folders(pred, gt, 2, binary=True)
    assert not any("ignore_index" in w for w in binary.warnings)
    if pred_value == 255:
        assert binary.metrics["iou"][1] == pytest.approx(14 * 20 / (16 * 20))


def test_sixteen_bit_ground_truth_is_counted_too(tmp_path):
    pred, gt = _folders(tmp_path, 255, 255, dtype=np.uint16)
    assert any("set --binary" in w for w in evaluate_folders(pred, gt, 2).warnings)


def test_masks_with_a_real_class_and_a_255_boundary_get_no_warning(tmp_path):
    for i in range(2):
        mask = _square(1)
        mask[3, :] = 255  # VOC's boundary band
        _write(tmp_path / "gt" / f"{i}.png", mask)
        _write(tmp_path / "pred" / f"{i}.png", _square(1))
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 2)
    assert not any("ignore_index" in w for w in report.warnings)


def _dataset(tmp_path: Path, masks: list[np.ndarray], **options) -> FolderDataset:
    for i, mask in enumerate(masks):
        _write(tmp_path / "images" / f"{i:03d}.png", np.full(mask.shape, 100, np.uint8))
        _write(tmp_path / "masks" / f"{i:03d}.png", mask)
    return FolderDataset(tmp_path, num_classes=2, **options)


def test_training_samples_the_masks_and_warns(tmp_path, caplog):
    from segkit.engine.train import _warn_about_labels

    masks = [_square(255) for _ in range(39)] + [np.zeros((32, 32), np.uint8)]
    dataset = _dataset(tmp_path / "plain", masks)
    hint = dataset.sampled_label_hint("data.options.binary: true")
    assert hint.startswith("15 of the 16 masks checked (e.g. ") and "set data.options.binary: true" in hint
    with caplog.at_level(logging.WARNING, logger="segkit"):
        _warn_about_labels(dataset)
    assert "the training masks need a look" in caplog.text and "data.options.binary: true" in caplog.text

    assert _dataset(tmp_path / "binary", masks[:4], binary=True).sampled_label_hint() is None
    boundary = _square(1)
    boundary[3, :] = 255
    assert _dataset(tmp_path / "voc", [boundary, _square(0)]).sampled_label_hint() is None
    empty = [np.zeros((32, 32), np.uint8)] * 3  # background only, nothing ignored: no 0/255 pattern
    assert _dataset(tmp_path / "empty", empty).sampled_label_hint() is None


def test_1_bit_png_masks_hold_0_and_1_on_every_path(tmp_path):
    """``Image.fromarray(bool_mask).save(...)`` writes a 1-bit PNG; it reads back as 0/1 (as numpy
    reads it, and as a 1-bit TIFF reads), not as Pillow's and OpenCV's 0/255, which would have
    made its foreground ignore_index. Images of 1 bit still read 0/255."""
    from segkit.data.io import read_image, read_mask_pixels

    square = _square(1).astype(bool)
    Image.fromarray(square).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(read_mask_pixels(tmp_path / "bits.png"), square.astype(np.uint8))
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[..., 0], square.astype(np.uint8) * 255)

    # evaluate --pred/--gt: 8-bit 0/1 predictions, ground truth 8-bit first, then 1-bit (the fast read gives way)
    pred = np.zeros((32, 32), np.uint8)
    pred[6:20, 6:26] = 1
    for i in range(3):
        _write(tmp_path / "pred" / f"{i}.png", pred)
        gt = _square(1)
        _write(tmp_path / "gt" / f"{i}.png", gt.astype(bool) if i else gt)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 2)
    assert report.metrics["iou"][1] == pytest.approx(14 * 20 / (16 * 20))
    assert not report.warnings

    dataset = _dataset(tmp_path / "data", [square] * 2)
    assert dataset.sampled_label_hint() is None
    assert set(np.unique(dataset[0][1].numpy()).tolist()) == {0, 1}


def test_masks_that_mix_1_bit_and_0_255_files_are_flagged_one_by_one(tmp_path):
    """Half the masks 1-bit (0/1), half 8-bit 0/255: the summed histogram holds class 1, so a check
    over all masks at once said nothing while half the foreground was ignored."""
    masks = [_square(1).astype(bool) if i % 2 else _square(255) for i in range(6)]
    dataset = _dataset(tmp_path / "data", masks)
    assert dataset.sampled_label_hint().startswith("3 of the 6 masks checked")
    assert "3 of the 6 masks checked" in "\n".join(dataset.check_files().hints)
    for i, mask in enumerate(masks):
        _write(tmp_path / "gt" / f"{i}.png", mask)
        _write(tmp_path / "pred" / f"{i}.png", _square(1))
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", 2)
    assert any(w.startswith("3 of the 6 masks checked") and "gt/0.png" in w for w in report.warnings)


def test_voc_style_void_only_masks_do_not_raise_the_binary_warning(tmp_path):
    """Where other masks hold 255 beside real labels (VOC's void borders), 255 is void there, and a
    mask whose only object is void ("difficult") is not a 0/255 binary mask."""
    void_only = _square(255)
    bordered = _square(2)
    bordered[3, :] = 255
    masks = [void_only, bordered, _square(1)]
    for i, mask in enumerate(masks):
        _write(tmp_path / "data" / "images" / f"{i}.png", np.full(mask.shape, 100, np.uint8))
        _write(tmp_path / "data" / "masks" / f"{i}.png", mask)
        _write(tmp_path / "pred" / f"{i}.png", _square(1))
    dataset = FolderDataset(tmp_path / "data", num_classes=3)
    assert dataset.sampled_label_hint() is None
    assert not any("only 0 and 255" in hint for hint in dataset.check_files().hints)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "data" / "masks", 3)
    assert not any("only 0 and 255" in w for w in report.warnings)

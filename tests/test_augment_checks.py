"""The input pipeline on real-data setups: resized masks stay on their image, padding fills agree on
both paths, transforms cannot hand back a mask that no longer fits, and config keys that a
segmentation run would ignore (or an ignore_index no mask can hold) are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.data import FolderDataset, build_transforms
from segkit.data.transforms import moves_pixels_only
from segkit.engine.inputs import InputPipeline


def _coordinates(h: int = 181, w: int = 217) -> tuple[np.ndarray, np.ndarray]:
    """An image whose value is its column (over 255) and a mask holding the column: aligned they agree."""
    columns = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    return columns[..., None] / 255.0, columns.astype(np.uint8)


@pytest.mark.parametrize("step", [{"name": "resize", "size": [45, 54]}, {"name": "smallest_max_size", "max_size": 60},
                                  {"name": "random_resized_crop", "size": 48, "scale": [0.9, 1.0], "ratio": [1.2, 1.2]}],
                         ids=lambda step: step["name"])
def test_a_resized_mask_stays_on_its_image(step):
    """OpenCV's INTER_NEAREST took the top-left source pixel: 4x down, the mask sat 2 pixels off its image."""
    image, mask = _coordinates()
    out = build_transforms([step], train=True, seed=0)(image=image, mask=mask)
    offset = out["mask"].float() - out["image"][0] * 255
    assert abs(float(offset.mean())) < 0.25
    nearest = build_transforms([{**step, "interpolation": 0}], train=True, seed=0)(image=image, mask=mask)
    torch.testing.assert_close(nearest["mask"].float(), nearest["image"][0] * 255, rtol=0, atol=1e-3)  # one rule for both


def test_mask_interpolation_that_blends_labels_is_refused():
    for option in ({"mask_interpolation": 1}, {"area_for_downscale": "image_mask"}):
        with pytest.raises(SegkitError, match="mask_interpolation|area_for_downscale"):
            build_transforms([{"name": "resize", "size": 32, **option}], train=True)
    build_transforms([{"name": "resize", "size": 32, "mask_interpolation": 6, "area_for_downscale": "image"}], train=True)


def test_a_padding_fill_sends_8_bit_images_the_float_way():
    """A fill is in [0, 1] units: on a uint8 image it would be 0.5 of 255, so only a zero fill may travel as stored."""
    assert moves_pixels_only(build_transforms([{"name": "pad", "size": [40, 40]}, "hflip"], train=True))
    assert not moves_pixels_only(build_transforms([{"name": "pad", "size": [40, 40], "fill": 0.5}], train=True))
    assert not moves_pixels_only(build_transforms([{"name": "random_crop", "size": 40, "fill": 1.0}], train=True))


def _dataset(tmp_path, transforms, num_classes=3) -> FolderDataset:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.full((20, 24), 100, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.ones((20, 24), np.uint8)).save(tmp_path / "masks" / "a.png")
    return FolderDataset(tmp_path, num_classes=num_classes, transforms=transforms)


@pytest.mark.parametrize("transforms,match", [
    (lambda image, mask: (image, mask), "returned tuple"),
    (lambda image, mask: {"image": image, "mask": mask[:-1]}, r"mask of .* is \(19, 24\) but its image \(20, 24\)"),
    (lambda image, mask: {"image": image, "mask": mask + 0.4}, "is torch.float64; masks hold integer labels"),
    (build_transforms([{"name": "pad", "size": [30, 30], "fill_mask": 5}], train=True), "holds 5, outside"),
], ids=["tuple", "cropped mask", "float mask", "fill_mask"])
def test_transforms_that_break_the_pair_are_named(tmp_path, transforms, match):
    with pytest.raises(SegkitError, match=match):
        _dataset(tmp_path, transforms)[0]


def test_val_transforms_that_pad_before_resizing_are_refused():
    with pytest.raises(SegkitError, match="pads before it resizes"):
        InputPipeline([{"name": "pad", "size": [256, 256]}, {"name": "smallest_max_size", "max_size": 128}])
    InputPipeline([{"name": "smallest_max_size", "max_size": 128}, {"name": "pad", "divisor": 32}])


@pytest.mark.parametrize("key,value", [("crop_size", 64), ("resize_size", 80), ("augment", "none"), ("hflip", False), ("crop_padding", 2)])
def test_classification_data_keys_in_a_segmentation_config_are_named(key, value):
    with pytest.raises(SegkitError, match=f"'data.{key}' is for task: classification, and segmentation ignores it"):
        config_from_dict({"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 2},
                          "data": {"kind": "folder", "root": "x", key: value}})


def test_an_ignore_index_no_mask_can_hold_is_named():
    with pytest.raises(SegkitError, match="'data.ignore_index' is -100; masks hold labels >= 0"):
        config_from_dict({"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 2},
                          "data": {"kind": "folder", "root": "x", "ignore_index": -100}})


def test_a_bad_fill_beside_ignored_pixels_is_named(tmp_path):
    """The mask's largest value was ignore_index (255), so a fill of 7 between it and the classes passed
    the check and training died later on 'Target 7 is out of bounds'."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((20, 24), 100, np.uint8)).save(tmp_path / "images" / "a.png")
    mask = np.ones((20, 24), np.uint8)
    mask[:3] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    pad = build_transforms([{"name": "pad", "size": [30, 30], "fill_mask": 7}], train=True)
    with pytest.raises(SegkitError, match="holds 7, outside"):
        FolderDataset(tmp_path, num_classes=2, transforms=pad)[0]
    fine = build_transforms([{"name": "pad", "size": [30, 30]}], train=True)  # fills with ignore_index
    assert set(FolderDataset(tmp_path, num_classes=2, transforms=fine)[0][1].unique().tolist()) == {1, 255}


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_images_kept_in_their_own_units_are_not_clipped_by_intensity_steps_in_silence(tmp_path, dtype):
    """scaling: dtype keeps floats as they are and int16 below 0: brightness_contrast, gauss_noise and
    gaussian_blur clipped them to [0, 1] (CT in Hounsfield units lost every negative pixel)."""
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pixels = np.linspace(-1000, 3000, 20 * 24).reshape(20, 24).astype(dtype)
    tifffile.imwrite(tmp_path / "images" / "a.tif", pixels)
    Image.fromarray((pixels > 0).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    for name in ("brightness_contrast", "gauss_noise", "gaussian_blur"):
        pipeline = build_transforms([{"name": name, "p": 1.0}], train=True)
        with pytest.raises(SegkitError, match=rf"a\.tif holds values from -\S+ to \S+ after scaling: dtype, and the transforms' {name} clip"):
            FolderDataset(tmp_path, num_classes=2, scaling="dtype", mean=0, std=1, transforms=pipeline)[0]
    image, _ = FolderDataset(tmp_path, num_classes=2, scaling="dtype", mean=0, std=1,
                             transforms=build_transforms(["hflip", "rotate"], train=True))[0]  # geometric steps keep the range
    assert float(image.min()) < 0
    FolderDataset(tmp_path, num_classes=2, transforms=build_transforms(["brightness_contrast"], train=True))[0]  # auto: in [0, 1]

"""The training loader's batches: RGB images stacked as they lie in memory (pixel-interleaved), then
laid out for the model by DeviceScaling; the numbers are exactly default_collate's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from segkit.data import FolderDataset, build_transforms
from segkit.engine.inputs import DeviceScaling, collate_interleaved
from tests._data_helpers import labels, rgb, gray, write_png


def _folder(root, image, n: int = 4, h: int = 24, w: int = 32):
    for i in range(n):
        write_png(root / "images" / "train" / f"{i}.png", image(h, w, i))
        write_png(root / "masks" / "train" / f"{i}.png", labels(h, w, 3, i))
    dataset = FolderDataset(root, "train", num_classes=3, mean=(0.3, 0.4, 0.5) if image is rgb else 0.4, std=0.2)
    dataset.device_scaling = True  # as the engine loads
    return dataset


@pytest.mark.parametrize("transforms", [None, ["hflip"], ["rotate"]], ids=["none", "uint8-augmented", "float-augmented"])
def test_rgb_batches_hold_default_collates_numbers_in_channels_last_layout(tmp_path, transforms):
    dataset = _folder(tmp_path, rgb)
    if transforms:
        dataset.transforms = build_transforms(transforms, train=True, seed=0)
    samples = [dataset[i] for i in range(4)]
    assert not samples[0][0].is_contiguous()  # a (C, H, W) view of the decoded (H, W, C) pixels
    images, masks = collate_interleaved(samples)
    expected_images, expected_masks = default_collate(samples)
    assert images.shape == expected_images.shape == (4, 3, 24, 32)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert torch.equal(images, expected_images) and torch.equal(masks, expected_masks)


def test_the_layout_survives_the_worker_queue(tmp_path):
    dataset = _folder(tmp_path, rgb)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_interleaved)
    reference = DataLoader(dataset, batch_size=2, num_workers=0)
    for (images, masks), (expected_images, expected_masks) in zip(loader, reference, strict=True):
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, expected_images) and torch.equal(masks, expected_masks)


def test_other_samples_collate_as_default_collate_does(tmp_path):
    grey = _folder(tmp_path / "grey", gray)
    samples = [grey[i] for i in range(3)]
    for got, expected in zip(collate_interleaved(samples), default_collate(samples), strict=True):
        assert got.is_contiguous() and torch.equal(got, expected)
    contiguous = [(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), torch.rand(8, 8)) for _ in range(2)]
    for got, expected in zip(collate_interleaved(contiguous), default_collate(contiguous), strict=True):
        assert torch.equal(got, expected)
    labelled = [(torch.rand(3, 8, 8), 1), (torch.rand(3, 8, 8), 0)]  # classification samples
    got, expected = collate_interleaved(labelled), default_collate(labelled)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_weight_map_samples_keep_their_third_field(tmp_path):
    dataset = _folder(tmp_path, rgb)
    samples = [(*dataset[i], torch.full((24, 32), float(i))) for i in range(3)]
    images, masks, weights = collate_interleaved(samples)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(weights[:, 0, 0], torch.tensor([0.0, 1.0, 2.0])) and torch.equal(masks, default_collate(samples)[1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_device_scaling_gives_the_model_its_layout_with_the_same_numbers(dtype):
    rng = np.random.default_rng(0)
    interleaved = torch.from_numpy(rng.integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    if dtype == torch.float32:
        interleaved = (interleaved.float() / 255).contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.25, 0.3])
    scaling = DeviceScaling(mean, std)
    divisor = 255.0 if dtype == torch.uint8 else 1.0
    expected = (interleaved.double() / divisor - mean.double()[:, None, None]) / std.double()[:, None, None]
    plain = scaling(interleaved)
    assert plain.dtype == torch.float32 and plain.is_contiguous()
    torch.testing.assert_close(plain.double(), expected, rtol=1e-6, atol=1e-6)
    last = scaling(interleaved.contiguous(), torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(last, plain)


@pytest.mark.parametrize("image", [rgb, gray], ids=["rgb", "grey"])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_mixing_8_and_16_bit_images_reaches_the_model_on_one_scale(tmp_path, image, workers):
    """8-bit items travel as uint8, 16-bit ones as float32 in [0, 1]: a batch of both must not
    stack 0..255 beside 0..1 (the model saw 8-bit images 255x too bright and learnt nothing)."""
    import tifffile

    for i in range(4):
        pixels = image(24, 32, i)
        if i % 2:  # the odd items are 16-bit TIFFs holding the 8-bit pixels times 257 (same unit values)
            tifffile.imwrite(tmp_path / "images" / "train" / f"{i}.tif", pixels.astype(np.uint16) * 257)
        else:
            write_png(tmp_path / "images" / "train" / f"{i}.png", pixels)
        write_png(tmp_path / "masks" / "train" / f"{i}.png", labels(24, 32, 3, i))
    mean = (0.3, 0.4, 0.5) if image is rgb else 0.4
    dataset = FolderDataset(tmp_path, "train", num_classes=3, mean=mean, std=0.2, scaling="dtype")
    # A step that moves pixels only (8-bit items stay uint8), and always fires: every path flips alike.
    dataset.transforms = build_transforms([{"name": "hflip", "p": 1.0}], train=True)
    dataset.device_scaling = True
    assert {dataset[i][0].dtype for i in range(4)} == {torch.uint8, torch.float32}
    scaling = DeviceScaling.of(dataset)
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_interleaved)
    (images, _), = list(loader)
    assert images.dtype == torch.float32
    # Each item's own scaling, one at a time, is the reference.
    expected = torch.stack([scaling(dataset[i][0]) for i in range(4)])
    torch.testing.assert_close(scaling(images), expected, rtol=0, atol=1e-6)
    assert float(scaling(images).amax()) < 5  # (1 - 0.3) / 0.2 = 3.5 at most

"""Albumentations pipelines from config: image and mask together, nearest masks, seeds, bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from _data_helpers import labels, make_folder, write_png
from torch.utils.data import DataLoader

from segkit.data import FolderDataset, build_transforms, default_spec, list_transforms
from segkit.data.transforms import seed_transforms
from segkit.errors import SegkitError


def _sample(h=64, w=48, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((h, w, 1), dtype=np.float32)
    mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
    return image, mask


def _run(pipeline, n=5):
    image, mask = _sample()
    return [pipeline(image=image, mask=mask) for _ in range(n)]


def test_same_seed_same_augmentations_other_seed_others():
    a = _run(build_transforms(train=True, size=32, seed=7))
    b = _run(build_transforms(train=True, size=32, seed=7))
    c = _run(build_transforms(train=True, size=32, seed=8))
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))
    assert a[0]["image"].shape == (1, 32, 32) and a[0]["image"].dtype == torch.float32
    assert a[0]["mask"].shape == (32, 32)


def test_steps_draw_from_one_generator():
    # albumentations 2.0.8's Compose(seed=) gives every step the same seed, so two flips with equal p
    # would always fire together; segkit's seeding must not.
    pipeline = build_transforms(["hflip", "vflip"], train=True, seed=0)
    image = np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    seen = set()
    for _ in range(40):
        out = pipeline(image=image, mask=np.zeros((2, 2), np.uint8))["image"][0]
        seen.add((bool(out[0, 0] in (1, 3)), bool(out[0, 0] in (2, 3))))  # (h flipped, v flipped)
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_geometry_moves_image_and_mask_together_with_nearest_masks():
    # A mask that is a function of the image: the pair must stay consistent after every step.
    h, w = 64, 64
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx // 16 + yy // 16) % 3).astype(np.uint8)
    image = (mask[:, :, None].astype(np.float32) + 0.5) / 3
    # Nearest for the image too, so every image pixel must carry exactly its mask's value.
    spec = [
        {"name": "random_resized_crop", "size": 48, "interpolation": 0},
        {"name": "hflip"},
        {"name": "rotate", "limit": 45, "p": 1.0, "interpolation": 0},
        {"name": "elastic", "p": 1.0, "interpolation": 0},
    ]
    pipeline = build_transforms(spec, train=True, seed=1)
    for _ in range(5):
        out = pipeline(image=image, mask=mask)
        m = out["mask"].numpy()
        assert set(np.unique(m)) <= {0, 1, 2, 255}  # nearest: no blended labels
        assert (m == 255).any()  # rotation fills new pixels with ignore_index, not background
        img = out["image"][0].numpy()
        inner = m != 255
        np.testing.assert_allclose(img[inner], (m[inner] + 0.5) / 3, atol=1e-6)  # moved together


def test_val_default_is_no_transform_and_pad_step_pads_bottom_right_with_ignore():
    image, mask = _sample(50, 70)
    assert default_spec(train=False) == []  # the model pads itself; see segkit.engine.inputs
    out = build_transforms(train=False)(image=image, mask=mask)
    assert out["image"].shape == (1, 50, 70) and torch.equal(out["mask"], torch.from_numpy(mask))
    out = build_transforms([{"name": "pad", "divisor": 32}], train=False)(image=image, mask=mask)
    assert out["image"].shape == (1, 64, 96) and out["mask"].shape == (64, 96)
    assert torch.equal(out["mask"][:50, :70], torch.from_numpy(mask))  # top-left: the original stays put
    assert (out["mask"][50:] == 255).all() and (out["mask"][:, 70:] == 255).all()


def test_spec_forms():
    image, mask = _sample(40, 40)
    split = {"train": ["vflip", {"name": "center_crop", "size": [20, 30]}], "val": [{"name": "resize", "size": 16}]}
    assert build_transforms(split, train=True)(image=image, mask=mask)["image"].shape == (1, 20, 30)
    out = build_transforms(split, train=False)(image=image, mask=mask)
    assert out["image"].shape == (1, 16, 16) and set(out["mask"].unique().tolist()) <= {0, 1, 2}
    assert build_transforms([], train=True)(image=image, mask=mask)["image"].shape == (1, 40, 40)


def test_unknown_names_and_options_are_segkit_errors():
    with pytest.raises(SegkitError, match=r"unknown transform 'flip' in step 0; valid names: .*hflip.*vflip"):
        build_transforms(["flip"], train=True)
    assert "elastic" in list_transforms() and "brightness_contrast" in list_transforms()
    with pytest.raises(SegkitError, match=r"'rotate'\) has no option 'angle'; valid options: .*limit"):
        build_transforms([{"name": "rotate", "angle": 10}], train=True)
    with pytest.raises(SegkitError, match="invalid options"):
        build_transforms([{"name": "hflip", "p": 3}], train=True)
    with pytest.raises(SegkitError, match="nearest"):
        build_transforms([{"name": "rotate", "mask_interpolation": 1}], train=True)
    with pytest.raises(SegkitError, match="needs size"):
        build_transforms(["random_resized_crop"], train=True)
    with pytest.raises(SegkitError, match="'train' and 'val'"):
        build_transforms({"training": []}, train=True)


def test_sixteen_bit_images_pass_through_the_train_pipeline(tmp_path):
    (tmp_path / "images").mkdir()
    image = np.random.default_rng(0).integers(0, 4000, (40, 40), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    write_png(tmp_path / "masks" / "a.png", labels(40, 40))
    ds = FolderDataset(tmp_path, num_classes=3, transforms=build_transforms(train=True, size=32, seed=0))
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and torch.isfinite(x).all()
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1, 2, 255}
    # standardised from [0, 1]: within the ImageNet-average range
    assert (x >= (0 - 0.449) / 0.226 - 1e-4).all() and (x <= (1 - 0.449) / 0.226 + 1e-4).all()


def _epoch(ds, seed):
    loader = DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(seed))
    return torch.cat([x for x, _ in loader])


def test_dataloader_workers_are_reproducible_and_do_not_repeat_each_other(tmp_path):
    make_folder(tmp_path, [f"s{i}" for i in range(8)])
    # Every item is the same picture, so identical augmentation streams would show as equal outputs.
    for i in range(8):
        write_png(tmp_path / "images" / f"s{i}.png", np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1)))
    ds = FolderDataset(tmp_path, transforms=build_transforms(train=True, size=16, seed=3))
    first, again, other = _epoch(ds, 0), _epoch(ds, 0), _epoch(ds, 1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[:4], first[4:])  # worker 0's batch vs worker 1's


class _PerItemSeeded(torch.utils.data.Dataset):
    """Seeds the pipeline per item, as a training engine may: item i always gets seed 100 + i."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        seed_transforms(self.ds.transforms, 100 + index)
        return self.ds[index]


def test_per_item_seeding_is_not_overridden_in_workers(tmp_path):
    make_folder(tmp_path, [f"s{i}" for i in range(6)])
    ds = _PerItemSeeded(FolderDataset(tmp_path, transforms=build_transforms(train=True, size=16, seed=3)))
    in_process = torch.cat([x for x, _ in DataLoader(ds, batch_size=3)])
    in_workers = torch.cat([x for x, _ in DataLoader(ds, batch_size=3, num_workers=2)])
    assert torch.equal(in_process, in_workers)


class _CoordinateItems:
    """Items whose pixel values are their own positions, so a crop's offset and flips can be read back."""

    def __init__(self, n: int, transforms) -> None:
        self.n, self.transforms = n, transforms
        self.image = np.arange(40 * 40, dtype=np.float32).reshape(40, 40, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        out = self.transforms(image=self.image, mask=np.zeros((40, 40), np.uint8))
        return out["image"], out["mask"]


def _draws(values: torch.Tensor) -> tuple[int, int, bool, bool]:
    """(top, left, h flipped, v flipped) of a 16x16 crop of the 40x40 coordinate image, flips applied after."""
    corners = values[0, [0, 0, -1, -1], [0, -1, 0, -1]].long().tolist()
    top, left = divmod(min(corners), 40)
    first = int(values[0, 0, 0])
    return top, left, first % 40 != left, first // 40 != top


def test_sampler_seeded_augmentation_is_independent_across_samples_and_epochs():
    """Per-sample seeds from SeededSampler (what makes resume exact) must give augmentations as
    independent as one continuing generator: crop offsets uniform, flips balanced, and a sample's draws
    in one epoch unrelated to its draws in the next (a seed that ignored the epoch, or that repeated
    another sample's, would give every sample the same crops epoch after epoch)."""
    from scipy import stats

    from segkit.engine.builders import SeededDataset
    from segkit.engine.distributed import SeededSampler

    items, epochs = 40, 20
    data = SeededDataset(_CoordinateItems(items, build_transforms([{"name": "random_crop", "size": 16}, "hflip", "vflip"], train=True)))
    sampler = SeededSampler(data, shuffle=True, seed=5)
    draws = np.zeros((epochs, items, 4))
    seeds = set()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for index, seed in sampler:
            seeds.add(seed)
            draws[epoch, index] = _draws(data[(index, seed)][0])
    assert len(seeds) == items * epochs  # no sample shares its seed with another, in any epoch
    offsets = draws[..., :2].ravel()
    assert offsets.min() == 0 and offsets.max() == 40 - 16
    assert stats.chisquare(np.bincount(offsets.astype(int), minlength=25)).pvalue > 1e-3  # every offset alike
    assert np.all(np.abs(draws[..., 2:].mean((0, 1)) - 0.5) < 0.07)  # flips balanced (800 draws: 4 standard errors)
    for k in range(4):  # one sample, consecutive epochs: 760 pairs, |r| < 0.15 is 4 standard errors
        r = np.corrcoef(draws[:-1, :, k].ravel(), draws[1:, :, k].ravel())[0, 1]
        assert abs(r) < 0.15, (k, r)
    top_left = np.corrcoef(draws[..., 0].ravel(), draws[..., 1].ravel())[0, 1]
    assert abs(top_left) < 0.15


def test_malformed_steps_are_named_and_config_errors_name_their_key(tmp_path):
    with pytest.raises(SegkitError, match=r"transform step 0 has name \['hflip'\]; a name is one of"):
        build_transforms([{"name": ["hflip"]}], train=True)  # was: TypeError: unhashable type: 'list'
    for name in ("resize", "random_crop", "center_crop"):  # was pydantic's "height; Field required"
        with pytest.raises(SegkitError, match=rf"transform step 0 \('{name}'\) needs size"):
            build_transforms([{"name": name}], train=True)
    with pytest.raises(SegkitError, match=r"gives size and height; give size .* alone"):  # was a 9x8 crop in silence
        build_transforms([{"name": "random_crop", "size": 8, "height": 9}], train=True)
    assert build_transforms([{"name": "resize", "height": 9, "width": 8}], train=True)  # albumentations' own keys still work
    from segkit.config import config_from_dict
    from segkit.engine.builders import transforms_from_config

    cfg = config_from_dict({"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 2},
                            "data": {"kind": "folder", "root": str(tmp_path), "val_transforms": ["hflp"]}})
    with pytest.raises(SegkitError, match=r"^config key 'data\.val_transforms': unknown transform 'hflp' in step 0"):
        transforms_from_config(cfg, train=False)

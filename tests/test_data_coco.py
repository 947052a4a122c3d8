"""CocoDataset: semantic masks from COCO annotations, checked against pycocotools' own renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_helpers import gray, rgb, write_png
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from segkit.data import CocoDataset
from segkit.errors import SegkitError

IGNORE = 255
# pycocotools under numpy 2 warns on every decode; the renders below call it directly.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _block(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def make_coco(root: Path) -> tuple[Path, Path]:
    """Images and an annotation file covering every case; categories listed out of id order."""
    images = root / "images"
    write_png(images / "a.jpg", rgb(30, 40, 1))
    write_png(images / "sub" / "b.png", gray(24, 32, 2))
    write_png(images / "c.png", rgb(20, 20, 3))
    write_png(images / "d.png", rgb(20, 20, 4))
    anns = [
        # image 10: two overlapping "cat" instances (one class: keep), a "dog" over the second (two classes:
        # ignore), a "dog" crowd over the first cat (ignore where they meet), a "cat" crowd partly over cat 1
        # (same class: keep where an instance covers it, ignore elsewhere)
        {"id": 1, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": _rect(5, 5, 20, 20)},
        {"id": 2, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": _rect(15, 10, 30, 25)},
        {"id": 3, "image_id": 10, "category_id": 7, "iscrowd": 0, "segmentation": _rect(25, 2, 38, 12)},
        {
            "id": 4,
            "image_id": 10,
            "category_id": 7,
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(_block(30, 40, 18, 30, 0, 10)),
        },
        {
            "id": 5,
            "image_id": 10,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(_block(30, 40, 0, 8, 0, 12)),
        },
        # image 20: compressed RLE, uncompressed RLE (non-crowd), a polygon of a third category, a degenerate polygon
        {
            "id": 6,
            "image_id": 20,
            "category_id": 7,
            "iscrowd": 0,
            "segmentation": _compressed_rle(_disc(24, 32, 12, 10, 6)),
        },
        {
            "id": 7,
            "image_id": 20,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": _uncompressed_rle(_block(24, 32, 2, 20, 20, 28)),
        },
        {
            "id": 8,
            "image_id": 20,
            "category_id": 5,
            "iscrowd": 0,
            "segmentation": _rect(0, 20, 12, 23) + [[1, 1, 2, 2]],
        },
        # image 30: nothing; image 40: only a "bird"
        {"id": 9, "image_id": 40, "category_id": 5, "iscrowd": 0, "segmentation": _rect(2, 2, 10, 10)},
    ]
    for ann in anns:
        ann.setdefault("bbox", [0, 0, 1, 1])
        ann.setdefault("area", 1.0)
    data = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": 30, "width": 40},
            {"id": 20, "file_name": "sub/b.png", "height": 24, "width": 32},
            {"id": 30, "file_name": "c.png", "height": 20, "width": 20},
            {"id": 40, "file_name": "d.png", "height": 20, "width": 20},
        ],
        "annotations": anns,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "bird"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return images, path


def expected_mask(coco: COCO, image_id: int, label_of: dict[int, int]) -> np.ndarray:
    """The semantics, written independently: per pixel, which classes claim it, and is any claim an instance."""
    info = coco.imgs[image_id]
    shape = (info["height"], info["width"])
    claims: dict[int, np.ndarray] = {}
    instance = np.zeros(shape, bool)
    for ann in coco.imgToAnns.get(image_id, []):
        if ann["category_id"] not in label_of:
            continue
        seg = ann["segmentation"]
        if isinstance(seg, list):
            ann = {**ann, "segmentation": [p for p in seg if len(p) >= 6]}
        m = coco.annToMask(ann) > 0
        cls = label_of[ann["category_id"]]
        claims[cls] = claims.get(cls, np.zeros(shape, bool)) | m
        if not ann["iscrowd"]:
            instance |= m
    n_classes = sum((m.astype(int) for m in claims.values()), np.zeros(shape, int))
    out = np.zeros(shape, np.int64)
    for cls, m in claims.items():
        out[m & (n_classes == 1) & instance] = cls
    out[(n_classes >= 2) | ((n_classes == 1) & ~instance)] = IGNORE
    return out


@pytest.fixture()
def coco_files(tmp_path):
    return make_coco(tmp_path)


def _quiet_coco(path: Path) -> COCO:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_masks_match_pycocotools_renders(coco_files):
    images, ann_file = coco_files
    ds = CocoDataset(images, ann_file)
    assert ds.classes == ["background", "cat", "bird", "dog"]  # ascending category id: 3, 5, 7
    assert ds.num_classes == 4 and ds.ids == [10, 20, 30, 40] and ds.in_channels == 3
    coco = _quiet_coco(ann_file)
    for i, image_id in enumerate(ds.ids):
        image, mask = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3 and mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), expected_mask(coco, image_id, {3: 1, 5: 2, 7: 3}))


def test_the_semantics_pixel_by_pixel(coco_files):
    images, ann_file = coco_files
    ds = CocoDataset(images, ann_file)
    m = ds[0][1].numpy()  # image 10; (row, col) = (y, x)
    assert m[12, 18] == 1  # both cat instances: one class keeps it
    assert m[8, 10] == 1  # cat instance under a cat crowd: the instance decides
    assert m[11, 27] == IGNORE  # cat instance 2 and dog instance: two classes
    assert m[19, 8] == IGNORE  # cat instance 1 under the dog crowd: two classes
    assert m[25, 5] == IGNORE  # dog crowd alone
    assert m[2, 2] == IGNORE  # cat crowd alone
    assert m[5, 30] == 3  # dog alone
    assert m[28, 35] == 0
    b = ds[1][1].numpy()  # image 20: compressed RLE (dog), uncompressed RLE (cat), polygon (bird)
    np.testing.assert_array_equal(b[_disc(24, 32, 12, 10, 6) > 0], 3)
    np.testing.assert_array_equal(b[2:20, 20:28], 1)
    assert b[21, 14] == 0 and b[21, 5] == 2
    assert ds[2][1].unique().tolist() == [0]  # image 30: kept, all background


def test_categories_pick_order_and_subset(coco_files):
    images, ann_file = coco_files
    ds = CocoDataset(images, ann_file, categories=["dog", 3])
    assert ds.classes == ["background", "dog", "cat"]
    coco = _quiet_coco(ann_file)
    for i, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds[i][1].numpy(), expected_mask(coco, image_id, {7: 1, 3: 2}))
    assert ds[1][1][21, 5] == 0  # the bird is not chosen: background
    with pytest.raises(
        SegkitError, match=r"category 'horse' is not in .*known categories: 3 \(cat\), 5 \(bird\), 7 \(dog\)"
    ):
        CocoDataset(images, ann_file, categories=["horse"])


def test_skip_empty(coco_files):
    images, ann_file = coco_files
    assert CocoDataset(images, ann_file, skip_empty=True).ids == [10, 20, 40]
    assert CocoDataset(images, ann_file, categories=["cat", "dog"], skip_empty=True).ids == [10, 20]


def test_cache_serves_rendered_masks_and_a_changed_file_never_serves_stale_ones(coco_files, tmp_path):
    images, ann_file = coco_files
    cache = tmp_path / "cache"
    ds = CocoDataset(images, ann_file, cache_dir=cache)
    first = [ds[i][1] for i in range(len(ds))]
    files = sorted(ds.cache_dir.glob("*.png"))
    assert [f.name for f in files] == ["10.png", "20.png", "30.png", "40.png"]
    # A second dataset on the same file reads the cache (shown by tampering with one entry).
    tampered = np.full((30, 40), 2, np.uint8)
    write_png(ds.cache_dir / "10.png", tampered)
    again = CocoDataset(images, ann_file, cache_dir=cache)
    assert again.cache_dir == ds.cache_dir
    assert torch.equal(again[0][1], torch.from_numpy(tampered).long())
    assert torch.equal(again[1][1], first[1])
    # Edit the annotation file: the dog at image 20 becomes a bird. A new key, fresh masks.
    data = json.loads(ann_file.read_text())
    next(a for a in data["annotations"] if a["id"] == 6)["category_id"] = 5
    ann_file.write_text(json.dumps(data))
    edited = CocoDataset(images, ann_file, cache_dir=cache)
    assert edited.cache_dir != ds.cache_dir
    assert torch.equal(edited[0][1], first[0])  # the tampered entry is not used
    changed = edited[1][1]
    assert (changed[first[1] == 3] == 2).all()
    np.testing.assert_array_equal(changed.numpy(), expected_mask(_quiet_coco(ann_file), 20, {3: 1, 5: 2, 7: 3}))
    # Another category choice is another key too.
    assert CocoDataset(images, ann_file, categories=[3], cache_dir=cache).cache_dir != edited.cache_dir


def test_bad_input(coco_files, tmp_path):
    images, ann_file = coco_files
    with pytest.raises(SegkitError, match=r"cannot read annotation file .*nope\.json"):
        CocoDataset(images, tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SegkitError, match=r"broken\.json is not valid JSON"):
        CocoDataset(images, broken)
    (images / "c.png").unlink()
    with pytest.raises(SegkitError, match=r"image .*c\.png listed in .*instances\.json does not exist"):
        CocoDataset(images, ann_file)
    write_png(images / "c.png", rgb(10, 20))
    with pytest.raises(SegkitError, match=r"c\.png is 20x10 but .*instances\.json says 20x20"):
        CocoDataset(images, ann_file)
    with pytest.raises(SegkitError, match="ignore_index 2 is also a class label"):
        CocoDataset(images, ann_file, ignore_index=2)

"""CocoDataset refuses contradictory or unsafe annotation files with a SegkitError naming the entry.

Each case is a mistake real exports make, which pycocotools accepts silently (all-background
masks, one entry replacing another) or crashes on (a null or huge polygon coordinate).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import rgb, write_png
from test_data_coco import _quiet_coco, expected_mask, make_coco

from segkit.data import CocoDataset
from segkit.errors import SegkitError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture()
def coco(tmp_path):
    images, path = make_coco(tmp_path)
    return images, path, json.loads(path.read_text())


def _write(tmp_path: Path, data: dict, name: str = "edited.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_image_ids_written_as_strings_are_named_not_rendered_as_background(coco, tmp_path):
    images, _, data = coco
    for image in data["images"]:
        image["id"] = str(image["id"])  # the annotations keep numbers: 10 is not "10"
    path = _write(tmp_path, data)
    with pytest.raises(SegkitError, match=r"9 annotation\(s\) in .*edited\.json refer to a image_id not in 'images' "
                                          r"\(first: annotation 1 with image_id 10\) \(the ids in 'images' are strings, "
                                          r"this one is a number\); fix the ids"):
        CocoDataset(images, path)


def test_an_annotation_of_an_unknown_category_is_an_error(coco, tmp_path):
    images, _, data = coco
    data["annotations"][3]["category_id"] = 99
    with pytest.raises(SegkitError, match=r"1 annotation\(s\) .* refer to a category_id not in 'categories' \(first: annotation 4 "
                                          r"with category_id 99\); fix the ids or remove those annotations"):
        CocoDataset(images, _write(tmp_path, data))


def test_repeated_ids_are_errors(coco, tmp_path):
    images, _, data = coco
    twice = json.loads(json.dumps(data))
    twice["images"].append({"id": 20, "file_name": "c.png", "height": 20, "width": 20})
    with pytest.raises(SegkitError, match=r"image id 20 appears twice in 'images' .*\('sub/b\.png' and 'c\.png'\); "
                                          "give each image its own id"):
        CocoDataset(images, _write(tmp_path, twice))
    data["categories"].append({"id": 3, "name": "kitten"})
    with pytest.raises(SegkitError, match=r"category id 3 appears twice in 'categories' .*\('cat' and 'kitten'\)"):
        CocoDataset(images, _write(tmp_path, data, "cats.json"))


def test_a_name_two_categories_share_must_be_chosen_by_id(coco, tmp_path):
    images, _, data = coco
    data["categories"].append({"id": 11, "name": "cat"})  # no annotation: by name it would give empty masks
    path = _write(tmp_path, data)
    with pytest.raises(SegkitError, match=r"category name 'cat' belongs to ids 3, 11 in .*; choose the category by its id"):
        CocoDataset(images, path, categories=["cat"])
    by_id = CocoDataset(images, path, categories=[3])
    np.testing.assert_array_equal(by_id[0][1].numpy(), expected_mask(_quiet_coco(path), 10, {3: 1}))
    # All of them (the default) would give two classes named 'cat', which reports cannot tell apart.
    with pytest.raises(SegkitError, match=r"categories 3, 11 in .*edited\.json are all named 'cat'; rename them in the file, "
                                          r"or choose the ones to train .* by id"):
        CocoDataset(images, path)
    assert CocoDataset(images, path, categories=[3, 5, 7]).classes == ["background", "cat", "bird", "dog"]


def test_true_is_not_category_1(coco, tmp_path):
    images, _, data = coco
    data["categories"].append({"id": 1, "name": "fish"})
    with pytest.raises(SegkitError, match=r"category True is not in"):
        CocoDataset(images, _write(tmp_path, data), categories=[True])


def test_category_ids_mixing_numbers_and_strings_are_an_error_not_a_crash(coco, tmp_path):
    images, _, data = coco
    data["categories"][0]["id"] = "dog"  # was 7
    for ann in data["annotations"]:
        if ann["category_id"] == 7:
            ann["category_id"] = "dog"
    with pytest.raises(SegkitError, match=r"category ids in 'categories' of .*edited\.json mix numbers and strings "
                                          r"\('dog' and 3\); give every category an integer id"):
        CocoDataset(images, _write(tmp_path, data))


def test_string_category_ids_can_be_chosen_by_id(coco, tmp_path):
    images, _, data = coco
    renamed = {cat["id"]: f"c{cat['id']}" for cat in data["categories"]}
    for cat in data["categories"]:
        cat["id"] = renamed[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = renamed[ann["category_id"]]
    path = _write(tmp_path, data)
    with pytest.raises(SegkitError, match=r"category 'c9' is not in .*; known categories: 'c3' \(cat\), 'c5' \(bird\)"):
        CocoDataset(images, path, categories=["c9"])
    by_id = CocoDataset(images, path, categories=["c3"])
    assert by_id.classes == ["background", "cat"]
    np.testing.assert_array_equal(by_id[0][1].numpy(), expected_mask(_quiet_coco(path), 10, {"c3": 1}))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(annotations="none"), r"'annotations' in .* is a str, not a list"),
    (lambda d: d["annotations"].append("oops"), r"entry 9 of 'annotations' in .* is 'oops', not an object"),
    (lambda d: d.update(categories=[1, 5, 90]), r"entry 0 of 'categories' in .* is 1, not an object; each entry needs id, name"),
    (lambda d: d["annotations"][0].pop("id"), r"entry 0 of 'annotations' in .* has no id: .*'image_id': 10.*; add the field"),
    (lambda d: d["images"][2].update(height="20"), r"image 30 \(c\.png\) in .* has height '20'; height and width must be "
                                                   "positive whole numbers"),
    (lambda d: d["images"][0].update(id=[10]), r"image id \[10\] in .* is not a whole number or a string"),
    (lambda d: d["images"][0].update(id=10.0), r"image id 10\.0 in .* is not a whole number or a string; give each image an integer id"),
    (lambda d: d["images"][1].update(file_name=None), r"image 20 in .* has file_name None; give the image file's path"),
    (lambda d: d["images"][1].update(file_name=17), r"image 20 in .* has file_name 17; give the image file's path"),
    # Truth-tested, "0" made the object a crowd region: ignored in silence.
    (lambda d: d["annotations"][2].update(iscrowd="0"), r"annotation 3 in .* has iscrowd '0'; iscrowd is 0 \(an object\) or 1"),
    (lambda d: d["annotations"][2].update(iscrowd=2), r"annotation 3 in .* has iscrowd 2"),
    (lambda d: d["annotations"][2].update(iscrowd=0.5), r"annotation 3 in .* has iscrowd 0.5"),
])
def test_malformed_entries_are_named(coco, tmp_path, edit, message):
    images, _, data = coco
    edit(data)
    with pytest.raises(SegkitError, match=message):
        CocoDataset(images, _write(tmp_path, data))


def test_null_annotations_mean_none(coco, tmp_path):
    images, _, data = coco
    data["annotations"] = None
    ds = CocoDataset(images, _write(tmp_path, data))
    assert all(int(ds[i][1].max()) == 0 for i in range(len(ds)))


@pytest.mark.parametrize(("segmentation", "message"), [
    ([5, 5, 20, 5, 20, 20], r"has a flat list of numbers as segmentation; .* wrap it as \[\[x1, y1, x2, y2, \.\.\.\]\]"),
    ([[5, 5, 20, 5, 20, "x"]], r"has a polygon holding a non-number"),
    ([[5, 5, 20, 5, 20, 20, 7]], r"has a polygon of 7 values, an odd number"),
    # Far, not huge: without the check pycocotools draws these (the huge case runs in a capped child below).
    ([[5, 5, 500, 5, 20, 20]], r"has a polygon reaching \(500, 20\), far outside its 40x30 image"),
    ([[5, 5, 20, 5, 20, -300]], r"has a polygon reaching \(20, -300\), far outside its 40x30 image"),
    ([[5, 5], [5, 5, 20, 5, 20, 20], 3], r"has a polygon 3 that is not a list of coordinates"),
    ("polygon", r"has a segmentation of type str"),
    # x, y pairs: four were dropped as a degenerate polygon (an empty mask), six named a NaN
    ([[[5, 5], [20, 5], [20, 20], [5, 20]]], r"has a polygon of nested lists .*; COCO polygons are flat"),
    ([[[5, 5], [20, 5], [20, 20], [5, 20], [3, 3], [4, 4]]], r"has a polygon of nested lists"),
])
def test_bad_polygons_are_errors_naming_the_annotation(coco, tmp_path, segmentation, message):
    images, _, data = coco
    data["annotations"][0]["segmentation"] = segmentation
    ds = CocoDataset(images, _write(tmp_path, data))
    with pytest.raises(SegkitError, match=r"annotation 1 of image 10 in .*edited\.json " + message):
        ds[0]


@pytest.mark.parametrize(("polygon", "message"), [([5, 5, 1e9, 5, 20, 20], "far outside"), ([5, 5, 20, 5, 20, None], "null, NaN")])
def test_a_huge_or_null_coordinate_never_reaches_pycocotools(coco, tmp_path, polygon, message):
    """pycocotools would rasterise these by allocating without bound, or crash (NaN): a child process,
    memory-capped in case, must stop at segkit's check."""
    images, _, data = coco
    data["annotations"][0]["segmentation"] = [polygon]
    path = _write(tmp_path, data)
    script = ("import re, resource, sys\n"
              "from segkit.data import CocoDataset\nfrom segkit.errors import SegkitError\n"
              f"ds = CocoDataset({str(images)!r}, {str(path)!r})\n"
              "mapped = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) << 10\n"
              "resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))  # 2 GB more than now\n"
              "try:\n    ds[0]\nexcept SegkitError as err:\n    sys.exit(7 if " + repr(message) + " in str(err) else 8)\n")
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 7


def test_polygons_past_the_border_and_degenerate_ones_still_render_as_pycocotools_does(coco, tmp_path):
    images, _, data = coco
    data["annotations"][0]["segmentation"] = [[-10, -5, 45, -5, 45, 12, -10, 12], [1, 1, 2, 2], []]
    path = _write(tmp_path, data)
    ds = CocoDataset(images, path)
    np.testing.assert_array_equal(ds[0][1].numpy(), expected_mask(_quiet_coco(path), 10, {3: 1, 5: 2, 7: 3}))


@pytest.mark.parametrize("ignore_index", [-1, -100, 65536])
def test_an_ignore_index_a_mask_cannot_hold_is_refused(coco, ignore_index):
    images, path, _ = coco
    with pytest.raises(SegkitError, match=rf"ignore_index {ignore_index} cannot be stored in a COCO mask .*e\.g\. 255"):
        CocoDataset(images, path, ignore_index=ignore_index)


def test_stems_keep_subfolders_and_tell_shared_names_apart(coco, tmp_path):
    images, path, data = coco
    assert CocoDataset(images, path).stems == ["a", "sub/b", "c", "d"]
    write_png(images / "other" / "c.png", rgb(20, 20, 5))
    data["images"].append({"id": 50, "file_name": "other/c.png", "height": 20, "width": 20})
    data["images"].append({"id": 60, "file_name": "c.jpg", "height": 20, "width": 20})
    write_png(images / "c.jpg", rgb(20, 20, 6))
    assert CocoDataset(images, _write(tmp_path, data)).stems == ["a", "sub/b", "c (id 30)", "d", "other/c", "c (id 60)"]


def test_string_image_ids_cache_under_safe_names(coco, tmp_path):
    images, _, data = coco
    for image in data["images"]:
        image["id"] = f"train/{image['id']}"
    for ann in data["annotations"]:
        ann["image_id"] = f"train/{ann['image_id']}"
    path = _write(tmp_path, data)
    cached = CocoDataset(images, path, cache_dir=tmp_path / "cache")
    fresh = CocoDataset(images, path)
    for i in range(len(fresh)):
        np.testing.assert_array_equal(cached[i][1].numpy(), fresh[i][1].numpy())
        np.testing.assert_array_equal(cached[i][1].numpy(), cached[i][1].numpy())  # now from the cache
    names = sorted(p.name for p in cached.cache_dir.iterdir())
    assert len(names) == 4 and all(n.startswith("s-train_") and n.endswith(".png") for n in names)


def _rle_of(mask: np.ndarray, compressed: bool) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.astype(np.uint8).flatten(order="F")  # column-major runs, starting with zeros
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


@pytest.mark.parametrize("compressed", [False, True])
def test_an_rle_whose_runs_do_not_cover_its_size_is_an_error_not_a_random_mask(coco, tmp_path, compressed):
    """pycocotools leaves the pixels past short runs unwritten: whatever memory held, a different
    mask on every read (and cached once with cache_dir). Runs that fit are drawn as pycocotools does."""
    images, _, data = coco
    disc = np.zeros((30, 40), bool)  # image 10 is 40x30
    yy, xx = np.mgrid[:30, :40]
    disc[(yy - 15) ** 2 + (xx - 20) ** 2 < 64] = True
    good = _rle_of(disc, compressed)
    data["annotations"][0].update(segmentation=good, iscrowd=1 if compressed else 0)
    ds = CocoDataset(images, _write(tmp_path, data, "good.json"))
    np.testing.assert_array_equal(ds[0][1].numpy(), expected_mask(_quiet_coco(tmp_path / "good.json"), 10, ds.label_of))
    short = dict(good, counts=good["counts"][:-1]) if not compressed else _rle_of(disc[:20], True) | {"size": [30, 40]}
    for rle, covered in ((short, 1200 - (good["counts"][-1] if not compressed else 400)), ({"size": [30, 40], "counts": []}, 0)):
        data["annotations"][0]["segmentation"] = rle
        ds = CocoDataset(images, _write(tmp_path, data, "short.json"))
        with pytest.raises(SegkitError, match=rf"annotation 1 of image 10 in .*short\.json has an RLE whose runs cover {covered} "
                                              r"pixels but its size 30x40 holds 1200; fix the annotation"):
            ds[0]


def test_compressed_rle_totals_follow_pycocotools_encoding():
    from pycocotools import mask as mask_utils

    from segkit.data.coco_format import rle_string_total

    rng = np.random.default_rng(0)
    for shape, share in [((1, 1), 1.0), ((7, 300), 0.5), ((64, 48), 0.02), ((200, 3), 0.98)]:
        mask = np.asfortranarray((rng.random(shape) < share).astype(np.uint8))
        counts = mask_utils.encode(mask)["counts"]
        assert rle_string_total(counts) == rle_string_total(counts.decode()) == mask.size
    assert rle_string_total(b"0") == 0 and rle_string_total(b"") == 0
    assert rle_string_total(b"1Q") is None  # 'Q' (0x21) promises another group that never comes


def test_iscrowd_as_pycocotools_reads_it(coco, tmp_path):
    """0.0, 1.0 and null are what some exporters write: read as pycocotools reads them."""
    images, path, data = coco
    reference = CocoDataset(images, path)
    for value, like in ((0.0, 0), (None, 0), (1.0, 1), (True, 1)):
        data["annotations"][0]["iscrowd"] = value
        same = json.loads(json.dumps(data))
        same["annotations"][0]["iscrowd"] = like
        np.testing.assert_array_equal(CocoDataset(images, _write(tmp_path, data, "a.json"))[0][1].numpy(),
                                      CocoDataset(images, _write(tmp_path, same, "b.json"))[0][1].numpy())
    assert len(reference) > 0


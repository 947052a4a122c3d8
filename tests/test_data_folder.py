"""FolderDataset: pairing, layouts and splits, every mask kind, 16-bit images, bad input, check_files()."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from _data_helpers import gray, labels, make_folder, rgb, write_palette_png, write_png

from segkit.cli import main
from segkit.data import FolderDataset, check_folder
from segkit.data.io import to_unit_float
from segkit.errors import SegkitError

PLAIN = {"mean": 0.0, "std": 1.0}  # leave the [0, 1] scaling alone


# -- pairing and layouts ---------------------------------------------------------------------------


def test_pairs_by_stem_across_extensions_and_items_have_the_contract(tmp_path):
    write_png(tmp_path / "images" / "a.png", gray(seed=1))
    write_png(tmp_path / "images" / "b.bmp", gray(seed=2))
    (tmp_path / "images" / "notes.txt").write_text("not an image")  # other extensions are skipped
    write_png(tmp_path / "masks" / "a.png", labels(seed=1))
    write_png(tmp_path / "masks" / "b.png", labels(seed=2))
    ds = FolderDataset(tmp_path, num_classes=3)
    assert ds.stems == ["a", "b"] and len(ds) == 2
    assert ds.samples[1] == (tmp_path / "images" / "b.bmp", tmp_path / "masks" / "b.png")
    assert ds.in_channels == 1
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.shape == (1, 24, 32)
    assert mask.dtype == torch.int64 and mask.shape == (24, 32)
    assert torch.equal(mask, torch.from_numpy(labels(seed=2)).long())


def test_in_channels_follow_the_data_and_gray_among_rgb_is_repeated(tmp_path):
    write_png(tmp_path / "images" / "a.jpg", rgb(seed=1))
    write_png(tmp_path / "images" / "b.png", gray(seed=2))
    for stem in "ab":
        write_png(tmp_path / "masks" / f"{stem}.png", labels())
    ds = FolderDataset(tmp_path, **PLAIN)
    assert ds.in_channels == 3
    image, _ = ds[1]
    assert image.shape == (3, 24, 32)
    assert torch.equal(image[0], image[2])
    expected = torch.from_numpy(gray(seed=2)).float() / 255
    assert torch.allclose(image[1], expected)


def test_nested_folders_pair_by_relative_path(tmp_path):
    for city in ("x", "y"):
        write_png(tmp_path / "images" / city / "a.png", gray())
        write_png(tmp_path / "masks" / city / "a.png", labels())
    assert FolderDataset(tmp_path).stems == ["x/a", "y/a"]


def test_split_subfolders(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], split="train")
    make_folder(tmp_path, ["d"], split="val")
    assert FolderDataset(tmp_path, "train").stems == ["a", "b", "c"]
    assert FolderDataset(tmp_path, "val").stems == ["d"]
    with pytest.raises(SegkitError, match=r"split folders \(train, val\).*split="):
        FolderDataset(tmp_path)
    with pytest.raises(SegkitError, match="split 'test' not found"):
        FolderDataset(tmp_path, "test")


def test_split_files_listing_stems(tmp_path):
    make_folder(tmp_path, ["a", "b", "c", "d"])
    (tmp_path / "train.txt").write_text("c\na.png\n\n# a comment\n")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "mine.txt").write_text("d\n")
    assert FolderDataset(tmp_path, "train").stems == ["c", "a"]  # the file's order
    assert FolderDataset(tmp_path, split_file="lists/mine.txt").stems == ["d"]
    (tmp_path / "bad.txt").write_text("a\nzzz\n")
    with pytest.raises(SegkitError, match=r"lists 'zzz'"):
        FolderDataset(tmp_path, split_file="bad.txt")


def test_voc_layout_with_palette_masks_and_boundary_ignore(tmp_path):
    indices = labels(num_classes=3)
    indices[0, :] = 255  # VOC's boundary/void value
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0)] + [(0, 0, 0)] * 252 + [(224, 224, 192)]
    for stem in ("2007_1", "2007_2"):
        write_png(tmp_path / "JPEGImages" / f"{stem}.jpg", rgb())
        write_palette_png(tmp_path / "SegmentationClass" / f"{stem}.png", indices, palette)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_2\n")
    ds = FolderDataset(tmp_path, "val", num_classes=3, image_dir="JPEGImages", mask_dir="SegmentationClass")
    assert ds.stems == ["2007_2"] and ds.in_channels == 3
    _, mask = ds[0]
    assert torch.equal(mask, torch.from_numpy(indices).long())  # palette index = class, 255 kept


def test_mmsegmentation_layout_with_suffixes(tmp_path):
    for stem in ("aachen_1", "aachen_2"):
        write_png(tmp_path / "img_dir" / "train" / f"{stem}_leftImg8bit.png", rgb())
        write_png(tmp_path / "ann_dir" / "train" / f"{stem}_gtFine_labelTrainIds.png", labels())
        write_png(tmp_path / "ann_dir" / "train" / f"{stem}_gtFine_color.png", rgb())  # ignored by the suffix
    ds = FolderDataset(tmp_path, "train", image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelTrainIds.png")
    assert ds.stems == ["aachen_1", "aachen_2"]
    assert ds.samples[0][1].name == "aachen_1_gtFine_labelTrainIds.png"


# -- mask kinds ------------------------------------------------------------------------------------


def test_binary_0_255_masks_become_0_1(tmp_path):
    fg = labels(num_classes=2).astype(bool)
    write_png(tmp_path / "images" / "a.png", gray())
    write_png(tmp_path / "masks" / "a.png", np.where(fg, 255, 0).astype(np.uint8))
    ds = FolderDataset(tmp_path, binary=True)
    assert ds.num_classes == 2
    assert torch.equal(ds[0][1], torch.from_numpy(fg).long())
    # Without binary=True the same masks are flagged: every foreground pixel would be ignored.
    report = check_folder(tmp_path)
    assert any("set binary=True" in hint for hint in report.hints)


def test_palette_png_index_is_the_class_not_the_colour(tmp_path):
    indices = labels(num_classes=4)
    write_png(tmp_path / "images" / "a.png", gray())
    write_palette_png(tmp_path / "masks" / "a.png", indices, [(9, 9, 9), (200, 10, 10), (10, 200, 10), (5, 5, 250)])
    ds = FolderDataset(tmp_path, num_classes=4)
    assert torch.equal(ds[0][1], torch.from_numpy(indices).long())


def test_sixteen_bit_index_masks(tmp_path):
    values = labels(num_classes=3).astype(np.uint16) * 300
    write_png(tmp_path / "images" / "a.png", gray())
    write_png(tmp_path / "masks" / "a.png", values)
    ds = FolderDataset(tmp_path, num_classes=601)
    assert torch.equal(ds[0][1], torch.from_numpy(values.astype(np.int64)))



@pytest.mark.parametrize("steps", [["hflip"], []])
def test_sixteen_bit_masks_above_255_pass_the_transforms(tmp_path, steps):
    """ignore_index 65535 (or more than 255 classes) keeps masks uint16, for which torch has no max():
    training crashed with a traceback in the check after the transforms, even with none listed."""
    from segkit.data.transforms import build_transforms

    values = labels(num_classes=3).astype(np.uint16)
    values[:4] = 65535  # an unlabelled band
    write_png(tmp_path / "images" / "a.png", gray())
    write_png(tmp_path / "masks" / "a.png", values)
    transforms = build_transforms(steps, train=True, seed=0, ignore_index=65535)
    ds = FolderDataset(tmp_path, num_classes=3, ignore_index=65535, transforms=transforms)
    mask = ds[0][1].to(torch.int64)
    expected = torch.from_numpy(values.astype(np.int64))
    assert torch.equal(mask, expected) or torch.equal(mask, expected.flip(-1))
    # A fill value that is neither a class nor ignore_index is still named after the transforms.
    pad = build_transforms([{"name": "pad", "size": [30, 40], "fill_mask": 7}], train=True, ignore_index=65535)
    with pytest.raises(SegkitError, match="holds 7, outside"):
        FolderDataset(tmp_path, num_classes=3, ignore_index=65535, transforms=pad)[0]


def _color_mask(indices: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(colors, dtype=np.uint8)[indices]


def test_rgb_colour_masks_with_a_class_colour_table(tmp_path):
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    indices = labels(num_classes=3)
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", _color_mask(indices, colors))
    ds = FolderDataset(tmp_path, class_colors=colors)
    assert ds.num_classes == 3
    assert torch.equal(ds[0][1], torch.from_numpy(indices).long())
    # dict form, hex colours, and a colour mapped to ignore
    ds = FolderDataset(tmp_path, class_colors={0: "#000000", 1: "#ff0000", 255: [0, 255, 0]}, num_classes=2)
    assert torch.equal(ds[0][1], torch.from_numpy(np.where(indices == 2, 255, indices)).long())


@pytest.mark.parametrize(("colors", "message"), [
    ({"background": [0, 0, 0], "cell": [255, 0, 0]}, r"class_colors has the key 'background'; .*keyed by index, not by name"),
    ({-1: [0, 0, 0]}, r"class_colors has the key -1"),
    (5, r"class_colors is 5; class_colors is a list of colours in class order"),
    ("#ff0000", r"class_colors is '#ff0000'"),
])
def test_a_colour_table_of_another_shape_is_a_user_error(tmp_path, colors, message):
    """Keys by class name (a ValueError traceback) and a bare value (a TypeError) are named."""
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", rgb())
    with pytest.raises(SegkitError, match=message):
        FolderDataset(tmp_path, class_colors=colors)
    ds = FolderDataset(tmp_path, class_colors={"0": [0, 0, 0], "1": [255, 0, 0]}, unknown_color="ignore")  # JSON keys
    assert ds.num_classes == 2


def test_unknown_colour_is_an_error_naming_file_and_colour_or_ignore(tmp_path):
    indices = labels(num_classes=3)
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", _color_mask(indices, [(0, 0, 0), (255, 0, 0), (1, 2, 3)]))
    ds = FolderDataset(tmp_path, class_colors=[(0, 0, 0), (255, 0, 0)])
    with pytest.raises(SegkitError, match=r"masks/a\.png has colour \[1, 2, 3\].*unknown_color='ignore'"):
        ds[0]
    ds = FolderDataset(tmp_path, class_colors=[(0, 0, 0), (255, 0, 0)], unknown_color="ignore")
    assert torch.equal(ds[0][1], torch.from_numpy(np.where(indices == 2, 255, indices)).long())


def test_rgb_mask_without_a_colour_table_is_refused_at_construction(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", rgb())
    with pytest.raises(SegkitError, match=r"masks/a\.png is a colour \(RGB\) image; give class_colors"):
        FolderDataset(tmp_path)


def test_ignore_index_passes_through_and_reduce_zero_label(tmp_path):
    mask = np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8)
    write_png(tmp_path / "images" / "a.png", gray(4, 4))
    write_png(tmp_path / "masks" / "a.png", mask)
    assert FolderDataset(tmp_path, num_classes=3)[0][1][0].tolist() == [0, 1, 2, 255]
    reduced = FolderDataset(tmp_path, num_classes=2, reduce_zero_label=True)[0][1][0].tolist()
    assert reduced == [255, 0, 1, 255]


# -- images and normalisation ----------------------------------------------------------------------


def test_eight_bit_rgb_uses_imagenet_mean_std_by_default(tmp_path):
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    write_png(tmp_path / "images" / "a.png", image)
    write_png(tmp_path / "masks" / "a.png", np.zeros((8, 8), np.uint8))
    x, _ = FolderDataset(tmp_path)[0]
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-5)
    x, _ = FolderDataset(tmp_path, mean=[0.5, 0.5, 0.5], std=0.25)[0]
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-5)


def test_sixteen_bit_tiff_and_png_images_use_per_image_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 5000, (24, 32), dtype=np.uint16)
    image[0, 0] = 65000  # a hot pixel does not set the scale
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    write_png(tmp_path / "images" / "b.png", image)
    for stem in "ab":
        write_png(tmp_path / "masks" / f"{stem}.png", labels())
    ds = FolderDataset(tmp_path, num_classes=3, **PLAIN)
    assert ds.in_channels == 1
    lo, hi = np.percentile(image.astype(np.float32), (1.0, 99.8))
    expected = torch.from_numpy(np.clip((image.astype(np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32))
    for i in range(2):
        x, _ = ds[i]
        assert x.dtype == torch.float32 and x.shape == (1, 24, 32)
        assert torch.allclose(x[0], expected, atol=1e-5)
    assert x.min() == 0 and x.max() == 1 and (x[0] > 0.5).float().mean() > 0.3
    dtype_scaled = FolderDataset(tmp_path, scaling="dtype", **PLAIN)[0][0]
    assert torch.allclose(dtype_scaled[0], torch.from_numpy(image.astype(np.float32) / 65535))


def test_multichannel_sixteen_bit_tiffs_keep_their_channels(tmp_path):
    (tmp_path / "images").mkdir()
    planes = np.random.default_rng(0).integers(0, 60000, (2, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "images" / "a.tif", planes)  # CYX, two fluorescence channels
    tifffile.imwrite(
        tmp_path / "images" / "b.tif", np.moveaxis(planes, 0, -1), photometric="minisblack", planarconfig="contig"
    )
    for stem in "ab":
        write_png(tmp_path / "masks" / f"{stem}.png", labels())
    ds = FolderDataset(tmp_path, **PLAIN)
    assert ds.in_channels == 2
    assert torch.allclose(ds[0][0], ds[1][0])


def test_to_unit_float_handles_constant_and_float_images():
    assert np.all(to_unit_float(np.full((4, 4, 1), 7, np.uint16)) == 0)
    out = to_unit_float(np.linspace(-3, 3, 16, dtype=np.float32).reshape(4, 4, 1))
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1


# -- bad input -------------------------------------------------------------------------------------


def test_split_first_layout_is_named_with_the_move_that_fixes_it(tmp_path):
    """train/images + train/masks (the split first, common in downloaded datasets) is not segkit's
    layout: the error names the folder it found and where each folder goes."""
    for split in ("train", "val"):
        write_png(tmp_path / split / "images" / "a.png", gray())
        write_png(tmp_path / split / "masks" / "a.png", np.zeros(gray().shape[:2], np.uint8))
    with pytest.raises(SegkitError) as err:
        FolderDataset(tmp_path, split="train")
    message = str(err.value)
    assert str(tmp_path / "train" / "images") in message
    assert "move train/images to images/train and train/masks to masks/train, and the same for val" in message
    (tmp_path / "images").mkdir(parents=True)  # once moved, the layout is segkit's
    for split in ("train", "val"):
        (tmp_path / split / "images").rename(tmp_path / "images" / split)
        (tmp_path / "masks").mkdir(exist_ok=True)
        (tmp_path / split / "masks").rename(tmp_path / "masks" / split)
    assert len(FolderDataset(tmp_path, split="val")) == 1


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(SegkitError, match=r"no images found in .*images"):
        FolderDataset(tmp_path)
    with pytest.raises(SegkitError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "ann.json").write_text("{}")
    with pytest.raises(SegkitError, match=r"data folder .*ann\.json is a file, not a folder; point the dataset at a folder"):
        FolderDataset(tmp_path / "ann.json")
    with pytest.raises(SegkitError, match=r"mask folder .*masks does not exist"):
        (tmp_path / "masks").rmdir()
        write_png(tmp_path / "images" / "a.png", gray())
        FolderDataset(tmp_path)


def test_image_without_mask_and_mask_without_image(tmp_path):
    make_folder(tmp_path, ["a"])
    write_png(tmp_path / "images" / "lonely.png", gray())
    with pytest.raises(SegkitError, match=r"image .*images/lonely\.png has no mask \(expected .*masks/lonely\.png\)"):
        FolderDataset(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    write_png(tmp_path / "masks" / "orphan.png", labels())
    with pytest.raises(SegkitError, match=r"mask .*masks/orphan\.png has no image"):
        FolderDataset(tmp_path)


def test_two_files_with_one_stem(tmp_path):
    make_folder(tmp_path, ["a"])
    write_png(tmp_path / "images" / "a.jpg", gray())
    with pytest.raises(SegkitError, match=r"share the stem 'a'"):
        FolderDataset(tmp_path)


def test_size_mismatch_is_found_from_headers(tmp_path):
    write_png(tmp_path / "images" / "a.png", gray(24, 32))
    write_png(tmp_path / "masks" / "a.png", labels(12, 16))
    with pytest.raises(SegkitError, match=r"images/a\.png is 32x24 but its mask .*masks/a\.png is 16x12"):
        FolderDataset(tmp_path)


def test_unreadable_and_truncated_files(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "images" / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(SegkitError, match=r"cannot read image .*images/b\.png.*replace the file"):
        FolderDataset(tmp_path)
    # A truncated file has a good header: construction passes, loading names the file.
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "b.png").write_bytes(data[: len(data) // 2])
    ds = FolderDataset(tmp_path)
    with pytest.raises(SegkitError, match=r"cannot read image .*images/b\.png"):
        ds[1]


def test_mask_values_out_of_range_are_reported_on_load_with_value_and_file(tmp_path):
    make_folder(tmp_path, ["a"])
    mask = labels()
    mask[0, :5] = 7
    write_png(tmp_path / "masks" / "a.png", mask)
    ds = FolderDataset(tmp_path, num_classes=3)
    with pytest.raises(SegkitError, match=r"masks/a\.png holds value 7 \(5 pixels\), outside \[0, 3\)"):
        ds[0]


def test_value_equal_to_num_classes_hints_at_zero_as_unlabelled(tmp_path):
    make_folder(tmp_path, ["a"])
    write_png(tmp_path / "masks" / "a.png", labels(num_classes=4))  # 0 = unlabelled, classes 1..3
    with pytest.raises(SegkitError, match="reduce_zero_label=True"):
        FolderDataset(tmp_path, num_classes=3)[0]


def test_validate_lists_every_problem_at_once(tmp_path):
    make_folder(tmp_path, ["good", "badvalue", "small", "corrupt", "lonely"])
    (tmp_path / "masks" / "lonely.png").unlink()
    write_png(tmp_path / "masks" / "orphan.png", labels())
    write_png(tmp_path / "masks" / "small.png", labels(12, 16))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"garbage")
    mask = labels()
    mask[:2, :3] = 9
    write_png(tmp_path / "masks" / "badvalue.png", mask)

    with pytest.raises(SegkitError, match=r"\(3 more problems: `segkit check-data"):
        FolderDataset(tmp_path, num_classes=3)
    report = check_folder(tmp_path, num_classes=3)
    assert not report.ok and len(report.problems) == 5
    text = "\n".join(report.problems)
    for needle in (
        "lonely.png has no mask",
        "orphan.png has no image",
        "small.png is 16x12",
        "cannot read image",
        "badvalue.png holds value 9 (6 pixels)",
    ):
        assert needle in text
    assert report.num_pairs == 2  # good and badvalue; the others fail before decoding
    assert report.histogram[9] == 6 and sum(report.histogram.values()) == 2 * 24 * 32
    formatted = report.format()
    assert "label histogram" in formatted and "5 problems" in formatted


def test_validate_on_a_good_dataset_reports_histogram_and_absent_classes(tmp_path):
    make_folder(tmp_path, ["a", "b"], split="train")
    report = FolderDataset(tmp_path, "train", num_classes=4, classes=["bg", "x", "y", "z"]).check_files()
    assert report.ok and report.num_pairs == 2 and report.in_channels == 1
    assert set(report.histogram) == {0, 1, 2} and sum(report.histogram.values()) == 2 * 24 * 32
    assert any("3 (z) has no pixels" in hint for hint in report.hints)


def test_check_data_command(tmp_path, capsys):
    make_folder(tmp_path, ["a", "b"], split="train")
    make_folder(tmp_path, ["c"], split="val")
    assert main(["check-data", str(tmp_path), "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "(split train)" in out and "(split val)" in out and "OK" in out
    write_png(tmp_path / "images" / "val" / "d.png", gray())
    assert main(["check-data", str(tmp_path), "--split", "val", "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert "d.png has no mask" in out and "holds value 2" in out
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # A split whose mask folder is missing is that split's problem: the other splits are still reported.
    make_folder(tmp_path / "three", ["a"], split="train")
    write_png(tmp_path / "three" / "images" / "test" / "e.png", gray())
    assert main(["check-data", str(tmp_path / "three"), "--num-classes", "3"]) == 1
    out = capsys.readouterr().out
    assert "(split train)" in out and "(split test)\n  problem: mask folder" in out and "masks/test does not exist" in out
    # An option every split refuses is one error (exit 2), not a failed report per split.
    assert main(["check-data", str(tmp_path / "three"), "--num-classes", "3", "--class-colors", "[[0, 0]]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class_colors entry for class 0" in err
    # A COCO annotation file is not a folder dataset: said so, not "does not exist".
    (tmp_path / "ann.json").write_text("{}")
    assert main(["check-data", str(tmp_path / "ann.json")]) == 2
    assert "ann.json is a file; check-data reads a folder dataset" in capsys.readouterr().err


def test_check_data_says_when_the_images_have_several_sizes(tmp_path):
    """Training stops at the first batch of mixed sizes; check-data says so beforehand."""
    for name, (h, w) in {"a": (40, 50), "b": (40, 50), "c": (33, 47)}.items():
        write_png(tmp_path / "images" / f"{name}.png", np.zeros((h, w), np.uint8))
        write_png(tmp_path / "masks" / f"{name}.png", np.zeros((h, w), np.uint8))
    hints = check_folder(tmp_path, num_classes=2).hints
    assert any("the images have 2 sizes (the commonest 50x40, 2 of 3)" in hint and "random_crop" in hint for hint in hints)

"""Where a folder dataset's files are: the layouts segkit reads, splits, and images paired with masks.

``root/images/`` + ``root/masks/`` paired by file stem (nested folders by relative path); splits as
subfolders (``images/train``) or split files (``train.txt``, ``splits/train.txt``, VOC's
``ImageSets/Segmentation/train.txt``); MMSegmentation's ``img_dir/`` + ``ann_dir/``; other names
through ``image_dir`` / ``mask_dir``. :func:`scan_folder` pairs the files and checks what file
names and headers tell (no pixel is decoded); ``segkit.data.folder.FolderDataset`` reads them.
``find_files`` is also the pairing rule of ``segkit evaluate --pred --gt`` and ``segkit predict``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.data.io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, read_header
from segkit.data.masks import MaskDecoder
from segkit.errors import SegkitError

__all__ = ["SPLIT_FILE_PLACES", "SPLIT_NAMES", "FolderLayout", "FolderScan", "default_dirs", "find_files", "list_splits", "scan_folder"]

SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")
SPLIT_FILE_PLACES = ("{split}.txt", "splits/{split}.txt", "ImageSets/Segmentation/{split}.txt")


@dataclass
class FolderLayout:
    image_dir: Path
    mask_dir: Path
    stems: list[str] | None  # from a split file, in its order
    split_file: Path | None


@dataclass
class FolderScan:
    layout: FolderLayout
    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    in_channels: int | None = None


def default_dirs(root: Path, image_dir: str | None, mask_dir: str | None) -> tuple[Path, Path]:
    """The image and mask folders under ``root``: the given names, else ``images/`` + ``masks/``, or
    MMSegmentation's ``img_dir/`` + ``ann_dir/`` where only those exist."""
    if image_dir is None and mask_dir is None and not (root / "images").is_dir() and (root / "img_dir").is_dir():
        image_dir, mask_dir = "img_dir", "ann_dir"  # MMSegmentation
    return root / (image_dir or "images"), root / (mask_dir or "masks")


def list_splits(root: str | os.PathLike, image_dir: str | None = None, mask_dir: str | None = None) -> list[str]:
    """Split subfolder names (train, val, test, ...) under the image folder, sorted."""
    images, _ = default_dirs(Path(root), image_dir, mask_dir)
    if not images.is_dir():
        return []
    return sorted(d.name for d in images.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES)


def _read_split_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark (Windows Notepad) is not part of a stem
    except (OSError, UnicodeDecodeError) as err:
        raise SegkitError(
            f"cannot read split file {path} ({err}); it must be a text file with one stem a line"
        ) from err
    stems: list[str] = []
    seen: set[str] = set()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for ext in IMAGE_EXTENSIONS:
            if line.lower().endswith(ext):
                line = line[: -len(ext)]
                break
        if line not in seen:  # a set: a split file of 100k stems is read in linear time
            seen.add(line)
            stems.append(line)
    return stems


def _resolve(
    root: Path, split: str | None, image_dir: str | None, mask_dir: str | None, split_file: str | os.PathLike | None
) -> FolderLayout:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise SegkitError(f"data folder {root} {what}; point the dataset at a folder holding images/ and masks/")
    images, masks = default_dirs(root, image_dir, mask_dir)
    if not images.is_dir():
        split_first = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / images.name).is_dir())
        if image_dir is None and split_first:  # train/images, val/images: the split named first
            first, others = split_first[0], split_first[1:]
            raise SegkitError(
                f"image folder {images} does not exist, but {root / first / 'images'} does: segkit's layout names the "
                f"split second; move {first}/images to images/{first} and {first}/masks to masks/{first}"
                + (f", and the same for {', '.join(others)}" if others else "")
            )
        raise SegkitError(
            f"image folder {images} does not exist; put the images in {root / 'images'} and the masks in "
            f"{root / 'masks'}, or set image_dir / mask_dir (data.options.image_dir / mask_dir in a config)"
        )
    stems = None
    found_file: Path | None = None
    if split is not None and (images / split).is_dir():
        images, masks = images / split, masks / split
    if split_file is not None:
        found_file = Path(split_file) if Path(split_file).is_absolute() else root / split_file
        if not found_file.is_file():
            raise SegkitError(f"split file {found_file} does not exist; create it with one image stem a line")
    elif split is not None and images.name != split:
        places = [root / p.format(split=split) for p in SPLIT_FILE_PLACES]
        found_file = next((p for p in places if p.is_file()), None)
        if found_file is None:
            raise SegkitError(
                f"split {split!r} not found: there is no folder {images / split} and no split file {places[0]}; "
                "create one of them or pass split_file (data.options.split_file in a config)"
            )
    elif split is None:
        found = list_splits(root, image_dir, mask_dir)
        if found:
            raise SegkitError(
                f"{images} holds split folders ({', '.join(found)}); pass split= one of them (segkit check-data checks each)"
            )
    if found_file is not None:
        stems = _read_split_file(found_file)
    if not masks.is_dir():
        raise SegkitError(
            f"mask folder {masks} does not exist; put the masks there, named like their images, or set mask_dir"
        )
    return FolderLayout(images, masks, stems, found_file)


def find_files(
    folder: Path, extensions: Sequence[str], suffix: str | None, kind: str
) -> tuple[dict[str, Path], list[str]]:
    """stem -> file under ``folder`` (recursive, hidden entries skipped); problems for shared stems."""
    files: dict[str, Path] = {}
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        directory = Path(dirpath)
        rel_dir = directory.relative_to(folder).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"  # string work: thousands of files per folder
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = prefix + name
            if suffix:
                if not rel.endswith(suffix):
                    continue
                stem = rel[: -len(suffix)]
            else:
                ext = os.path.splitext(name)[1].lower()
                if ext not in extensions:
                    continue
                stem = rel[: -len(ext)]
            path = directory / name  # a third of the time of Path(dirpath) / name
            if stem in files:
                problems.append(f"{kind}s {files[stem]} and {path} share the stem {stem!r}; keep one of them")
                continue
            files[stem] = path
    return files, problems


def scan_folder(
    root: Path,
    split: str | None,
    options: Mapping[str, Any],
    decoder: MaskDecoder,
) -> FolderScan:
    """The (stem, image, mask) pairs of ``root`` (``split``, ``options``: FolderDataset's layout options)
    and every problem found from file names and headers, without decoding a pixel."""
    layout = _resolve(root, split, options.get("image_dir"), options.get("mask_dir"), options.get("split_file"))
    scan = FolderScan(layout)
    image_suffix, mask_suffix = options.get("image_suffix"), options.get("mask_suffix")
    images, problems = find_files(layout.image_dir, IMAGE_EXTENSIONS, image_suffix, "image")
    masks, mask_problems = find_files(layout.mask_dir, MASK_EXTENSIONS, mask_suffix, "mask")
    scan.problems += problems + mask_problems
    looked_for = (
        f"files ending in {image_suffix!r}" if image_suffix else "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    )
    if layout.stems is not None:
        if not layout.stems:
            scan.problems.insert(0, f"split file {layout.split_file} lists no stems; add one image stem a line")
        for stem in layout.stems:
            if stem not in images:
                scan.problems.append(
                    f"split file {layout.split_file} lists {stem!r} but {layout.image_dir} has no image with that stem; "
                    "fix the list or add the image"
                )
        keys = [s for s in layout.stems if s in images]
    else:
        if not images:
            scan.problems.insert(
                0,
                f"no images found in {layout.image_dir} (looked for {looked_for}); put the images there or set image_dir",
            )
        keys = sorted(images)
        for stem in sorted(set(masks) - set(images)):
            scan.problems.append(
                f"mask {masks[stem]} has no image in {layout.image_dir} (stem {stem!r}); add the image or remove the mask"
            )
    expected_end = mask_suffix or ".png"
    for stem in keys:
        if stem not in masks:
            scan.problems.append(
                f"image {images[stem]} has no mask (expected {layout.mask_dir / (stem + expected_end)}); "
                "add the mask or remove the image"
            )
        else:
            scan.pairs.append((stem, images[stem], masks[stem]))
    _check_headers(scan, decoder)
    return scan


def _check_headers(scan: FolderScan, decoder: MaskDecoder) -> None:
    """Sizes and channels from file headers (no pixel decoding); drops pairs with problems."""
    channels: dict[int, Path] = {}
    good: list[tuple[str, Path, Path]] = []
    for stem, image_path, mask_path in scan.pairs:
        try:
            image = read_header(image_path, "image")
            mask = read_header(mask_path, "mask")
        except SegkitError as err:
            scan.problems.append(str(err))
            continue
        if image.size != mask.size:
            scan.problems.append(
                f"image {image_path} is {image.width}x{image.height} but its mask {mask_path} is "
                f"{mask.width}x{mask.height}; make them the same size (resize masks with nearest-neighbour interpolation)"
            )
            continue
        if mask.channels > 1 and not mask.palette and not decoder.is_color:
            scan.problems.append(
                f"mask {mask_path} is a colour (RGB) image; give class_colors (one colour per class) "
                "or save masks as single-channel index or palette PNGs"
            )
            continue
        channels.setdefault(image.channels, image_path)
        good.append((stem, image_path, mask_path))
    scan.pairs = good
    counts = set(channels)
    if counts == {1, 3}:
        scan.in_channels = 3  # grayscale images among RGB ones are repeated to RGB
    elif len(counts) == 1:
        scan.in_channels = counts.pop()
    elif counts:
        examples = ", ".join(f"{path} has {c}" for c, path in sorted(channels.items()))
        scan.problems.append(f"images have different channel counts ({examples}); convert them to one channel count")

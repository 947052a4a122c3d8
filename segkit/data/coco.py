"""COCO-style instance annotations read as semantic segmentation.

``CocoDataset(image_dir, annotation_file, categories=None)`` renders each image's annotations
(polygons, compressed and uncompressed RLE; rasterised by pycocotools) into one class mask:

- background is 0; the chosen categories are 1..K, in ascending category id, or in the order of
  ``categories`` (ids or names), which may also pick a subset; annotations of other categories
  are left out (their pixels are background). ``classes`` is ``["background", names...]``.
- a pixel gets class c when every chosen annotation covering it is of class c and at least one of
  them is a non-crowd instance: overlapping instances of one class keep that class (torchvision's
  reference marks every overlap as ignore, which throws away unambiguous pixels);
- pixels covered by annotations of two different classes become ``ignore_index``;
- pixels covered only by crowd annotations become ``ignore_index`` (torchvision's reference drops
  crowds, which teaches them as background).

Images without annotations of the chosen categories stay in, all background, unless
``skip_empty=True``. With ``cache_dir`` the rendered masks are stored as PNGs in a subfolder keyed
by the sha256 of the annotation file's bytes and the label mapping, so later epochs read a PNG
instead of rasterising again, and an edited annotation file (or another category choice) never
serves stale masks. Old subfolders are not removed; delete ``cache_dir`` whenever you like.

Construction checks that the annotation file parses and holds no contradiction (unique image and
category ids, every annotation's image and category listed, sizes in whole pixels:
:mod:`segkit.data.coco_format`), every image file exists, and each image's header size matches the
file's ``width``/``height``. Polygons are checked as they are drawn (finite coordinates near the
image). Images are named in reports by ``file_name`` without the extension (``stems``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.data.base import SegmentationDataset, channels_for, checked_transforms
from segkit.data.coco_format import checked_segmentation, duplicate_names, load_coco
from segkit.data.io import read_header
from segkit.errors import SegkitError

__all__ = ["CocoDataset"]

_CACHE_VERSION = 2  # bump when the rendering rules or the cache's file names change


class CocoDataset(SegmentationDataset):
    """COCO annotations as semantic masks; items are (image float32 (C, H, W), mask int64 (H, W)).

    Args:
        image_dir: folder the images' ``file_name`` entries are relative to.
        annotation_file: the COCO json (instances format).
        categories: category ids or names, in label order (1..K); None = all, ascending id.
        transforms, ignore_index, mean, std, scaling, percentiles: as for ``FolderDataset``.
        skip_empty: leave out images with no annotation of the chosen categories.
        cache_dir: where to keep rendered masks (None: render on every load).
        in_channels: as for ``FolderDataset`` (grayscale images repeated when it is 3).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        categories: Sequence[int | str] | None = None,
        *,
        transforms: Any = None,
        ignore_index: int = 255,
        skip_empty: bool = False,
        cache_dir: str | os.PathLike | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        scaling: str = "auto",
        percentiles: Sequence[float] = (1.0, 99.8),
        in_channels: int | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.ignore_index = int(ignore_index)
        if not 0 <= self.ignore_index <= 65535:
            raise SegkitError(f"ignore_index {self.ignore_index} cannot be stored in a COCO mask (rendered as 8 or 16-bit "
                              "labels); use a value in [num_classes, 65535], e.g. 255")
        if not self.image_dir.is_dir():
            raise SegkitError(f"image folder {self.image_dir} does not exist; check the path to the COCO images")
        self.coco, self.annotation_sha256 = load_coco(self.annotation_file)
        cats = self.coco.cats
        if categories is None:
            chosen = sorted(cats)
        elif isinstance(categories, (str, int)):
            raise SegkitError(f"categories is {categories!r}; give a list of category ids or names, e.g. [{categories!r}]")
        else:
            shared = duplicate_names(cats)
            by_name = {c["name"]: cid for cid, c in cats.items()}
            chosen = []
            for entry in categories:
                if isinstance(entry, str) and entry in shared:
                    raise SegkitError(f"category name {entry!r} belongs to ids {', '.join(map(str, shared[entry]))} in "
                                      f"{self.annotation_file}; choose the category by its id")
                cid = by_name.get(entry, entry) if isinstance(entry, str) else entry  # a string names, else is an id
                if isinstance(cid, bool) or cid not in cats:  # True == 1 would pick category 1
                    known = ", ".join(f"{cid!r} ({c['name']})" for cid, c in sorted(cats.items()))
                    raise SegkitError(f"category {entry!r} is not in {self.annotation_file}; known categories: {known}")
                if cid in chosen:
                    raise SegkitError(f"category {entry!r} appears twice in categories; list each once")
                chosen.append(cid)
        if not chosen:
            raise SegkitError(f"{self.annotation_file} has no categories; add some or pick another file")
        shared = duplicate_names({cid: cats[cid] for cid in chosen})
        if shared:  # two classes of one name: reports could not tell them apart
            name, ids = next(iter(shared.items()))
            raise SegkitError(f"categories {', '.join(map(str, ids))} in {self.annotation_file} are all named {name!r}; "
                              "rename them in the file, or choose the ones to train (categories / data.options.categories) by id")
        self.category_ids = chosen
        self.label_of = {cid: i + 1 for i, cid in enumerate(chosen)}
        self.classes = ["background"] + [str(cats[cid]["name"]) for cid in chosen]
        self.num_classes = len(self.classes)
        if 0 <= self.ignore_index < self.num_classes:
            raise SegkitError(
                f"ignore_index {self.ignore_index} is also a class label (labels run 0..{self.num_classes - 1}); "
                "set ignore_index outside that range"
            )

        ids = [img["id"] for img in self.coco.dataset["images"]]
        if skip_empty:
            ids = [i for i in ids if any(a["category_id"] in self.label_of for a in self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise SegkitError(
                f"{self.annotation_file} leaves no images"
                + (" with annotations of the chosen categories (skip_empty=True)" if skip_empty else "")
                + "; check the file and the categories"
            )
        self.ids = ids
        self.stems = _stems([self.coco.imgs[i]["file_name"] for i in ids], ids)
        self._check_images()
        self.in_channels = channels_for(self.in_channels, in_channels, f"the images in {self.image_dir}")
        self._setup_intensity(mean, std, scaling, percentiles)
        self.transforms = checked_transforms(transforms)

        self.cache_dir: Path | None = None
        if cache_dir is not None:
            key = hashlib.sha256(
                json.dumps(
                    {
                        "annotations": self.annotation_sha256,
                        "labels": chosen,
                        "ignore": self.ignore_index,
                        "v": _CACHE_VERSION,
                    }
                ).encode()
            ).hexdigest()[:24]
            self.cache_dir = Path(cache_dir) / f"coco-masks-{key}"
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise SegkitError(
                    f"cannot create mask cache {self.cache_dir} ({err.strerror or err}); set cache_dir to a writable folder"
                ) from err

    def _check_images(self) -> None:
        missing: list[Path] = []
        channels: dict[int, Path] = {}
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            path = self.image_dir / info["file_name"]
            if not path.is_file():
                missing.append(path)
                continue
            header = read_header(path, "image")
            if header.size != (info["height"], info["width"]):  # whole numbers: checked on loading
                raise SegkitError(
                    f"image {path} is {header.width}x{header.height} but {self.annotation_file} says "
                    f"{info['width']}x{info['height']}; use the images the annotations were made on"
                )
            channels.setdefault(header.channels, path)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise SegkitError(
                f"image {missing[0]}{more} listed in {self.annotation_file} do{'' if more else 'es'} not exist; "
                "check image_dir or add the files"
            )
        if set(channels) <= {1, 3}:
            self.in_channels = max(channels)
        else:
            examples = ", ".join(f"{path} has {c}" for c, path in sorted(channels.items()))
            raise SegkitError(f"images have different channel counts ({examples}); convert them to one channel count")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def mask_source(self, index: int) -> str:
        return f"{self.annotation_file} (image id {self.ids[index]})"

    def render_mask(self, image_id: Any) -> np.ndarray:
        """The semantic mask (H, W) of one image, rendered from its annotations (no cache)."""
        info = self.coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        label = np.zeros((height, width), np.int32)
        conflict = np.zeros((height, width), bool)
        covered = np.zeros((height, width), bool)
        instance = np.zeros((height, width), bool)
        for ann in self.coco.imgToAnns.get(image_id, []):
            cls = self.label_of.get(ann["category_id"])
            if cls is None:
                continue  # a category not chosen (every category id exists: checked on loading)
            ann = checked_segmentation(ann, height, width, f"annotation {ann['id']!r} of image {image_id!r} in {self.annotation_file}")
            if ann is None:
                continue
            try:
                with warnings.catch_warnings():  # pycocotools' numpy-2 DeprecationWarning, once per call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = self.coco.annToMask(ann).astype(bool)
            except Exception as err:  # pycocotools raises bare Exceptions and TypeErrors for bad segmentations
                raise SegkitError(
                    f"annotation {ann.get('id', '?')} of image {image_id} in {self.annotation_file} has a segmentation "
                    f"pycocotools cannot read ({err}); fix or remove it"
                ) from err
            if m.shape != (height, width):
                raise SegkitError(
                    f"annotation {ann.get('id', '?')} in {self.annotation_file} has an RLE of size {list(m.shape)} "
                    f"but its image is {height}x{width}; fix the annotation"
                )
            conflict |= m & (label != 0) & (label != cls)
            label[m & (label == 0)] = cls
            covered |= m
            if not ann.get("iscrowd", 0):
                instance |= m
        label[conflict | (covered & ~instance)] = self.ignore_index
        return label.astype(np.uint8 if max(self.num_classes - 1, self.ignore_index) <= 255 else np.uint16)

    def read_mask(self, index: int) -> np.ndarray:
        image_id = self.ids[index]
        if self.cache_dir is None:
            return self.render_mask(image_id)
        path = self.cache_dir / _cache_name(image_id)
        if path.is_file():
            try:
                with Image.open(path) as im:
                    return np.array(im)
            except OSError:
                pass  # a broken cache file: render again
        mask = self.render_mask(image_id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(mask).save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic: workers never read half-written files
        return mask


def _stems(file_names: list[str], ids: list[Any]) -> list[str]:
    """Each image's name in reports: its ``file_name`` without the extension (subfolders kept, as
    ``FolderDataset.stems``), with the image id added where two images share one."""
    stems = [os.path.splitext(name)[0].replace(os.sep, "/") for name in file_names]
    shared = {stem for stem, n in Counter(stems).items() if n > 1}
    return [f"{stem} (id {image_id})" if stem in shared else stem for stem, image_id in zip(stems, ids)]


def _cache_name(image_id: Any) -> str:
    """The cached mask's file name: the id itself when it is a number, else a name safe on any file system."""
    if isinstance(image_id, int):
        return f"{image_id}.png"
    text = str(image_id)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64]
    return f"s-{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.png"

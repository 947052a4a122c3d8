"""Reading and checking a COCO annotation file before pycocotools indexes it.

pycocotools trusts its input: an annotation that points to a missing image or category is
silently never drawn, a repeated id silently replaces the earlier entry, and a polygon with a
null or huge coordinate can crash the process in C. Each of these is a mistake in the file (an
export that wrote image ids as strings but annotation ids as numbers gives all-background masks
with no error), so this module turns them into a :class:`SegkitError` naming the file, the entry
and the fix. The structure is checked once, when the file is loaded; the coordinates of an
annotation when it is drawn (:func:`checked_segmentation`), so loading COCO's 860K training
annotations stays a pass over the dicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import SegkitError

__all__ = ["checked_segmentation", "load_coco"]


def load_coco(path: Path) -> tuple[Any, str]:
    """(pycocotools COCO, sha256 of the file's bytes); SegkitError for a missing, malformed or inconsistent file."""
    from pycocotools.coco import COCO

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SegkitError(f"cannot read annotation file {path} ({err.strerror or err}); check the path") from err
    try:
        dataset = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SegkitError(f"annotation file {path} is not valid JSON ({err}); fix or regenerate it") from err
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "categories")):
        raise SegkitError(
            f"annotation file {path} lacks the COCO 'images' and 'categories' lists; give a COCO-format file"
        )
    if dataset.get("annotations") is None:
        dataset["annotations"] = []  # an image list without annotations: every mask is background
    if not isinstance(dataset["annotations"], list):
        raise SegkitError(f"'annotations' in {path} is a {type(dataset['annotations']).__name__}, not a list; "
                          "give a list of annotation objects")
    _check_entries(dataset, path)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco, hashlib.sha256(raw).hexdigest()


_FIELDS = {"images": ("id", "file_name", "height", "width"), "categories": ("id", "name"),
           "annotations": ("id", "image_id", "category_id", "segmentation")}


def _check_entries(dataset: dict[str, Any], path: Path) -> None:
    """Every entry an object with its fields; ids unique; sizes whole numbers; references resolvable."""
    for key, needed in _FIELDS.items():
        for position, entry in enumerate(dataset[key]):
            if not isinstance(entry, dict):
                raise SegkitError(f"entry {position} of '{key}' in {path} is {entry!r}, not an object; "
                                  f"each entry needs {', '.join(needed)}")
            missing = [k for k in needed if k not in entry]
            if missing:
                raise SegkitError(f"entry {position} of '{key}' in {path} has no {', '.join(missing)}: "
                                  f"{_short(entry)}; add the field{'s' if len(missing) > 1 else ''}")
    for image in dataset["images"]:
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise SegkitError(f"image {image['id']!r} in {path} has file_name {image['file_name']!r}; give the image file's "
                              "path (relative to the image folder) as a string")
        for side in ("height", "width"):
            value = image[side]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SegkitError(f"image {image['id']!r} ({image['file_name']}) in {path} has {side} {value!r}; "
                                  "height and width must be positive whole numbers (pixels)")
    _check_unique(path, "images", ((image["id"], image["file_name"]) for image in dataset["images"]), "image")
    _check_unique(path, "categories", ((cat["id"], cat["name"]) for cat in dataset["categories"]), "category")
    for ann in dataset["annotations"]:
        crowd = ann.get("iscrowd", 0)
        if crowd is not None and (isinstance(crowd, str) or crowd not in (0, 1)):  # 0/1, True/False, 0.0/1.0, null (pycocotools' reading)
            raise SegkitError(f"annotation {ann['id']!r} in {path} has iscrowd {crowd!r}; iscrowd is 0 (an object) or 1 "
                              "(a crowd region, ignored in training and scoring)")
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {cat["id"] for cat in dataset["categories"]}
    for field, known, listed in (("image_id", image_ids, "images"), ("category_id", category_ids, "categories")):
        orphans = [ann for ann in dataset["annotations"] if not _is_known(ann[field], known)]
        if orphans:
            first = orphans[0]
            hint = ""
            if str(first[field]) in {str(i) for i in known}:  # "1" against 1: an exporter's type mix-up
                hint = f" (the ids in '{listed}' are {_kind_of(next(iter(known)))}, this one is a {_kind_of(first[field])[:-1]})"
            raise SegkitError(
                f"{len(orphans)} annotation(s) in {path} refer to a {field} not in '{listed}' (first: annotation "
                f"{first['id']!r} with {field} {first[field]!r}){hint}; fix the ids or remove those annotations"
            )


def _check_unique(path: Path, key: str, entries: Iterable[tuple[Any, Any]], kind: str) -> None:
    """Each id a whole number or a string, all of one type (they are sorted and compared), none repeated."""
    seen: dict[Any, Any] = {}
    for entry_id, name in entries:
        if not isinstance(entry_id, (int, str)) or isinstance(entry_id, bool):
            raise SegkitError(f"{kind} id {entry_id!r} in {path} is not a whole number or a string; give each {kind} an "
                              "integer id")
        if seen and type(entry_id) is not type(first := next(iter(seen))):
            raise SegkitError(f"{kind} ids in '{key}' of {path} mix numbers and strings ({first!r} and {entry_id!r}); "
                              f"give every {kind} an integer id")
        if entry_id in seen:
            raise SegkitError(f"{kind} id {entry_id!r} appears twice in '{key}' of {path} ({seen[entry_id]!r} and {name!r}); "
                              f"give each {kind} its own id")
        seen[entry_id] = name


def _is_known(value: Any, known: set[Any]) -> bool:
    try:
        return value in known
    except TypeError:  # an unhashable id (a list): known to no one
        return False


def _kind_of(value: Any) -> str:
    return "strings" if isinstance(value, str) else "numbers" if isinstance(value, (int, float)) else f"{type(value).__name__}s"


def _short(entry: dict[str, Any]) -> str:
    text = repr({k: v for k, v in entry.items() if k != "segmentation"})
    return text if len(text) <= 120 else text[:117] + "..."


def duplicate_names(categories: dict[Any, dict[str, Any]]) -> dict[str, list[Any]]:
    """Category names held by more than one id: name -> ids."""
    counts = Counter(str(cat["name"]) for cat in categories.values())
    return {name: [cid for cid, cat in categories.items() if str(cat["name"]) == name]
            for name, n in counts.items() if n > 1}


def checked_segmentation(ann: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any] | None:
    """The annotation ready for pycocotools, or None when nothing drawable is left.

    Degenerate polygons (fewer than 3 points, as some exporters write for box-only objects) are
    dropped. A polygon that is not a list of numbers, has an odd number of values, or has a
    coordinate that is not finite or lies further than the image's own size beyond its border
    raises a SegkitError naming ``where``: pycocotools would crash or allocate without bound on
    it. An RLE's runs must cover its size exactly: pycocotools leaves the pixels past short runs
    unwritten (whatever the memory held: a different mask on every read) and refuses long ones.
    """
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        _check_rle_length(seg, where)
        return ann
    if not isinstance(seg, list):
        raise SegkitError(f"{where} has a segmentation of type {type(seg).__name__}; give a list of polygons or an RLE object")
    if seg and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seg):
        raise SegkitError(f"{where} has a flat list of numbers as segmentation; COCO polygons are lists of lists: "
                          "wrap it as [[x1, y1, x2, y2, ...]]")
    polygons = []
    for polygon in seg:
        if not isinstance(polygon, list):
            raise SegkitError(f"{where} has a polygon {_clip(polygon)} that is not a list of coordinates; "
                              "give each polygon as [x1, y1, x2, y2, ...]")
        if any(isinstance(v, (list, tuple, dict)) for v in polygon):
            raise SegkitError(f"{where} has a polygon of nested lists ({_clip(polygon)}); COCO polygons are flat: "
                              "[x1, y1, x2, y2, ...], not [[x1, y1], [x2, y2], ...]")
        if len(polygon) < 6:
            continue
        if len(polygon) % 2:
            raise SegkitError(f"{where} has a polygon of {len(polygon)} values, an odd number; give x, y pairs")
        try:
            values = np.asarray(polygon, dtype=np.float64)  # None becomes NaN, caught below
        except (TypeError, ValueError):
            raise SegkitError(f"{where} has a polygon holding a non-number ({_clip(polygon)}); give numbers only") from None
        if not np.isfinite(values).all():
            raise SegkitError(f"{where} has a polygon holding a null, NaN or infinite value ({_clip(polygon)}); fix the annotation")
        xs, ys = values[0::2], values[1::2]
        if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
            raise SegkitError(f"{where} has a polygon reaching ({xs[np.abs(xs).argmax()]:g}, {ys[np.abs(ys).argmax()]:g}), "
                              f"far outside its {width}x{height} image; fix the annotation (coordinates are pixels)")
        polygons.append(polygon)
    if not polygons:
        return None
    return ann if len(polygons) == len(seg) else {**ann, "segmentation": polygons}


def _check_rle_length(rle: dict[str, Any], where: str) -> None:
    """A SegkitError when an RLE's runs do not add up to its ``size`` (height x width). A malformed
    size or counts is left to pycocotools, whose error the caller names."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return
        total = sum(counts)
    elif isinstance(counts, (str, bytes)):
        total = rle_string_total(counts)
        if total is None:
            raise SegkitError(f"{where} has an RLE whose counts string ends inside a number; it is cut short or not "
                              "COCO's compressed RLE (fix the annotation)")
    else:
        return
    if total != size[0] * size[1]:
        raise SegkitError(f"{where} has an RLE whose runs cover {total} pixels but its size {size[0]}x{size[1]} holds "
                          f"{size[0] * size[1]}; fix the annotation (was it encoded for another image size?)")


def rle_string_total(counts: str | bytes) -> int | None:
    """The pixels a compressed COCO RLE string covers (the sum of its runs), or None when it ends
    inside a number. The format is pycocotools' ``rleFrString``: each run in 5-bit groups (ASCII
    48 + the group, 0x20 set while more follow, 0x10 the sign of the last), and every run after the
    second stored as its difference from the run two before it."""
    data = counts.encode() if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data):
                return None
            group = data[position] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return sum(runs)


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

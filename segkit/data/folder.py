"""Image/mask folders: the layout biomedical and most custom datasets use.

Layouts (``root`` is the folder you pass; found and paired by :mod:`segkit.data.layout`):

- ``root/images/`` and ``root/masks/``, paired by file stem (``a.jpg`` <-> ``a.png``; nested
  folders pair by relative path, ``x/a.jpg`` <-> ``x/a.png``);
- splits as subfolders: ``root/images/train`` + ``root/masks/train`` (``split="train"``), or as
  split files listing stems, one a line: ``split_file=...`` or, found by name, ``root/train.txt``,
  ``root/splits/train.txt``, ``root/ImageSets/Segmentation/train.txt`` (VOC);
- MMSegmentation's ``img_dir/`` + ``ann_dir/`` (used when ``root/images`` is absent), with
  ``image_suffix`` / ``mask_suffix`` naming the file endings that pair (e.g. ``"_leftImg8bit.png"``
  and ``"_gtFine_labelTrainIds.png"``); other folder names through ``image_dir`` / ``mask_dir``.

Checks at construction are file-name and file-header work only (cheap on big folders): empty
folder, image without mask, mask without image, two files with one stem, unreadable header,
image/mask size mismatch, RGB masks without ``class_colors``. Each raises a ``SegkitError`` naming
the file and the fix. Label values are checked when a mask is loaded. ``check_files()`` (and
``segkit check-data``) decodes every file and lists every problem at once, with a class pixel
histogram and hints on label values that usually end in a NaN mIoU.

Masks: see ``segkit.data.masks`` (index, palette, binary 0/255, colour tables, reduce_zero_label).
Images and normalisation: see ``segkit.data.base``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.base import SegmentationDataset, channels_for, checked_transforms
from segkit.data.io import read_image, read_mask_pixels
from segkit.data.layout import list_splits, scan_folder
from segkit.data.masks import Color, MaskDecoder, bad_value_message, binary_masks_hint, has_void_beside_labels, is_zero_255, label_hints
from segkit.errors import SegkitError

__all__ = ["DataReport", "FolderDataset", "check_folder", "list_splits"]


def _label_setup(
    num_classes: int | None,
    classes: Sequence[str] | None,
    ignore_index: int,
    binary: bool,
    class_colors: Sequence[Color] | Mapping[int, Color] | None,
    unknown_color: str,
    reduce_zero_label: bool,
) -> tuple[MaskDecoder, int | None, list[str] | None]:
    """The mask decoder, and num_classes / classes made consistent with each other and the options."""
    decoder = MaskDecoder(
        ignore_index=ignore_index,
        binary=binary,
        class_colors=class_colors,
        unknown_color=unknown_color,
        reduce_zero_label=reduce_zero_label,
    )
    if classes is not None:
        classes = [str(c) for c in classes]
        if num_classes is not None and num_classes != len(classes):
            raise SegkitError(f"num_classes (model.num_classes in a config) is {num_classes} but classes (data.classes) names "
                              f"{len(classes)}; make them agree")
        num_classes = len(classes)
    if binary:
        if num_classes not in (None, 2):
            raise SegkitError(
                f"binary=True gives 2 classes but num_classes is {num_classes}; set num_classes=2 or drop binary"
            )
        num_classes = 2
    if decoder.colors is not None and num_classes is None:
        labels = [c for c in decoder.colors.values() if c != decoder.ignore_index]
        num_classes = max(labels) + 1 if labels else None
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise SegkitError(f"num_classes is {num_classes!r}; it must be a positive integer")
    return decoder, num_classes, classes


def _first_problem(problems: list[str], root: Path, split: str | None) -> str:
    more = len(problems) - 1
    if not more:
        return problems[0]
    where = f"{root}" + (f" --split {split}" if split else "")
    return f"{problems[0]} ({more} more problem{'s' if more > 1 else ''}: `segkit check-data {where}` lists them all)"


class FolderDataset(SegmentationDataset):
    """Images and masks paired by file stem; items are (image float32 (C, H, W), mask int64 (H, W)).

    Args:
        root: the dataset folder (see the module docstring for layouts).
        split: a split subfolder name or split-file name (``"train"``), or None for a flat folder.
        num_classes: labels must lie in [0, num_classes) or equal ``ignore_index``; checked on load.
            Defaults to ``len(classes)``, 2 with ``binary``, or the colour table's size; None skips the check.
        classes: class names, index = label.
        transforms: a pipeline from ``build_transforms`` (or any callable ``f(image=, mask=) -> dict``).
        ignore_index: label value left out of losses and metrics (default 255); passes through.
        binary: masks stored as 0/255 (255 = foreground); read as 0/1.
        class_colors, unknown_color: colour masks (see ``segkit.data.masks``).
        reduce_zero_label: 0 -> ignore_index and v -> v - 1 (masks whose 0 means unlabelled).
        mean, std, scaling, percentiles: intensity normalisation (see ``segkit.data.base``).
        image_dir, mask_dir, image_suffix, mask_suffix, split_file: other layouts.
        in_channels: the channel count items must have (a model's); grayscale images are repeated
            when it is 3. None: the images' own.

    Attributes: ``samples`` (list of (image path, mask path)), ``stems``, ``in_channels``
    (1 for grayscale data, 3 for RGB, C for C-channel TIFFs), ``num_classes``, ``classes``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        transforms: Any = None,
        ignore_index: int = 255,
        binary: bool = False,
        class_colors: Sequence[Color] | Mapping[int, Color] | None = None,
        unknown_color: str = "error",
        reduce_zero_label: bool = False,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        scaling: str = "auto",
        percentiles: Sequence[float] = (1.0, 99.8),
        image_dir: str | None = None,
        mask_dir: str | None = None,
        image_suffix: str | None = None,
        mask_suffix: str | None = None,
        split_file: str | os.PathLike | None = None,
        in_channels: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self._label_options = {
            "num_classes": num_classes,
            "classes": classes,
            "ignore_index": ignore_index,
            "binary": binary,
            "class_colors": class_colors,
            "unknown_color": unknown_color,
            "reduce_zero_label": reduce_zero_label,
        }
        self._layout_options = {
            "image_dir": image_dir,
            "mask_dir": mask_dir,
            "image_suffix": image_suffix,
            "mask_suffix": mask_suffix,
            "split_file": split_file,
        }
        self.ignore_index = int(ignore_index)
        self.decoder, self.num_classes, self.classes = _label_setup(**self._label_options)
        scan = scan_folder(self.root, split, self._layout_options, self.decoder)
        if scan.problems:
            raise SegkitError(_first_problem(scan.problems, self.root, split))
        self.stems = [stem for stem, _, _ in scan.pairs]
        self.samples = [(image, mask) for _, image, mask in scan.pairs]
        self.in_channels = channels_for(int(scan.in_channels), in_channels,
                                       f"the images under {self.root}" + (f" (split {split})" if split else ""))  # type: ignore[arg-type]
        self._setup_intensity(mean, std, scaling, percentiles)
        self.transforms = checked_transforms(transforms)

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index][0]

    def mask_source(self, index: int) -> Path:
        return self.samples[index][1]

    def read_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        return self.decoder.decode(read_mask_pixels(path), path)

    def check_files(self) -> DataReport:
        """Decode every image and mask of this split and report every problem at once."""
        return check_folder(self.root, self.split, **self._label_options, **self._layout_options)

    def sampled_label_hint(self, option: str = "binary=True", samples: int = 16) -> str | None:
        """:func:`~segkit.data.masks.binary_masks_hint` over up to ``samples`` masks spread over
        the split: 0/255 binary masks read without ``binary`` lose their whole foreground to
        ignore_index, which nothing else reports (the run trains and scores background alone). A
        cheap check for the start of training; decoding every mask is ``check_files``' job.
        ``option`` names how the caller's user sets binary."""
        chosen = sorted(set(np.linspace(0, len(self.samples) - 1, samples).astype(int).tolist())) if self.samples else []
        flagged, void_beside_labels = [], False
        for index in chosen:
            try:
                mask = self.read_mask(index)
            except SegkitError:
                continue  # the training loop names the file
            zero_255, void = _zero_255(np.bincount(mask.ravel()), self.ignore_index)
            void_beside_labels |= void
            if zero_255:
                flagged.append(str(self.mask_source(index)))
        return binary_masks_hint(flagged, len(chosen), option, void_beside_labels)


@dataclass
class DataReport:
    """What ``check_folder`` found: ``problems`` (each a sentence naming a file), ``hints``, and a
    label histogram (value -> pixel count, after decoding; ignore_index included)."""

    root: Path
    split: str | None
    num_pairs: int
    in_channels: int | None
    num_classes: int | None
    ignore_index: int
    histogram: dict[int, int]
    image_kinds: dict[str, int]
    problems: list[str]
    hints: list[str]
    classes: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        title = f"{self.root}" + (f" (split {self.split})" if self.split else "")
        kinds = ", ".join(f"{n} x {k}" for k, n in sorted(self.image_kinds.items()))
        lines = [
            f"data check: {title}",
            f"  {self.num_pairs} image/mask pairs; in_channels {self.in_channels}; images: {kinds or 'none read'}",
            f"  num_classes {self.num_classes if self.num_classes is not None else '(not set)'}; ignore_index {self.ignore_index}",
        ]
        total = sum(self.histogram.values())
        if total:
            lines.append("  label histogram (value: pixels, share):")
            for value, count in sorted(self.histogram.items()):
                name = ""
                if value == self.ignore_index:
                    name = " (ignore)"
                elif self.classes and value < len(self.classes):
                    name = f" ({self.classes[value]})"
                lines.append(f"    {value}{name}: {count} ({100.0 * count / total:.2f}%)")
        if self.problems:
            lines.append(f"  {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines += [f"    - {p}" for p in self.problems]
        if self.hints:
            lines.append("  hints:")
            lines += [f"    - {h}" for h in self.hints]
        lines.append("  OK" if self.ok else "  NOT OK: fix the problems above")
        return "\n".join(lines)


def _zero_255(counts: np.ndarray, ignore_index: int) -> tuple[bool, bool]:
    """:func:`~segkit.data.masks.is_zero_255` and :func:`~segkit.data.masks.has_void_beside_labels`
    of one mask's label histogram ``counts``."""
    ignored = int(counts[ignore_index]) if 0 <= ignore_index < counts.size else 0
    labels = counts.copy()
    if ignored:
        labels[ignore_index] = 0
    return is_zero_255(labels, ignored, ignore_index), has_void_beside_labels(labels, ignored)


def check_folder(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
    binary: bool = False,
    class_colors: Sequence[Color] | Mapping[int, Color] | None = None,
    unknown_color: str = "error",
    reduce_zero_label: bool = False,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
    split_file: str | os.PathLike | None = None,
) -> DataReport:
    """Scan a folder dataset, decoding every file, and list every problem at once.

    Takes ``FolderDataset``'s layout and label options. Works on folders a ``FolderDataset`` would
    refuse (that is its point); only a missing folder or split raises.
    """
    root = Path(root)
    decoder, num_classes, classes = _label_setup(
        num_classes, classes, ignore_index, binary, class_colors, unknown_color, reduce_zero_label
    )
    options = {
        "image_dir": image_dir,
        "mask_dir": mask_dir,
        "image_suffix": image_suffix,
        "mask_suffix": mask_suffix,
        "split_file": split_file,
    }
    scan = scan_folder(root, split, options, decoder)
    problems = list(scan.problems)
    histogram = np.zeros(256, dtype=np.int64)
    kinds: Counter[str] = Counter()
    jpeg_masks: list[Path] = []
    zero_255: list[str] = []
    void_beside_labels = False
    sizes: Counter[tuple[int, int]] = Counter()
    for _, image_path, mask_path in scan.pairs:
        try:
            image = read_image(image_path)
            kinds[f"{image.dtype} {image.shape[2]}-channel"] += 1
            sizes[image.shape[:2]] += 1
            mask = decoder.decode(read_mask_pixels(mask_path), mask_path)
        except SegkitError as err:
            problems.append(str(err))
            continue
        if image.shape[:2] != mask.shape:
            problems.append(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; make them the same size"
            )
        if mask_path.suffix.lower() in (".jpg", ".jpeg"):
            jpeg_masks.append(mask_path)
        counts = np.bincount(mask.ravel())
        flagged, void = _zero_255(counts, ignore_index)
        void_beside_labels |= void
        if flagged:
            zero_255.append(str(mask_path))
        if counts.size > histogram.size:
            histogram = np.pad(histogram, (0, counts.size - histogram.size))
        histogram[: counts.size] += counts
        if num_classes is not None:
            bad = [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != ignore_index]
            if bad:
                counted = [int(counts[v]) for v in bad]
                problems.append(bad_value_message(mask_path, bad, counted, num_classes, ignore_index, hint=False))
    hints = label_hints(histogram, num_classes, ignore_index, binary, classes, (zero_255, len(scan.pairs)), void_beside_labels)
    if len(sizes) > 1:
        (common, count), *_ = sizes.most_common()
        hints.append(
            f"the images have {len(sizes)} sizes (the commonest {common[1]}x{common[0]}, {count} of {sum(sizes.values())}): training "
            "batches images of one size, so give data.train_transforms a crop or resize step (e.g. {name: random_crop, size: 256}); "
            "validation and evaluation take each image at its own size"
        )
    if jpeg_masks:
        hints.append(
            f"{len(jpeg_masks)} mask(s) are JPEG (e.g. {jpeg_masks[0]}): lossy compression changes label values "
            "at edges; save masks as PNG"
        )
    return DataReport(
        root=root,
        split=split,
        num_pairs=len(scan.pairs),
        in_channels=scan.in_channels,
        num_classes=num_classes,
        ignore_index=ignore_index,
        histogram={int(v): int(histogram[v]) for v in np.flatnonzero(histogram)},
        image_kinds=dict(kinds),
        problems=problems,
        hints=hints,
        classes=classes,
    )

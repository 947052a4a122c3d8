"""Turning stored mask pixels into class indices, and checking label values.

Mask kinds (``MaskDecoder``):

- index masks (grayscale PNG/TIFF, 8 or 16 bit): the pixel value is the class;
- palette PNGs: the palette index is the class (the colours are only for viewing), as in VOC;
- binary masks stored as 0/255 with ``binary=True``: 255 -> 1 (0/1 masks pass unchanged); 255 is
  then foreground, so such masks cannot also use 255 as ignore_index;
- colour masks (RGB) with ``class_colors``: a list whose position is the class
  (``[[0, 0, 0], [255, 0, 0], ...]``) or a dict ``{class: colour}``; a colour may be
  ``[r, g, b]`` or ``"#rrggbb"``; a dict key equal to ``ignore_index`` maps that colour to ignore
  (e.g. VOC's boundary colour). A colour missing from the table is an error naming the file and
  the colour, or becomes ``ignore_index`` with ``unknown_color="ignore"``. With ``class_colors``
  any mask (palette, RGB) is read by its colours.
- ``reduce_zero_label=True`` (MMSegmentation's option, for masks where 0 means "unlabelled" and the
  classes are 1..K): 0 -> ignore_index, v -> v - 1.

``ignore_index`` (default 255) passes through every other kind unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import SegkitError

__all__ = ["MaskDecoder", "bad_value_message", "binary_masks_hint", "has_void_beside_labels", "is_zero_255", "label_hints"]

Color = Sequence[int] | str


def _parse_color(color: Color, where: str) -> tuple[int, int, int]:
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) == 6:
            try:
                return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
            except ValueError:
                pass
    elif (
        isinstance(color, Sequence)
        and len(color) == 3
        and all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color)
    ):
        return int(color[0]), int(color[1]), int(color[2])
    raise SegkitError(f"class_colors entry {where} is {color!r}; write a colour as [r, g, b] (0-255) or '#rrggbb'")


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class MaskDecoder:
    """Stored mask pixels -> (H, W) class indices (uint8, or uint16 when values exceed 255)."""

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        binary: bool = False,
        class_colors: Sequence[Color] | Mapping[int, Color] | None = None,
        unknown_color: str = "error",
        reduce_zero_label: bool = False,
        kind: str = "mask",
    ) -> None:
        self.kind = kind  # what errors call the file: "mask", or "prediction" (evaluate --pred)
        if unknown_color not in ("error", "ignore"):
            raise SegkitError(f"unknown_color is {unknown_color!r}; use 'error' or 'ignore'")
        if binary and class_colors is not None:
            raise SegkitError("binary=True and class_colors both set; binary masks need no colour table, drop one")
        self.ignore_index = int(ignore_index)
        self.binary = binary
        self.unknown_color = unknown_color
        self.reduce_zero_label = reduce_zero_label
        self.colors: dict[int, int] | None = None  # packed colour -> class
        if class_colors is not None:
            items = _color_items(class_colors)
            colors: dict[int, int] = {}
            for cls, color in items:
                packed = int(_pack(np.array(_parse_color(color, f"for class {cls}"))))
                if packed in colors and colors[packed] != int(cls):
                    raise SegkitError(
                        f"class_colors gives colour {color!r} to classes {colors[packed]} and {cls}; each colour needs one class"
                    )
                colors[packed] = int(cls)
            self.colors = colors
        # Nothing to decode: 8-bit index masks pass through untouched (most masks; no per-mask checks)
        self._as_stored = self.colors is None and not binary and not reduce_zero_label

    @property
    def is_color(self) -> bool:
        return self.colors is not None

    def decode(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """Class indices (H, W) from the pixels ``read_mask_pixels`` returned."""
        if self._as_stored and raw.dtype == np.uint8 and raw.ndim == 2:
            return raw
        if self.colors is not None:
            labels = self._decode_colors(raw, path)
        elif raw.ndim == 3:
            if self.kind == "prediction":
                raise SegkitError(f"prediction {path} is a colour (RGB) image; save predictions as single-channel "
                                  "index or palette PNGs of class indices (as segkit predict writes them)")
            raise SegkitError(
                f"mask {path} is a colour (RGB) image; give class_colors (one colour per class) "
                "or save masks as single-channel index or palette PNGs"
            )
        else:
            labels = raw
            if not np.issubdtype(labels.dtype, np.integer):
                if not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0:
                    raise SegkitError(
                        f"mask {path} holds non-integer or negative values; masks must hold class indices"
                    )
                labels = labels.astype(np.int64)
            elif labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
                raise SegkitError(
                    f"mask {path} holds negative value {int(labels.min())}; masks must hold class indices >= 0"
                )
            if self.binary:
                labels = np.where(labels == 255, 1, labels)
        if self.reduce_zero_label:
            labels = labels.astype(np.int64)
            ignore = labels == self.ignore_index
            labels = labels - 1
            labels[labels < 0] = self.ignore_index
            labels[ignore] = self.ignore_index
        if labels.dtype == np.uint8:  # most masks: nothing to check or convert (no pass over the pixels)
            return labels
        top = int(labels.max()) if labels.size else 0
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else None
        if dtype is None:
            raise SegkitError(f"mask {path} holds value {top}; segkit supports class indices up to 65535")
        return labels.astype(dtype, copy=False)

    def _decode_colors(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        if raw.ndim == 2:
            # Palette PNGs are read as indices; read their colours instead. Grayscale g is (g, g, g).
            from PIL import Image

            with Image.open(path) as im:
                raw = np.array(im.convert("RGB")) if im.mode in ("P", "PA") else np.repeat(raw[:, :, None], 3, axis=2)
        if raw.dtype == np.uint16:  # a 16-bit colour mask (PNG or TIFF): its colours are the high bytes (128 * 257 -> 128)
            raw = (raw >> 8).astype(np.uint8)
        packed = _pack(raw[..., :3])
        values, inverse = np.unique(packed, return_inverse=True)
        table = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.tolist()):
            cls = self.colors.get(v)  # type: ignore[union-attr]
            if cls is None:
                if self.unknown_color == "error":
                    rgb = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
                    count = int(np.count_nonzero(inverse == i))
                    raise SegkitError(
                        f"mask {path} has colour {list(rgb)} ({count} pixels) that is not in class_colors; "
                        "add it to the table or set unknown_color='ignore' to map unknown colours to ignore_index"
                    )
                cls = self.ignore_index
            table[i] = cls
        return table[inverse.reshape(packed.shape)]


def bad_value_message(
    path: str | Path,
    values: Sequence[int],
    counts: Sequence[int],
    num_classes: int,
    ignore_index: int,
    hint: bool = True,
    flags: bool = False,
) -> str:
    """One sentence naming the mask, its out-of-range values and their pixel counts.

    With ``hint``, a single bad value equal to num_classes suggests reduce_zero_label (0 may be
    the unlabelled value) or num_classes + 1. The fixes name config keys, or with ``flags`` the
    options of ``segkit evaluate --pred --gt``.
    """
    listed = ", ".join(f"{v} ({n} pixels)" for v, n in zip(values, counts))
    plural = "s" if len(values) > 1 else ""
    if flags:
        fix = "fix the mask, or pass the --num-classes / --ignore-index that match the data"
    else:
        fix = "fix the mask, or set num_classes / ignore_index to match the data"
    if hint and list(values) == [num_classes]:
        zero, more = ("pass --reduce-zero-label", f"pass --num-classes {num_classes + 1}") if flags else (
            "set reduce_zero_label=True (data.options.reduce_zero_label)", f"set num_classes={num_classes + 1} (model.num_classes)")
        fix = f"if the classes are 1..{num_classes} and 0 marks unlabelled pixels {zero}, if 0 is a real class {more}, otherwise fix the mask"
    return f"mask {path} holds value{plural} {listed}, outside [0, {num_classes}) and not ignore_index {ignore_index}; {fix}"


def is_zero_255(label_pixels: Sequence[int] | np.ndarray, ignored: int, ignore_index: int) -> bool:
    """Whether one mask looks like a 0/255 binary mask read without ``binary``: 255 is
    ``ignore_index``, some pixels hold it, and no counted pixel holds a label above 0
    (``label_pixels[c]``: the mask's pixels of label c, ignored ones excluded)."""
    return ignore_index == 255 and ignored > 0 and not np.asarray(label_pixels)[1:].any()


def has_void_beside_labels(label_pixels: Sequence[int] | np.ndarray, ignored: int) -> bool:
    """Whether one mask holds ignored pixels beside labels above 0 (VOC's void borders around objects)."""
    return ignored > 0 and bool(np.asarray(label_pixels)[1:].any())


def binary_masks_hint(flagged: Sequence[str], checked: int, option: str, void_beside_labels: bool = False) -> str | None:
    """The warning for masks :func:`is_zero_255` flagged, else None.

    Their whole foreground is ignored, so the model learns (and the score covers) background
    alone there, and a score can read a perfect 1.0. A dataset may mix them with masks of 0/1
    (1-bit PNGs beside 8-bit 0/255 ones), so masks are judged one by one. Where other masks hold
    255 beside real labels (``void_beside_labels``: :func:`has_void_beside_labels` of any mask),
    255 is a void label there (VOC), and a flagged mask is one whose only object is void: no
    warning. ``option`` is how the caller's user sets binary (``--binary``, ``data.options.binary: true``).
    """
    if not flagged or void_beside_labels:
        return None
    one = len(flagged) == 1
    if one:
        which = f"the mask checked ({flagged[0]}) holds" if checked == 1 else f"1 of the {checked} masks checked ({flagged[0]}) holds"
    else:
        which = f"{'all' if len(flagged) == checked else len(flagged)} {'' if len(flagged) == checked else 'of the '}{checked} masks checked (e.g. {flagged[0]}) hold"
    return (f"{which} only 0 and 255, and 255 is ignore_index, so {'its' if one else 'their'} foreground is left out of training "
            f"and scoring: if 255 marks the foreground (0/255 masks), set {option}, which reads 255 as class 1")


def label_hints(
    histogram: np.ndarray,
    num_classes: int | None,
    ignore_index: int,
    binary: bool,
    classes: Sequence[str] | None = None,
    zero_255: tuple[Sequence[str], int] | None = None,
    void_beside_labels: bool = False,
) -> list[str]:
    """Advice on label values that usually end in a NaN or meaningless mIoU.

    ``histogram[v]`` is the number of pixels with value v over the masks checked; ``zero_255``:
    the masks :func:`is_zero_255` flagged among how many (default: the histogram judged as one mask).
    """
    hints: list[str] = []
    present = set(np.flatnonzero(histogram).tolist())
    if zero_255 is None:
        ignored = int(histogram[ignore_index]) if 0 <= ignore_index < len(histogram) else 0
        labels_only = np.array(histogram, dtype=np.int64)
        if ignored:
            labels_only[ignore_index] = 0
        zero_255 = (["the masks"] if is_zero_255(labels_only, ignored, ignore_index) else [], 1)
    hint = None if binary else binary_masks_hint(zero_255[0], zero_255[1], "binary=True (--binary on the command line)",
                                                 void_beside_labels)
    if hint:
        hints.append(hint)
    labels = present - {ignore_index}
    if num_classes is not None and labels:
        top = max(labels)
        if top == num_classes and 0 in labels and len(labels) >= 2:
            hints.append(
                f"values run up to {num_classes} = num_classes: if 0 marks unlabelled pixels and the classes are "
                f"1..{num_classes}, set reduce_zero_label=True (0 -> ignore_index, v -> v-1); "
                f"if 0 is a real class, set num_classes={num_classes + 1}"
            )
        missing = [c for c in range(num_classes) if c not in labels]
        if missing:
            names = [f"{c} ({classes[c]})" if classes and c < len(classes) else str(c) for c in missing]
            hints.append(
                f"class{'es' if len(missing) > 1 else ''} {', '.join(names)} ha{'ve' if len(missing) > 1 else 's'} "
                f"no pixels here: {'their' if len(missing) > 1 else 'its'} IoU is NaN where prediction and ground truth "
                f"both lack {'them' if len(missing) > 1 else 'it'}, and mIoU leaves {'them' if len(missing) > 1 else 'it'} out"
            )
    if num_classes is None and labels and 0 not in labels:
        hints.append(
            "no pixel is 0: if the classes are 1..K with nothing as background, set reduce_zero_label=True "
            "or check that 0 is not meant as the unlabelled value"
        )
    return hints


def _color_items(class_colors: Any) -> list[tuple[int, Any]]:
    """``(class index, colour)`` pairs of ``class_colors``: a list of colours in class order, or a
    mapping from class index (an int, or a string of one: YAML and JSON keys) to colour."""
    shape = ("class_colors is a list of colours in class order ([[0, 0, 0], [255, 0, 0]]) or a mapping from "
             "class index to colour ({0: [0, 0, 0], 1: [255, 0, 0]})")
    if isinstance(class_colors, Mapping):
        items = []
        for key, color in class_colors.items():
            try:
                index = int(key) if not isinstance(key, (bool, float)) else None
            except (TypeError, ValueError):
                index = None
            if index is None or index < 0:
                raise SegkitError(f"class_colors has the key {key!r}; {shape}, keyed by index, not by name")
            items.append((index, color))
        return items
    if isinstance(class_colors, (str, bytes)) or not isinstance(class_colors, Sequence):
        raise SegkitError(f"class_colors is {class_colors!r}; {shape}")
    return list(enumerate(class_colors))


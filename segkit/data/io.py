"""Reading image files: headers (cheap) and pixels, and scaling pixels to float32 in [0, 1].

Images are read with tifffile for ``.tif``/``.tiff`` (keeps 16-bit and multi-channel data; Pillow
would reduce a 16-bit RGB TIFF to 8 bits), with imagecodecs' libpng (or OpenCV where imagecodecs
is missing) for the PNGs it decodes to the same pixels as Pillow and faster (8-bit grayscale or
RGB and 16-bit grayscale; :func:`_read_png_fast`), and with Pillow for everything else (palette,
alpha, low bit depths, JPEG, ...). Every read error becomes a ``SegkitError`` that names the file.
:func:`read_grey_png` reads a grayscale PNG with the least Python, for threads that decode whole
folders.

Intensity scaling (``to_unit_float``), the first half of segkit's normalisation:

- ``"auto"`` (default): 8-bit images are divided by 255; anything else (16-bit, 32-bit integer,
  float) is scaled per image and per channel by percentiles: the ``percentiles[0]``-th percentile
  maps to 0, the ``percentiles[1]``-th to 1, and values outside are clipped (defaults (1, 99.8),
  the microscopy convention of CSBDeep/StarDist). Per-image scaling makes 16-bit microscopy with
  varying exposure comparable; use ``"dtype"`` where absolute intensity matters.
- ``"percentile"``: percentile scaling for 8-bit images too.
- ``"dtype"``: divide integers by their type's maximum (65535 for 16-bit); floats pass unchanged.

The second half, subtracting a mean and dividing by a std per channel, happens in the dataset after
augmentation (see ``segkit.data.base``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segkit.errors import SegkitError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "ImageInfo",
    "read_header",
    "read_image",
    "read_grey_png",
    "read_mask_pixels",
    "to_unit_float",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
SCALINGS = ("auto", "percentile", "dtype")

# Pillow modes read as one channel; every other mode is read as RGB (alpha dropped, palette
# expanded, CMYK/YCbCr converted).
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: size, channel count, and whether it is a palette image."""

    height: int
    width: int
    channels: int
    palette: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


# Pillow refuses an image of more than twice Image.MAX_IMAGE_PIXELS (179 M pixels by default), its
# guard against decompression bombs, and warns above it. segkit reads its users' own data, where a
# 13500 x 13500 JPEG slide is a real image (predict --tile reads it, then predicts tile by tile):
# the guard is raised to 2**29 (a refusal above 2**30 pixels, 3 GiB as RGB) where it is still
# Pillow's default: an application's own setting (stricter, or None) is left alone.
_PIL_MAX_PIXELS = 2**29
if Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3):
    Image.MAX_IMAGE_PIXELS = _PIL_MAX_PIXELS


def _unreadable(path: Path, kind: str, err: Exception) -> SegkitError:
    if isinstance(err, Image.DecompressionBombError):
        return SegkitError(f"{kind} {path} claims more pixels than segkit reads with Pillow ({err}); if it is genuine, save it as "
                           "a TIFF, which segkit reads as a memory map (segkit predict --tile), or raise PIL.Image.MAX_IMAGE_PIXELS; "
                           "else its header is corrupt")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return SegkitError(f"cannot read {kind} {path} ({reason}); replace the file with a valid one or remove it")


def _tiff_layout(axes: str, shape: tuple[int, ...], path: Path, kind: str) -> str:
    """'yx', 'yxc' or 'cyx' for the 2-D layouts segkit reads; a SegkitError for stacks."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        if axes.endswith("S") or (axes[-1] not in "XY" and shape[-1] <= 4):
            return "yxc"
        if axes[0] in "SCQI" and shape[0] <= 16:
            return "cyx"
    raise SegkitError(
        f"{kind} {path} is a TIFF with shape {tuple(shape)} (axes {axes}); "
        "segkit reads 2-D images (YX, YXC or CYX): save one image per file"
    )


def _tiff_alpha(series: Any, layout: str) -> list[int]:
    """The channel indices of a TIFF's alpha samples (ExtraSamples 1 or 2), which segkit drops as
    it drops a PNG's alpha; other extra samples (a fourth band) are kept."""
    page = series.keyframe
    extras = tuple(getattr(page, "extrasamples", ()) or ())
    if layout == "yx" or "S" not in series.axes or not extras:
        return []
    colour = int(page.samplesperpixel) - len(extras)
    return [colour + i for i, extra in enumerate(extras) if int(extra) in (1, 2)]


def read_header(path: str | os.PathLike, kind: str = "image") -> ImageInfo:
    """Size and channels from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
                layout = _tiff_layout(axes, shape, path, kind)
                alpha = len(_tiff_alpha(series, layout))
            if layout == "yx":
                return ImageInfo(shape[0], shape[1], 1)
            if layout == "yxc":
                return ImageInfo(shape[0], shape[1], shape[2] - alpha)
            return ImageInfo(shape[1], shape[2], shape[0] - alpha)
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
        return ImageInfo(height, width, 1 if mode in _GRAY_MODES else 3, palette=mode in ("P", "PA"))
    except SegkitError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, IndexError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(path, kind, err) from err


def _read_tiff(path: Path, kind: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        layout = _tiff_layout(series.axes, tuple(series.shape), path, kind)
        alpha = _tiff_alpha(series, layout)
        arr = series.asarray()
    if layout == "yx":
        return arr
    if layout == "cyx":
        arr = np.moveaxis(arr, 0, -1)
    if alpha:
        arr = np.delete(arr, alpha, axis=2)
    return np.ascontiguousarray(arr)


def _read_pil(path: Path, keep_palette: bool) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return pil_pixels(im, keep_palette)


def pil_pixels(im: Image.Image, keep_palette: bool = False) -> np.ndarray:
    """A Pillow image's pixels as segkit reads them: grey (H, W) in its own dtype, colour modes as
    RGB (H, W, 3) (alpha dropped, CMYK converted); with ``keep_palette`` (masks) palette indices
    and 1-bit 0/1, else a palette expanded to RGB and 1-bit 0/255."""
    mode = im.mode
    if mode in ("P", "PA") and keep_palette:
        return np.array(im.convert("P") if mode == "PA" else im)
    if mode == "1" and keep_palette:
        return np.array(im)  # bool: a 1-bit mask holds 0/1 (as a 1-bit TIFF's), not Pillow's 0/255
    if mode == "1" or mode == "LA":
        im = im.convert("L")
    elif mode.startswith("I;16"):
        return np.array(im).astype(np.uint16, copy=False)
    elif mode not in _GRAY_MODES and mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR (bit depth, colour type) the fast decoders take: 8-bit grayscale, 8-bit RGB and 16-bit
# grayscale, where they give Pillow's pixels, and 16-bit RGB, which they keep at 16 bits (Pillow
# keeps the high byte only: 12-bit data 0-4095 became 0-15), as a 16-bit RGB TIFF is read. Not
# palette (both expand it), alpha, or 1/2/4-bit grayscale (Pillow scales those to 0-255; left to it).
_FAST_PNG = {(8, 0): 2, (16, 0): 2, (8, 2): 3, (16, 2): 3}  # -> the array's ndim (2) or channel count (3)
_opencv: Any = None
_codecs: Any = None


def _cv2() -> Any:
    """OpenCV (a dependency of albumentations), or False where it is missing: Pillow decodes everything."""
    global _opencv
    if _opencv is None:
        try:
            import cv2
        except ImportError:
            cv2 = False
        _opencv = cv2
    return _opencv


def _imagecodecs() -> Any:
    """imagecodecs (a dependency, for compressed TIFFs) when its PNG decoder is there, else False."""
    global _codecs
    if _codecs is None:
        try:
            import imagecodecs

            _codecs = imagecodecs if imagecodecs.PNG.available else False
        except (ImportError, AttributeError):
            _codecs = False
    return _codecs


def _read_png_fast(path: str | os.PathLike, grey_only: bool = False) -> np.ndarray | None:
    """The pixels Pillow would give for a PNG that a faster decoder decodes alike (a 16-bit RGB PNG
    at its 16 bits, which Pillow cuts to 8), else None (Pillow reads it).

    The file is read whole and its IHDR checked; then imagecodecs' libpng decodes the bytes (0.6-0.8x
    the time of OpenCV's ``imdecode`` on 512x512 masks here, both releasing the GIL),
    or OpenCV where imagecodecs is missing. Anything unexpected (no decoder, another colour type,
    or only grey wanted and this is RGB, an unreadable path, a broken file, an extra alpha channel
    from a tRNS chunk) returns None, so Pillow reads the file and a broken one gets Pillow's error
    message. ``tests/test_decoders_agree.py`` checks the decoders on every image and mask kind the
    README lists.
    """
    codecs, cv2 = _imagecodecs(), _cv2()
    if not codecs and not cv2:
        return None
    try:
        # One unbuffered read, which releases the GIL (numpy's fromfile does not).
        with open(path, "rb", buffering=0) as file:
            data = file.read()
    except OSError:
        return None
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE:
        return None
    layout = _FAST_PNG.get((data[24], data[25]))
    if layout is None or (grey_only and layout != 2):
        return None
    if codecs:
        try:
            pixels = codecs.png_decode(data)  # EXIF orientation is left alone, as Pillow leaves it
        except Exception:  # imagecodecs.PngError and friends: Pillow names the problem
            return None
    else:
        try:
            # Pillow leaves an EXIF orientation tag alone (masks and annotations are drawn on the stored
            # grid), and so must OpenCV, which would otherwise rotate colour PNGs.
            flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION if layout == 3 else cv2.IMREAD_UNCHANGED
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:
            return None
    if pixels is None or (pixels.ndim != 2 if layout == 2 else pixels.shape[2:] != (3,)):
        return None
    return pixels


def read_grey_png(path: str | os.PathLike) -> np.ndarray | None:
    """An 8 or 16-bit grayscale PNG's pixels ``(H, W)`` (uint8 or uint16), or None.

    For threads decoding a folder (``segkit evaluate --pred --gt``): one unbuffered read and one
    decode that releases the GIL (:func:`_read_png_fast`), where :func:`read_mask_pixels` also
    parses the path and checks its suffix with Python. The result is exactly what Pillow gives.
    Anything else (colour, palette, alpha, 1/2/4-bit, a broken or missing file, a name not ending
    in .png) returns None without decoding: callers read that file with :func:`read_mask_pixels`
    and stop trying this on a folder that gave None. ``tests/test_decoders_agree.py`` checks every kind.
    """
    path = os.fspath(path)
    if path[-4:].lower() != ".png":
        return None
    return _read_png_fast(path, grey_only=True)


def _read_pixels(path: str | os.PathLike, kind: str) -> np.ndarray:
    # Paths stay as given (no pathlib parsing): evaluating prediction folders reads thousands of
    # files from threads that share the GIL, and a Path costs about half the Python time of the read.
    try:
        suffix = os.path.splitext(path)[1].lower()
        if suffix in _TIFF:
            arr = _read_tiff(Path(path), kind)
        elif suffix == ".png" and (fast := _read_png_fast(path)) is not None:
            arr = fast
        else:
            arr = _read_pil(Path(path), keep_palette=kind == "mask")
    except SegkitError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, IndexError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(Path(path), kind, err) from err
    if arr.dtype == np.bool_:  # 1-bit PNGs and TIFFs: images 0/255, masks 0/1
        arr = arr.astype(np.uint8) * np.uint8(255 if kind == "image" else 1)
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels as (H, W, C) in the file's own dtype (uint8, uint16, int32 or float32).

    Grayscale gives C = 1; palette, RGBA, CMYK and other colour modes give RGB (C = 3, alpha
    dropped); TIFFs keep all their channels but alpha (ExtraSamples marked as alpha).
    """
    arr = _read_pixels(path, "image")
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_mask_pixels(path: str | os.PathLike) -> np.ndarray:
    """Mask pixels as stored: (H, W) integers (palette images give their palette indices, 1-bit
    images 0/1, as ``numpy.array(Image.open(path))`` gives them), or (H, W, 3) for colour masks
    (alpha dropped; uint16 for a 16-bit PNG or TIFF)."""
    arr = _read_pixels(path, "mask")
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


@dataclass(frozen=True)
class UnitScale:
    """Per-channel ``(pixels - offset) / divisor`` (or ``* factor`` for 8-bit), clipped to [0, 1] if ``clip``."""

    offset: np.ndarray | None
    divisor: np.ndarray | None = None
    factor: np.float32 | None = None
    clip: bool = False

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (..., C), any part of the image the scale was computed on, as float32."""
        out = pixels.astype(np.float32)
        if self.offset is not None:
            out -= self.offset
        if self.factor is not None:
            out *= self.factor
        if self.divisor is not None:
            out /= self.divisor
        return np.clip(out, 0.0, 1.0, out=out) if self.clip else out


def scaled_by_255(dtype: np.dtype, scaling: str) -> bool:
    """Whether pixels of ``dtype`` are scaled to [0, 1] by a plain 1/255 (8-bit, no percentiles): such
    images may travel as uint8 and be scaled where the model runs (``segkit.engine.inputs.DeviceScaling``)."""
    return dtype == np.uint8 and scaling != "percentile"


def unit_scale(image: np.ndarray, scaling: str = "auto", percentiles: tuple[float, float] = (1.0, 99.8)) -> UnitScale:
    """The scaling :func:`to_unit_float` applies to ``image`` (H, W, C), computed once from the whole
    image and applicable to any part of it (striped prediction on images too big to convert at once)."""
    if scaling not in SCALINGS:
        raise SegkitError(f"scaling {scaling!r} is not one of {', '.join(SCALINGS)}; pick one of those")
    if scaled_by_255(image.dtype, scaling):
        return UnitScale(None, factor=np.float32(1.0 / 255.0))
    if scaling == "dtype":
        if np.issubdtype(image.dtype, np.integer):
            return UnitScale(None, divisor=np.float32(np.iinfo(image.dtype).max))
        return UnitScale(None)
    if image.dtype in (np.uint8, np.uint16):
        lo, hi = _integer_percentiles(image, percentiles)
    else:
        flat = image.reshape(-1, image.shape[-1]).astype(np.float32)
        lo, hi = np.percentile(flat, percentiles, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    return UnitScale(lo.astype(np.float32), divisor=span, clip=True)


def _integer_percentiles(image: np.ndarray, percentiles: tuple[float, float], rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, ``np.percentile``'s (linear) percentiles of an 8 or 16-bit (H, W, C) image, from a
    histogram counted ``rows`` rows at a time: no float copy of the image (a 20k x 20k 16-bit slide
    would need 1.6 GB a channel), and a memory-mapped one is read once, in strips."""
    channels = image.shape[-1]
    bins = 256 if image.dtype == np.uint8 else 65536
    counts = np.zeros((channels, bins), np.int64)
    for top in range(0, image.shape[0], rows):
        strip = np.asarray(image[top : top + rows]).reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(strip[:, c], minlength=bins)
    total = int(counts[0].sum())
    cumulative = np.cumsum(counts, axis=1)
    result = np.zeros((2, channels), np.float64)
    for i, p in enumerate(percentiles):
        position = p / 100.0 * (total - 1)  # the fractional rank numpy's linear method interpolates at
        below = int(np.floor(position))
        fraction = position - below
        for c in range(channels):
            value_at = np.searchsorted(cumulative[c], [below + 1, min(below + 2, total)])  # the ranks' values
            a, b = float(value_at[0]), float(value_at[1])
            result[i, c] = a + (b - a) * fraction
    return result[0], result[1]


def to_unit_float(
    image: np.ndarray, scaling: str = "auto", percentiles: tuple[float, float] = (1.0, 99.8)
) -> np.ndarray:
    """Scale (H, W, C) pixels of any dtype to float32, [0, 1] for the percentile and 8-bit paths.

    See the module docstring for the three scalings.
    """
    return unit_scale(image, scaling, percentiles)(image)


def open_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels as (H, W, C) like :func:`read_image`, but an uncompressed TIFF is memory-mapped
    (nothing decoded until rows are read), so a 20k x 20k slide costs no memory up front."""
    path = Path(path)
    if path.suffix.lower() in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                layout = _tiff_layout(series.axes, tuple(series.shape), path, "image")
                alpha = _tiff_alpha(series, layout)
            if layout != "cyx":
                mapped = tifffile.memmap(path, mode="r")
                if mapped.ndim == 2:
                    return mapped[:, :, None]
                kept = mapped.shape[2] - len(alpha)
                if alpha == list(range(kept, mapped.shape[2])):  # trailing alpha (RGBA): a view without it
                    return mapped[:, :, :kept]
        except (ValueError, OSError):  # compressed or tiled: not mappable, decode it whole
            pass
    return read_image(path)

"""imagecodecs, OpenCV and Pillow give the same pixels for every image and mask kind segkit reads.

segkit decodes the PNGs a faster decoder reads alike (8-bit grey and RGB, 16-bit grey) with
imagecodecs' libpng, or OpenCV where imagecodecs is missing, and everything else with Pillow
(segkit.data.io). Each file here is read with each fast decoder and with both switched off
(Pillow alone, segkit's reader before).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from segkit.data import io
from segkit.data.io import read_image, read_mask_pixels

RNG = np.random.default_rng(3)
H, W = 37, 53  # odd sizes: no row padding hides a stride bug


def _save(path, array, mode=None, **options):
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path, **options)
    return path


def _blobs(num_classes: int) -> np.ndarray:
    """Label regions with long runs (as real masks have), a few ignore pixels."""
    labels = np.kron(RNG.integers(0, num_classes, (5, 6)), np.ones((8, 9), np.int64))[:H, :W].astype(np.uint8)
    labels[RNG.random(labels.shape) < 0.01] = 255
    return labels


# name -> (writer, a fast decoder decodes it)
KINDS = {
    "grey8 image": (lambda p: _save(p, RNG.integers(0, 256, (H, W), dtype=np.uint8)), True),
    "rgb8 image": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)), True),
    "grey16 microscopy": (lambda p: _save(p, RNG.integers(0, 65536, (H, W)).astype(np.uint16)), True),
    "index mask": (lambda p: _save(p, _blobs(6)), True),
    "binary 0/255 mask": (lambda p: _save(p, (_blobs(2) > 0).astype(np.uint8) * 255), True),
    "16-bit label mask": (lambda p: _save(p, (_blobs(6).astype(np.uint16) * 1000)), True),
    "rgb colour mask": (lambda p: _save(p, np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], np.uint8)[_blobs(3) % 3]), True),
    "palette mask": (lambda p: _palette(p), False),
    "rgba image": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 4), dtype=np.uint8), "RGBA"), False),
    "grey+alpha image": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 2), dtype=np.uint8), "LA"), False),
    "1-bit image": (lambda p: _save(p, RNG.integers(0, 2, (H, W)).astype(bool), "1"), False),
    "2-bit grey": (lambda p: _low_bit_grey(p, 2), False),
    "4-bit grey": (lambda p: _low_bit_grey(p, 4), False),
    "grey with tRNS": (lambda p: _save(p, RNG.integers(0, 256, (H, W), dtype=np.uint8), transparency=7), None),
    "rgb with tRNS": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), transparency=(1, 2, 3)), None),
    # A camera's orientation tag: both readers give the stored grid, the one annotations are drawn on.
    "rgb8 with EXIF rotation": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), exif=_exif(6)), True),
    "rgb8 with EXIF 180": (lambda p: _save(p, RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), exif=_exif(3)), True),
    "grey8 with EXIF rotation": (lambda p: _save(p, RNG.integers(0, 256, (H, W), dtype=np.uint8), exif=_exif(6)), True),
}


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 3 = 180 degrees, 6 = 90 degrees clockwise
    return exif.tobytes()


def _low_bit_grey(path, depth):
    """A grayscale PNG of 2 or 4 bits a pixel, written by hand (Pillow writes only 1 and 8-bit grey)."""
    values = RNG.integers(0, 1 << depth, (H, W)).astype(np.uint8)
    per_byte = 8 // depth
    padded = np.zeros((H, -(-W // per_byte) * per_byte), np.uint8)
    padded[:, :W] = values
    packed = np.zeros((H, padded.shape[1] // per_byte), np.uint8)
    for k in range(per_byte):  # the first pixel in the high bits
        packed |= padded[:, k::per_byte] << (8 - depth * (k + 1))
    raw = b"".join(b"\0" + row.tobytes() for row in packed)  # filter 0 (none) on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", W, H, depth, 0, 0, 0, 0)
    path.write_bytes(io._PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _palette(path):
    image = Image.fromarray(_blobs(4) % 4, mode="P")
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 756)
    image.save(path)
    return path


def _only(monkeypatch, decoder: str) -> None:
    """Let segkit's PNG reader use ``decoder`` alone ("imagecodecs", "opencv", or "pillow": neither fast one)."""
    if decoder != "imagecodecs":
        monkeypatch.setattr(io, "_codecs", False)
    if decoder != "opencv":
        monkeypatch.setattr(io, "_opencv", False)


FAST = ["imagecodecs", "opencv"]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reader", [read_image, read_mask_pixels], ids=["image", "mask"])
@pytest.mark.parametrize("decoder", FAST)
def test_fast_decoders_and_pillow_read_the_same_pixels(tmp_path, monkeypatch, kind, reader, decoder):
    write, by_fast = KINDS[kind]
    path = write(tmp_path / "file.png")
    assert io._imagecodecs() and io._cv2()  # both are dependencies: the test covers each
    _only(monkeypatch, decoder)
    if by_fast is not None:  # None: either decoder may take it, the pixels must agree
        assert (io._read_png_fast(path) is not None) == by_fast
    fast = reader(path)
    _only(monkeypatch, "pillow")
    slow = reader(path)
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    assert fast.shape[:2] == (H, W)  # never rotated (an EXIF tag), as the header check and the masks assume
    np.testing.assert_array_equal(fast, slow)


GREY = {"grey8 image", "grey16 microscopy", "index mask", "binary 0/255 mask", "16-bit label mask", "grey8 with EXIF rotation"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("decoder", FAST)
def test_the_direct_grey_read_gives_pillows_pixels_or_nothing(tmp_path, monkeypatch, kind, decoder):
    """read_grey_png (evaluate --pred/--gt) takes every 8 or 16-bit grayscale PNG, with the pixels
    Pillow gives, and leaves every other kind to the checked read."""
    write, by_fast = KINDS[kind]
    path = write(tmp_path / "file.png")
    _only(monkeypatch, decoder)
    direct = io.read_grey_png(path)
    if kind in GREY or by_fast is not None:  # None: either way (grey with tRNS: both ignore it), the pixels agree
        assert (direct is not None) == (kind in GREY)
    if direct is not None:
        _only(monkeypatch, "pillow")
        slow = read_mask_pixels(path)
        assert direct.dtype == slow.dtype and direct.shape == slow.shape
        np.testing.assert_array_equal(direct, slow)


@pytest.mark.parametrize("decoder", FAST)
def test_the_direct_grey_read_leaves_broken_and_other_files_alone(tmp_path, monkeypatch, decoder):
    _only(monkeypatch, decoder)
    good = _save(tmp_path / "good.png", RNG.integers(0, 256, (H, W), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.png").write_bytes(io._PNG_SIGNATURE + b" garbage")
    _save(tmp_path / "grey.bmp", RNG.integers(0, 256, (H, W), dtype=np.uint8))
    for name in ("cut.png", "garbage.png", "grey.bmp", "missing.png"):
        assert io.read_grey_png(tmp_path / name) is None, name


@pytest.mark.parametrize("decoder", FAST)
def test_broken_pngs_get_pillows_error_naming_the_file(tmp_path, monkeypatch, decoder):
    from segkit import SegkitError

    _only(monkeypatch, decoder)
    good = _save(tmp_path / "good.png", RNG.integers(0, 256, (H, W), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "header.png").write_bytes(good[:40])
    for name in ("cut.png", "header.png"):
        assert io._read_png_fast(tmp_path / name) is None
        with pytest.raises(SegkitError, match=name):
            read_image(tmp_path / name)


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits", "zstd"])
def test_compressed_tiffs_read_as_written(tmp_path, compression):
    """LZW (the commonest microscopy TIFF compression) and friends decode through imagecodecs, a dependency."""
    import tifffile

    written = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, written, compression=compression)
    np.testing.assert_array_equal(read_image(path)[..., 0], written)


@pytest.mark.parametrize("planar", [False, True], ids=["contiguous", "planar"])
def test_tiff_alpha_is_dropped_as_a_pngs_is_and_a_fourth_band_kept(tmp_path, planar):
    """An RGBA TIFF reads as Pillow reads an RGBA PNG (RGB, alpha dropped), in the header, the
    decoded image, the memory-mapped one (striped prediction) and a colour mask; a fourth band that
    is not alpha (RGB + near infrared) keeps its channel."""
    import tifffile

    from segkit.data.io import open_image, read_header

    rgba = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    layout = {"planarconfig": "separate"} if planar else {}
    stored = np.moveaxis(rgba, -1, 0) if planar else rgba
    tifffile.imwrite(tmp_path / "rgba.tif", stored, photometric="rgb", extrasamples=["unassalpha"], **layout)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    png = read_image(tmp_path / "rgba.png")
    assert png.shape == (H, W, 3)
    for read in (read_image, open_image):
        np.testing.assert_array_equal(read(tmp_path / "rgba.tif"), png)
    np.testing.assert_array_equal(read_mask_pixels(tmp_path / "rgba.tif"), png)
    assert read_header(tmp_path / "rgba.tif").channels == 3

    tifffile.imwrite(tmp_path / "nir.tif", stored, photometric="rgb", extrasamples=["unspecified"], **layout)
    assert read_header(tmp_path / "nir.tif").channels == 4
    for read in (read_image, open_image):
        np.testing.assert_array_equal(read(tmp_path / "nir.tif"), rgba)


def test_grey_tiff_with_alpha_reads_as_grey(tmp_path):
    import tifffile

    grey_alpha = RNG.integers(0, 65536, (H, W, 2)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack", extrasamples=["assocalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "ga.tif"), grey_alpha[..., :1])
    np.testing.assert_array_equal(read_mask_pixels(tmp_path / "ga.tif"), grey_alpha[..., 0])


@pytest.mark.parametrize("decoder", FAST)
def test_16_bit_rgb_pngs_keep_their_16_bits(tmp_path, monkeypatch, decoder):
    """Pillow keeps the high byte of a 16-bit RGB PNG (12-bit data 0-4095 became 0-15); segkit reads
    all 16 bits, as it reads the same pixels from a TIFF."""
    import imagecodecs
    import tifffile

    written = RNG.integers(0, 4096, (H, W, 3)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(imagecodecs.png_encode(written))
    tifffile.imwrite(tmp_path / "deep.tif", written, photometric="rgb")
    _only(monkeypatch, decoder)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), written)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), read_image(tmp_path / "deep.tif"))


def test_16_bit_colour_masks_decode_by_their_high_bytes(tmp_path):
    """A colour mask saved at 16 bits (128 * 257 for 128) matches the 8-bit class colours, as it did
    when Pillow cut it to 8 bits; a header claiming a huge image is a SegkitError naming the file."""
    import imagecodecs

    from segkit import SegkitError
    from segkit.data.masks import MaskDecoder

    labels = _blobs(3) % 3
    colours = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 255]], np.uint16)[labels] * 257
    (tmp_path / "colour16.png").write_bytes(imagecodecs.png_encode(colours))
    decoded = MaskDecoder(class_colors=[[0, 0, 0], [128, 0, 0], [0, 128, 255]]).decode(read_mask_pixels(tmp_path / "colour16.png"), "m")
    np.testing.assert_array_equal(decoded, labels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = io._PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 3, 0, 0, 0)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    for read in (read_image, read_mask_pixels):
        with pytest.raises(SegkitError, match=r"bomb.png claims more pixels than segkit reads with Pillow .*save it as a TIFF"):
            read(tmp_path / "bomb.png")


def test_a_genuine_slide_past_pillow_s_default_bomb_guard_is_read(tmp_path):
    """Pillow refuses more than 2 x 89 M pixels by default; a 13500 x 13500 JPEG export (182 M) is a
    real image to predict with --tile, and was refused as "replace the file with a valid one"."""
    from PIL import Image

    slide = np.zeros((13500, 13500), np.uint8)
    slide[::50] = 200
    Image.fromarray(slide).save(tmp_path / "slide.jpg", quality=80)
    del slide
    assert Image.MAX_IMAGE_PIXELS >= 2**29
    assert read_image(tmp_path / "slide.jpg").shape == (13500, 13500, 1)

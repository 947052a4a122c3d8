"""Striped prediction (`segkit predict --tile`): the labels of a hand-written whole-image sliding window, in bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.engine import stripes
from segkit.engine.inference import gaussian_weights, load_model, window_starts
from segkit.engine.inputs import DeviceScaling, ImageFiles, InferenceItems, InputPipeline
from segkit.engine.predict import predict_folder
from tests.test_predict_export import write_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", fit=True)


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).random((h // 32 + 2, w // 32 + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)


def whole_image_reference(ckpt: Path, image: np.ndarray, tile: int, overlap: float) -> np.ndarray:
    """Labels of a Gaussian-blended sliding window over the whole standardised image, written out
    by hand: every window alone through the model, full (K, H, W) sums, then argmax."""
    model, _ = load_model(ckpt)
    # 8-bit standardisation as documented (segkit.engine.inputs.DeviceScaling): x / (255 std) - mean / std,
    # the checkpoint's mean 0.5, std 0.25, as one float32 multiply-add
    x = torch.addcmul(torch.tensor(-0.5 / 0.25), torch.from_numpy(image).float(), torch.tensor(1 / (255 * 0.25)))
    h, w = image.shape
    step = int(round(tile * (1 - overlap), 6))  # overlaps here give whole steps
    g = gaussian_weights((tile, tile))
    num, den = torch.zeros(3, h, w), torch.zeros(h, w)
    with torch.no_grad():
        for y in window_starts(h, tile, step):
            for x0 in window_starts(w, tile, step):
                logits = model(x[None, None, y : y + tile, x0 : x0 + tile])[0]
                num[:, y : y + tile, x0 : x0 + tile] += logits * g
                den[y : y + tile, x0 : x0 + tile] += g
    return (num / den).argmax(0).numpy()


def test_striped_prediction_equals_the_whole_image_sliding_window_on_1k(tmp_path, ckpt):
    image = (_smooth(1024, 1024) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "big.png")
    predict_folder(ckpt, tmp_path / "in", tmp_path / "out", device="cpu", tile=256, overlap=0.25, batch_size=1, overlays=False)
    labels = np.asarray(Image.open(tmp_path / "out" / "masks" / "big.png"))
    reference = whole_image_reference(ckpt, image, 256, 0.25)
    assert len(np.unique(reference)) > 1  # the comparison is not vacuous
    np.testing.assert_array_equal(labels, reference)


def test_memory_mapped_tiff_and_batched_windows_give_the_same_labels(tmp_path, ckpt):
    import tifffile

    image = (_smooth(300, 420, seed=1) * 255).astype(np.uint8)
    (tmp_path / "png").mkdir()
    (tmp_path / "tif").mkdir()
    Image.fromarray(image).save(tmp_path / "png" / "a.png")
    tifffile.imwrite(tmp_path / "tif" / "a.tif", image)  # uncompressed: memory-mapped
    from segkit.data.io import open_image

    assert isinstance(open_image(tmp_path / "tif" / "a.tif"), np.memmap)
    for source in ("png", "tif"):
        predict_folder(ckpt, tmp_path / source, tmp_path / f"out_{source}", device="cpu", tile=128, batch_size=5, overlays=False)
    png = np.asarray(Image.open(tmp_path / "out_png" / "masks" / "a.png"))
    tif = np.asarray(Image.open(tmp_path / "out_tif" / "masks" / "a.png"))
    np.testing.assert_array_equal(png, tif)
    reference = whole_image_reference(ckpt, image, 128, 0.25)
    assert (png == reference).mean() > 0.9999  # batches of 5 windows: float noise at most on ties


def test_row_reader_gives_the_whole_image_pipelines_values_for_16_bit_percentiles(tmp_path):
    import tifffile

    image = (np.random.default_rng(2).random((70, 90)) * 50000 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", image)
    files = ImageFiles([tmp_path / "a.tif"], 1, mean=0.3, std=0.2)
    whole = DeviceScaling.of(files)(InferenceItems(files, InputPipeline([]), masks=False)[0].image[None])[0]
    reader = stripes.RowReader(tmp_path / "a.tif", files, torch.device("cpu"))
    torch.testing.assert_close(torch.cat([reader(0, 30), reader(30, 70)], dim=1), whole, rtol=0, atol=0)


def test_big_overlays_are_subsampled(tmp_path, ckpt, monkeypatch):
    monkeypatch.setattr(stripes, "OVERLAY_MAX_SIDE", 100)
    image = (_smooth(250, 330, seed=3) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    predict_folder(ckpt, tmp_path / "a.png", tmp_path / "out", device="cpu", tile=128)
    assert Image.open(tmp_path / "out" / "masks" / "a.png").size == (330, 250)
    assert Image.open(tmp_path / "out" / "overlays" / "a.png").size == (83, 63)  # every 4th pixel

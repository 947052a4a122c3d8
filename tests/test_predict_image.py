"""predict_image (one image from Python, prepared as the checkpoint's config says) equals ``segkit
predict``'s mask for the same pixels, whatever form they come in; predict_logits leaves a model's
training mode alone and names what it takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _model_helpers import fit_to_intensity_thirds
from PIL import Image

from segkit import SegkitError
from segkit.config import config_from_dict, to_dict
from segkit.data.io import read_image
from segkit.engine.builders import build_model_from_config
from segkit.engine.checkpoint import save_checkpoint
from segkit.engine.inference import load_model, predict_logits
from segkit.engine.predict import predict_folder, predict_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny U-Net whose predictions depend on the pixels (a few steps towards 'class = intensity third')."""
    cfg = config_from_dict({"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                                      "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}},
                            "data": {"kind": "folder", "root": "unused"}})
    torch.manual_seed(0)
    model = fit_to_intensity_thirds(build_model_from_config(cfg))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return path


def test_every_form_of_an_image_gives_segkit_predicts_mask(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    grey = (np.kron(rng.integers(0, 256, (6, 9)), np.ones((31, 27)))[:181, :217]).astype(np.uint8)
    Image.fromarray(grey).save(images / "grey.png")
    deep = (grey.astype(np.uint16) * 16 + rng.integers(0, 16, grey.shape)).astype(np.uint16)  # 12-bit microscopy
    Image.fromarray(deep).save(images / "deep.png")
    tifffile.imwrite(images / "deeptiff.tif", deep)
    for options in ({}, {"tile": 64, "tta": True}):
        out = tmp_path / f"out{len(options)}"
        predict_folder(checkpoint, images, out, device="cpu", overlays=False, **options)
        model, cfg = load_model(checkpoint)
        for name in ("grey.png", "deep.png", "deeptiff.tif"):
            expected = np.asarray(Image.open(out / "masks" / f"{Path(name).stem}.png"))
            assert len(np.unique(expected)) > 1  # not a vacuous comparison
            forms = [images / name, str(images / name), read_image(images / name), read_image(images / name)[..., 0]]
            if name.endswith(".png"):
                forms.append(Image.open(images / name))
            for form in forms:
                np.testing.assert_array_equal(predict_image(model, cfg, form, **options), expected)
        logits = predict_image(model, cfg, grey, logits=True)
        assert logits.shape == (3, 181, 217) and logits.dtype == torch.float32


def test_predict_image_names_what_it_takes(checkpoint, tmp_path):
    model, cfg = load_model(checkpoint)
    with pytest.raises(SegkitError, match="is not a file"):
        predict_image(model, cfg, tmp_path / "missing.png")
    with pytest.raises(SegkitError, match="file path, a numpy array or a Pillow image"):
        predict_image(model, cfg, [[1, 2], [3, 4]])
    with pytest.raises(SegkitError, match=r"pixels \(H, W\) or \(H, W, C\)"):
        predict_image(model, cfg, np.zeros((2, 3, 4, 5)))


def test_predict_logits_keeps_a_training_model_untouched_and_names_its_input(checkpoint):
    model, _ = load_model(checkpoint)
    images = torch.randn(2, 1, 40, 56, generator=torch.Generator().manual_seed(1))
    expected = predict_logits(model, images)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(predict_logits(model, images), expected)  # eval-mode logits: the running statistics
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    torch.testing.assert_close(predict_logits(model, images.double()), expected)  # cast to the model's dtype
    torch.testing.assert_close(predict_logits(model, images, tta="hv"), predict_logits(model, images, tta=["hv"]))
    torch.testing.assert_close(predict_logits(model, images, tile=np.int64(32)), predict_logits(model, images, tile=32))
    expected.mul_(2)  # an ordinary tensor, not an inference-mode one
    for bad in (images.numpy(), (images * 255).to(torch.uint8), images[0]):
        with pytest.raises(SegkitError, match="predict_logits takes a float tensor"):
            predict_logits(model, bad)
    for tile in (1.5, "64", [32]):
        with pytest.raises(SegkitError, match="tile must be a positive integer"):
            predict_logits(model, images, tile=tile)


def test_a_pillow_image_of_a_16_bit_rgb_png_keeps_its_bits(checkpoint, tmp_path):
    """Pillow opens a 16-bit RGB PNG as 8-bit, its high byte only (12-bit data became 0-15, all
    background): the image's own file is read instead, so the labels are segkit predict's."""
    import imagecodecs

    cfg_rgb = {"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 3,
                         "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}}, "data": {"kind": "folder", "root": "unused"}}
    torch.manual_seed(1)
    path = tmp_path / "rgb.pt"
    save_checkpoint({"model": build_model_from_config(config_from_dict(cfg_rgb)).state_dict(), "config": cfg_rgb, "epoch": 1}, path)
    model, cfg = load_model(path)
    pixels = np.random.default_rng(2).integers(0, 4096, (40, 56, 3)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(imagecodecs.png_encode(pixels))
    with Image.open(tmp_path / "deep.png") as opened:
        assert np.asarray(opened).max() <= 15  # what Pillow gives
        torch.testing.assert_close(predict_image(model, cfg, opened, logits=True), predict_image(model, cfg, pixels, logits=True))


def test_a_read_only_array_is_taken_without_torchs_warning(checkpoint, tmp_path):
    """np.asarray(Image.open(...)) is read-only: torch warned about sharing memory it may not write."""
    import warnings

    pixels = np.asarray(Image.fromarray(np.arange(40 * 56, dtype=np.uint8).reshape(40, 56)))
    assert not pixels.flags.writeable
    model, cfg = load_model(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = predict_image(model, cfg, pixels)
    np.testing.assert_array_equal(labels, predict_image(model, cfg, pixels.copy()))

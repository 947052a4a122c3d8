"""timm encoders where timm itself is lenient or silent: a weights file of another model, weights
trained with other statistics than ImageNet's, stems that hide the image's convolution, inputs a
model cannot take, and options a model cannot honour."""

from __future__ import annotations

import pytest
import torch

import segkit
from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine.builders import resolve_normalisation

timm = pytest.importorskip("timm")


def test_a_weights_file_of_another_model_is_refused_and_the_right_one_loads(tmp_path):
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(SegkitError, match=r"resnet18\.pth holds no values for \d+ of the \d+ weight tensors of timm's resnet34 .*"
                                          r"which would stay random"):
        segkit.create_encoder("tu-resnet34", weights=other)
    deeper = tmp_path / "resnet34.pth"  # every tensor of resnet18 is there, and a third block per stage more
    torch.save(timm.create_model("resnet34").state_dict(), deeper)
    with pytest.raises(SegkitError, match=r"resnet34\.pth holds tensors that timm's resnet18 does not have \(layer1\.2\."):
        segkit.create_encoder("tu-resnet18", weights=deeper)
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3, 3)}, junk)
    with pytest.raises(SegkitError, match="junk.pth holds no values for"):
        segkit.create_encoder("tu-resnet18", weights=junk)
    reference = timm.create_model("resnet18", features_only=True).eval()
    torch.save(timm.create_model("resnet18").state_dict() | {k: v for k, v in reference.state_dict().items()}, other)
    encoder = segkit.create_encoder("tu-resnet18", weights=other).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(encoder(x), reference(x)):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenetv3_small_050", "hrnet_w18_small"])
def test_a_weights_file_of_the_whole_timm_model_loads_where_features_only_drops_layers(tmp_path, arch, caplog):
    """timm's own checkpoint of these families holds layers features_only drops (EfficientNet's
    conv_head and bn2, HRNet's head), beside the classifier: they are the model's own, not another
    model's, and the encoder then equals timm's features_only model loaded from the same file.
    timm's "Unexpected keys" line is judged, not printed."""
    path = tmp_path / f"{arch}.pth"
    torch.save(timm.create_model(arch).state_dict(), path)
    encoder = segkit.create_encoder(f"tu-{arch}", weights=path).eval()
    assert "Unexpected keys" not in caplog.text
    reference = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(encoder(x)[-len(reference.feature_info):], reference(x)):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("encoder", "weights", "mean"), [
    ("tu-xception41", "imagenet", [0.5, 0.5, 0.5]),  # Inception-style weights: (x - 0.5) / 0.5
    ("tu-resnet18", "a1_in1k", [0.485, 0.456, 0.406]),
    ("tu-resnet18", "resnet18.a1_in1k", [0.485, 0.456, 0.406]),  # the tag in full: a name, not a file
])
def test_named_timm_weights_bring_their_own_statistics(tmp_path, encoder, weights, mean):
    cfg = config_from_dict({"model": {"arch": "unet", "encoder": encoder, "encoder_weights": weights, "num_classes": 2},
                            "data": {"kind": "folder", "root": str(tmp_path)}})
    resolve_normalisation(cfg)  # no download: the statistics are timm's listed ones
    assert list(cfg.data.options.mean) == pytest.approx(mean)
    grey = config_from_dict({"model": {"arch": "unet", "encoder": encoder, "encoder_weights": weights, "num_classes": 2,
                                       "in_channels": 1}, "data": {"kind": "folder", "root": str(tmp_path)}})
    resolve_normalisation(grey)
    assert list(grey.data.options.mean) == pytest.approx([sum(mean) / 3])


def test_tresnet_takes_the_channels_it_was_asked_for():
    encoder = segkit.create_encoder("tu-tresnet_m", in_channels=1)  # its first convolution follows a space-to-depth stem
    assert encoder.in_channels == 1
    features = encoder(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // r for r in encoder.reductions]


def test_an_input_a_timm_model_cannot_take_is_named():
    encoder = segkit.create_encoder("tu-inception_v3")  # valid convolutions: about 75 pixels at least
    with pytest.raises(SegkitError, match=r"timm's inception_v3 cannot take a 64x64 input \(.*\); feed images of the size"):
        encoder(torch.randn(1, 3, 64, 64))


def test_a_wrong_dtype_is_not_called_a_size_problem():
    """Every RuntimeError was rewritten as 'cannot take a HxW input': a float64 batch (or a CPU batch for a
    CUDA model) sent the user to resize images of a good size."""
    encoder = segkit.create_encoder("tu-resnet18")
    with pytest.raises(RuntimeError, match=r"(?i)double") as caught:
        encoder(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert not isinstance(caught.value, SegkitError)
    assert [f.shape[-1] for f in encoder(torch.randn(1, 3, 64, 64))] == [64 // r for r in encoder.reductions]


def test_options_a_timm_model_cannot_honour_name_the_fix():
    with pytest.raises(SegkitError, match=r"could not build vgg11 with output_stride=8 .* use output_stride=32"):
        segkit.create_model("deeplabv3", encoder="tu-vgg11", num_classes=2)
    with pytest.raises(SegkitError, match=r"fpn asked encoder tu-vit_tiny_patch16_224 for output_stride=32 but its deepest stride "
                                          r"is 16 .* choose another encoder \(this arch needs a deepest stride of 32\)"):
        segkit.create_model("fpn", encoder="tu-vit_tiny_patch16_224", num_classes=2)

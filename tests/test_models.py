"""create_model: the arch x encoder x upsampling matrix, input sizes, aux head, weights, errors, and a
generic model tester in the spirit of smp's (state-dict round trip; TorchScript, export and compile
against eager behind the slow marker)."""

import io
import logging
import warnings

import pytest
import torch
from torch import nn

import segkit
from segkit import SegkitError, create_model

ARCHS = ["fcn32s", "fcn16s", "fcn8s", "fcn4s", "fcn2s", "unet"]
ENCODERS = ["vgg11", "resnet18", "googlenet", "inception_v3"]  # the smallest of each family
MODES = ["transposed", "nearest", "bed_of_nails", "max_unpool"]


def build(arch, encoder=None, **kwargs):
    """create_model, with a narrow fc6/fc7 for FCN on VGG (the 4096-wide head is tested on its own)."""
    if arch.startswith("fcn") and encoder.startswith("vgg"):
        kwargs.setdefault("fc_channels", 64)
    return create_model(arch, encoder=encoder, **kwargs)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero weights everywhere (FCN's score layers start at zero, which would hide differences)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_shape_matrix(arch, encoder, mode):
    """Every arch x encoder x mode builds, takes a 1-channel batch, returns full-size logits, backpropagates."""
    torch.manual_seed(0)
    model = build(arch, encoder, num_classes=3, in_channels=1, upsampling=mode)
    y = model(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    y.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["fcn8s", "unet"])
def test_sides_not_multiple_of_32(arch, mode):
    """70x90 is zero-padded to 96x96 and the logits cropped back: the same as padding by hand."""
    model = randomise(build(arch, "resnet18", num_classes=2, upsampling=mode)).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        y = model(x)
        padded = model(nn.functional.pad(x, [0, 6, 0, 26]))
    assert y.shape == (1, 2, 70, 90)
    torch.testing.assert_close(y, padded[..., :70, :90])


def test_small_inputs_are_padded_to_the_encoders_minimum():
    model = build("unet", "inception_v3", num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 33)).shape == (1, 2, 20, 33)


@pytest.mark.parametrize("arch", ["fcn8s", "unet", "unet_original"])
def test_aux_head(arch):
    encoder = None if arch == "unet_original" else "resnet18"
    kwargs = {"padding": "same"} if arch == "unet_original" else {}
    model = build(arch, encoder, num_classes=3, in_channels=1, aux_classes=5, **kwargs)
    mask, classes = model(torch.randn(2, 1, 64, 64))
    assert mask.shape == (2, 3, 64, 64) and classes.shape == (2, 5)
    (mask.mean() + classes.mean()).backward()
    assert model.aux_head.fc.in_features == (1024 if arch == "unet_original" else 512)


def test_in_channels_and_classes():
    model = build("unet", "vgg11", num_classes=7, in_channels=4, decoder_channels=(32, 16, 8, 8, 4))
    assert model.encoder.in_channels == 4 and model.head.out_channels == 7
    assert model(torch.randn(1, 4, 32, 32)).shape == (1, 7, 32, 32)


def test_fcn_vgg_default_head():
    """FCN on VGG: fc6/fc7 as 7x7 and 1x1 convolutions of 4096 channels, as many weights as VGG's fc6/fc7."""
    model = create_model("fcn8s", encoder="vgg11", num_classes=21)
    fc6, fc7 = model.decoder.head[0], model.decoder.head[3]
    assert fc6.weight.shape == (4096, 512, 7, 7) and fc7.weight.shape == (4096, 4096, 1, 1)
    assert fc6.weight.numel() == 4096 * 25088
    assert isinstance(create_model("fcn8s", encoder="resnet18").decoder.head, nn.Identity)


def test_fcn_vgg_loads_fc6_fc7_from_the_checkpoint(tmp_path, caplog):
    """fc6/fc7 come from classifier.0 / classifier.3, reshaped; fc6 on a 7x7 map is then VGG's fc6."""
    torch.manual_seed(0)
    state = segkit.create_encoder("vgg11").state_dict()
    state.update(
        {
            "classifier.0.weight": torch.randn(8, 25088),
            "classifier.0.bias": torch.randn(8),
            "classifier.3.weight": torch.randn(8, 8),
            "classifier.3.bias": torch.randn(8),
            "classifier.6.weight": torch.randn(1000, 8),
            "classifier.6.bias": torch.randn(1000),
        }
    )
    path = tmp_path / "vgg11-tiny-head.pth"
    torch.save(state, path)
    model = create_model("fcn32s", encoder="vgg11", num_classes=2, encoder_weights=path, fc_channels=8)
    assert torch.equal(model.encoder.state_dict()["features.0.weight"], state["features.0.weight"])
    fc6, fc7 = model.decoder.head[0], model.decoder.head[3]
    pool5 = torch.randn(1, 512, 7, 7, dtype=torch.float64)  # float64: a 25,088-term sum, no rounding noise
    with torch.no_grad():
        as_conv = fc6.double()(pool5)[:, :, 3, 3]
    expected = nn.functional.linear(pool5.flatten(1), state["classifier.0.weight"].double(), state["classifier.0.bias"].double())
    torch.testing.assert_close(as_conv, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(fc7.weight.flatten(1), state["classifier.3.weight"])
    # A head of another width keeps its initialisation, and says so.
    with caplog.at_level(logging.INFO, logger="segkit"):
        other = create_model("fcn32s", encoder="vgg11", num_classes=2, encoder_weights=path, fc_channels=16)
    assert "fc6/fc7 keep their fresh initialisation" in caplog.text
    assert other.decoder.head[0].weight.shape == (16, 512, 7, 7)


def test_errors_name_the_valid_choices():
    with pytest.raises(SegkitError, match="deeplabv3, deeplabv3plus, fcn16s, fcn2s, fcn32s, fcn4s, fcn8s, fcn_head, fpn, unet, unet_original"):
        create_model("fcn64s", encoder="resnet18")
    with pytest.raises(SegkitError, match="unknown encoder 'resnet19'"):
        create_model("unet", encoder="resnet19")
    with pytest.raises(SegkitError, match="unknown encoder 'swin'; choose one of .*resnet18"):
        create_model("unet", encoder="swin")
    with pytest.raises(SegkitError, match="transposed, nearest, bed_of_nails, max_unpool"):
        create_model("unet", encoder="resnet18", upsampling="bicubic")
    with pytest.raises(SegkitError, match="needs an encoder"):
        create_model("unet")
    with pytest.raises(SegkitError, match="takes no encoder"):
        create_model("unet_original", encoder="resnet18")
    with pytest.raises(SegkitError, match="unet has no option 'skip_fusion'; its options are decoder_channels"):
        create_model("unet", encoder="resnet18", skip_fusion="add")
    with pytest.raises(SegkitError, match="skip_fusion.*add, concat"):
        create_model("fcn8s", encoder="resnet18", skip_fusion="sum")
    with pytest.raises(SegkitError, match="decoder_channels"):
        create_model("unet", encoder="resnet18", decoder_channels=(64, 32))
    for bad in ({"num_classes": 0}, {"aux_classes": 0}, {"in_channels": 0}):
        with pytest.raises(SegkitError, match="positive integer"):
            create_model("unet", encoder="resnet18", **bad)


# --- the model tester -------------------------------------------------------------------------

TESTED = [
    ("unet", "resnet18", "transposed"),
    ("unet", "vgg11", "max_unpool"),
    ("fcn8s", "resnet18", "max_unpool"),
    ("fcn16s", "vgg11", "transposed"),
    ("fcn32s", "googlenet", "bed_of_nails"),
    ("unet", "inception_v3", "nearest"),
    ("unet_original", None, "max_unpool"),
]


def build_tested(arch, encoder, mode, **kwargs):
    if arch == "unet_original":
        kwargs["padding"] = "same"
    return randomise(build(arch, encoder, num_classes=3, upsampling=mode, **kwargs))


@pytest.mark.parametrize(("arch", "encoder", "mode"), [TESTED[1], TESTED[3], TESTED[-1]])
def test_state_dict_round_trip(arch, encoder, mode):
    """A trained state dict survives torch.save / torch.load(weights_only=True) into a fresh model."""
    torch.manual_seed(0)
    model = build_tested(arch, encoder, mode, aux_classes=2)
    x = torch.randn(2, 3, 64, 64)
    model(x)[0].mean().backward()  # one training-mode pass moves the BatchNorm statistics
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(arch, encoder, num_classes=3, upsampling=mode, aux_classes=2, **({"padding": "same"} if arch == "unet_original" else {}))
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    model.eval(), fresh.eval()
    with torch.no_grad():
        for a, b in zip(model(x), fresh(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _eager_and(transform, arch, encoder, mode):
    torch.manual_seed(0)
    model = build_tested(arch, encoder, mode).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        actual = transform(model, x)(x)
    scale = expected.abs().max()  # random weights make large logits: compare relative to their size
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "encoder", "mode"), TESTED)
def test_torch_export_matches_eager(arch, encoder, mode):
    _eager_and(lambda model, x: torch.export.export(model, (x,)).module(), arch, encoder, mode)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "encoder", "mode"), TESTED)
def test_torch_compile_matches_eager(arch, encoder, mode):
    _eager_and(lambda model, x: torch.compile(model), arch, encoder, mode)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "encoder", "mode"), TESTED)
def test_torch_jit_script_matches_eager(arch, encoder, mode):
    """The decoders, heads and unet_original are TorchScript-compatible; an encoder may not be."""
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
    if encoder is not None:
        try:
            torch.jit.script(segkit.create_encoder(encoder))
        except Exception as err:  # noqa: BLE001 - any TorchScript failure of the encoder itself
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            pytest.xfail(f"encoder {encoder} does not compile with TorchScript: {first}")
    _eager_and(lambda model, x: torch.jit.script(model), arch, encoder, mode)

"""DeepLabV3 / V3+ (issue 14): parameter counts and outputs against smp, the paper's layout by hand,
upsampling modes, output strides, initialisation, errors.

smp is the oracle: its ``DeepLabV3`` is torchvision's ``DeepLabHead`` on smp's encoder, its
``DeepLabV3Plus`` the separable variant with one refinement convolution. Two known differences are
undone on the smp side before comparing outputs: smp dilates the first block of a dilated stage
too (segkit follows torchvision, see tests/test_dilated.py), and smp resizes with
``align_corners=True`` where segkit, torchvision and the papers use ``False``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import segkit
from segkit import SegkitError
from segkit.decoders.deeplab import ASPP, SeparableConv2d, atrous_rates
from tests._oracles import count_params, randomize_norm_stats

smp = pytest.importorskip("segmentation_models_pytorch")

SMP_V3PLUS = {"separable": True, "refine_convs": 1, "aspp_conv": True}  # smp's DeepLabV3Plus layout


def _torchvision_first_blocks(encoder: nn.Module, output_stride: int) -> None:
    """smp's dilated encoder with torchvision's rule: the first block of a dilated stage keeps the previous dilation."""
    stages = [(encoder.layer4, 1)] if output_stride == 16 else [(encoder.layer3, 1), (encoder.layer4, 2)]
    for layer, previous in stages:
        for conv in (m for m in layer[0].modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)):
            conv.dilation, conv.padding = (previous, previous), (previous, previous)


def _pixel_centres(module: nn.Module, name: str, scale: int) -> None:
    setattr(module, name, nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_deeplabv3_parameter_count_equals_smps(encoder):
    with torch.device("meta"):
        ours = segkit.create_model("deeplabv3", encoder=encoder, num_classes=21)
        theirs = smp.DeepLabV3(encoder, encoder_weights=None, classes=21)
    assert count_params(ours) == count_params(theirs)
    assert ours.encoder.reductions[-1] == 8  # smp's and torchvision's default output stride


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_deeplabv3plus_smp_layout_has_smps_parameter_count(encoder):
    with torch.device("meta"):
        ours = segkit.create_model("deeplabv3plus", encoder=encoder, num_classes=5, **SMP_V3PLUS)
        theirs = smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=5)
    assert count_params(ours) == count_params(theirs)
    assert ours.encoder.reductions[-1] == 16


def test_deeplabv3plus_paper_layout_by_hand():
    """Defaults: plain ASPP, 48-channel stride-4 projection, two 3x3 conv-BN-ReLU of 256, 1x1 classifier."""
    k, c5, c2 = 21, 512, 64  # resnet34: deepest 512 channels, stride-4 level 64
    bn = lambda c: 2 * c  # noqa: E731
    aspp = (c5 * 256 + bn(256)) + 3 * (c5 * 256 * 9 + bn(256)) + (c5 * 256 + bn(256)) + (5 * 256 * 256 + bn(256))
    decoder = aspp + (c2 * 48 + bn(48)) + ((256 + 48) * 256 * 9 + bn(256)) + (256 * 256 * 9 + bn(256)) + (256 * k + k)
    with torch.device("meta"):
        model = segkit.create_model("deeplabv3plus", encoder="resnet34", num_classes=k)
        encoder = segkit.create_encoder("resnet34")
    assert count_params(model) == count_params(encoder) + decoder
    assert len(model.decoder.refine) == 2 and model.decoder.aspp_conv is None


def test_deeplabv3_outputs_equal_smps():
    """Same weights (smp's state dict, renamed), same logits: ASPP rates 12/24/36 at output stride 8."""
    torch.manual_seed(0)
    theirs = randomize_norm_stats(smp.DeepLabV3("resnet34", encoder_weights=None, classes=4))
    _torchvision_first_blocks(theirs.encoder, 8)
    _pixel_centres(theirs.segmentation_head, "1", 8)
    ours = segkit.create_model("deeplabv3", encoder="resnet34", num_classes=4)
    assert ours.decoder.aspp.convs[1][0].dilation == (12, 12) and ours.decoder.aspp.convs[3][0].dilation == (36, 36)
    names = {"decoder.conv.": "decoder.aspp_conv.0.", "decoder.bn.": "decoder.aspp_conv.1.", "segmentation_head.0.": "decoder.classifier."}
    state = {}
    for key, value in theirs.state_dict().items():
        for old, new in names.items():
            key = key.replace(old, new) if key.startswith(old) else key
        state[key] = value
    state = {k: v for k, v in state.items() if not k.startswith("encoder.fc.")}
    ours.load_state_dict(state, strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_deeplabv3plus_smp_layout_outputs_equal_smps():
    torch.manual_seed(0)
    theirs = randomize_norm_stats(smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=3, decoder_atrous_rates=(6, 12, 18)))
    _torchvision_first_blocks(theirs.encoder, 16)
    _pixel_centres(theirs.decoder, "up", 4)
    _pixel_centres(theirs.segmentation_head, "1", 4)
    ours = segkit.create_model("deeplabv3plus", encoder="resnet34", num_classes=3, **SMP_V3PLUS)
    names = {"decoder.aspp.0.": "decoder.aspp.", "decoder.aspp.1.": "decoder.aspp_conv.0.", "decoder.aspp.2.": "decoder.aspp_conv.1.",
             "decoder.block1.": "decoder.project.", "decoder.block2.": "decoder.refine.0.", "segmentation_head.0.": "decoder.classifier."}
    state = {}
    for key, value in theirs.state_dict().items():
        for old, new in names.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value
    ours.load_state_dict({k: v for k, v in state.items() if not k.startswith("encoder.fc.")}, strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_atrous_rates_follow_the_output_stride(output_stride):
    """6/12/18 at output stride 16, doubled at 8 (halved at 32); explicit rates win."""
    assert atrous_rates(output_stride) == tuple(r * 16 // output_stride for r in (6, 12, 18))
    model = segkit.create_model("deeplabv3", encoder="resnet18", num_classes=2, output_stride=output_stride)
    assert [b[0].dilation[0] for b in list(model.decoder.aspp.convs)[1:4]] == list(atrous_rates(output_stride))
    assert model.encoder.reductions[-1] == output_stride and model.multiple == 1  # bilinear logits: any size as it is, no padding (torchvision)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    assert atrous_rates(16, (1, 2, 3)) == (1, 2, 3)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "transposed"])
def test_modes_and_sizes(arch, output_stride, mode):
    model = segkit.create_model(arch, encoder="resnet18", num_classes=3, in_channels=1, upsampling=mode, output_stride=output_stride)
    assert model.decoder.upsampling == mode
    logits = model(torch.randn(2, 1, 50, 70))
    assert logits.shape == (2, 3, 50, 70)
    logits.mean().backward()
    assert model.encoder.conv1.weight.grad is not None


def test_default_upsampling_is_the_papers_bilinear():
    model = segkit.create_model("deeplabv3plus", encoder="resnet18", num_classes=2)
    assert model.decoder.upsampling == "bilinear" and not list(model.decoder.up.parameters())


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "fcn_head"])
def test_transposed_starts_as_bilinear_interpolation(arch):
    """The learnt deconvolutions start as the paper's bilinear resize (away from the border)."""
    torch.manual_seed(0)
    bilinear = segkit.create_model(arch, encoder="resnet18", num_classes=2, upsampling="bilinear").eval()
    learnt = segkit.create_model(arch, encoder="resnet18", num_classes=2, upsampling="transposed").eval()
    state = learnt.state_dict()  # its deconvolutions, everything else the bilinear model's
    state.update(bilinear.state_dict())
    learnt.load_state_dict(state)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        a, b = bilinear(x), learnt(x)
    margin = 40  # V3+: the x4 deconvolution's border (4 stride-4 pixels) widened by two 3x3 convolutions, then x4
    torch.testing.assert_close(a[..., margin:-margin, margin:-margin], b[..., margin:-margin, margin:-margin], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["bed_of_nails", "max_unpool"])
@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "fcn_head"])
def test_modes_that_cannot_fill_a_x4_step_name_those_that_can(arch, mode):
    with pytest.raises(SegkitError, match=rf"{arch} upsamples by 4 or more.*{mode}.*choose upsampling bilinear \(the paper's\), nearest or transposed"):
        segkit.create_model(arch, encoder="resnet18", num_classes=2, upsampling=mode)


def test_initialisation_follows_the_decoder_conventions():
    """conv-BN-ReLU He (fan_in, ReLU) uniform, BN 1/0, depthwise too; classifier Xavier, bias 0."""
    torch.manual_seed(0)
    model = segkit.create_model("deeplabv3plus", encoder="resnet34", num_classes=4, **SMP_V3PLUS)
    convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d) and m is not model.decoder.classifier]
    assert any(m.groups > 1 for m in convs)
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(6.0 / fan_in) + 1e-6
        if conv.weight.numel() >= 20000:
            assert abs(conv.weight.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.06
    for norm in (m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    head = model.decoder.classifier
    assert head.weight.abs().max() <= math.sqrt(6.0 / (256 + 4)) and not head.bias.any()


def test_building_blocks():
    aspp = ASPP(32, (2, 4, 6), 16, separable=True)
    assert isinstance(aspp.convs[1][0], SeparableConv2d) and aspp.convs[1][0][0].dilation == (2, 2)
    x = torch.randn(2, 32, 9, 11)
    assert aspp.eval()(x).shape == (2, 16, 9, 11)
    pooled = aspp.convs[4](x)  # image pooling: one value per channel, broadcast back
    assert torch.equal(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_image_level_head_and_dilated_encoder_options():
    model = segkit.create_model("deeplabv3", encoder="resnet18", num_classes=3, aux_classes=3, output_stride=16)
    logits, classes = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and classes.shape == (2, 3)


def test_errors():
    with pytest.raises(SegkitError, match="encoder 'vgg16' cannot trade stride for dilation.*output_stride=32"):
        segkit.create_model("deeplabv3", encoder="vgg16", num_classes=2)
    vgg = segkit.create_model("deeplabv3", encoder="vgg11", num_classes=2, output_stride=32).eval()
    assert vgg(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(SegkitError, match="output_stride must be 32"):
        segkit.create_model("deeplabv3plus", encoder="resnet18", output_stride=4)
    with pytest.raises(SegkitError, match="refine_convs must be a positive integer"):
        segkit.create_model("deeplabv3plus", encoder="resnet18", refine_convs=0)
    with pytest.raises(SegkitError, match="atrous_rates must be three positive integers"):
        segkit.create_model("deeplabv3", encoder="resnet18", atrous_rates=(6, 12))
    with pytest.raises(SegkitError, match="aux_head must be None or 'fcn'"):
        segkit.create_model("deeplabv3", encoder="resnet18", aux_head="psp")
    with pytest.raises(SegkitError, match="deeplabv3 has no option 'skip_fusion'; its options are output_stride"):
        segkit.create_model("deeplabv3", encoder="resnet18", skip_fusion="add")
    with pytest.raises(SegkitError, match="deeplabv3 needs an encoder"):
        segkit.create_model("deeplabv3")


@pytest.mark.parametrize("aux", [False, True])
def test_the_config_trains_from_the_cli_and_evaluates(tmp_path, aux, capsys):
    """configs/deeplabv3plus_resnet34.yaml (tiny data, one epoch), with the image-level and FCN auxiliary heads too."""
    from segkit.cli import main

    overrides = [f"data.root={tmp_path / 'data'}", "data.synthetic.n=8", "data.synthetic.size=64", "trainer.epochs=1",
                 "trainer.batch_size=3", "trainer.val_interval=1", "output.plots=false"]
    if aux:
        overrides += ["model.aux_classes=3", "model.decoder.aux_head=fcn"]
    assert main(["train", "configs/deeplabv3plus_resnet34.yaml", "--out", str(tmp_path / "run"), *overrides]) == 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--quiet"]) == 0
    assert "mIoU:" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["transposed", "nearest", "bed_of_nails", "max_unpool", "bilinear"])
def test_deeplabv3plus_x2_feature_step_takes_every_mode_at_output_stride_8(mode):
    import segkit

    model = segkit.create_model("deeplabv3plus", encoder="resnet18", num_classes=3, upsampling=mode, output_stride=8).eval()
    assert model.decoder.upsampling == mode
    assert model.decoder.final_upsampling == ("bilinear" if mode in ("bed_of_nails", "max_unpool") else mode)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 3, 64, 96)


def test_deeplabv3plus_max_unpool_puts_features_where_the_encoder_found_its_maxima():
    """The x2 step at output stride 8 unpools with the switches of the encoder's step to stride 8."""
    import segkit
    from segkit.decoders.upsample import max_unpool

    model = segkit.create_model("deeplabv3plus", encoder="resnet18", num_classes=3, upsampling="max_unpool", output_stride=8).eval()
    x = torch.randn(1, 3, 64, 64)
    features, switches = model.encoder.forward_with_switches(x)
    aspp = model.decoder.aspp(features[-1])
    skip = features[model.decoder.low_level]
    up = model.decoder.up(aspp, switches[2], [skip.shape[-2], skip.shape[-1]])
    index = switches[2]
    expected = max_unpool(aspp, index.repeat(1, aspp.shape[1] // index.shape[1] + 1, 1, 1)[:, : aspp.shape[1]], [skip.shape[-2], skip.shape[-1]])
    torch.testing.assert_close(up, expected)
    assert (up != 0).float().mean() <= 0.25 + 1e-6  # one position in four at most


@pytest.mark.parametrize("kwargs, message", [
    ({"upsampling": "bed_of_nails", "output_stride": 16}, "output_stride 16"),
    ({"upsampling": "bilinear", "output_stride": 8, "final_upsampling": "max_unpool"}, "final_upsampling"),
])
def test_deeplabv3plus_modes_that_cannot_work_are_errors(kwargs, message):
    import segkit
    from segkit import SegkitError

    with pytest.raises(SegkitError, match=message):
        segkit.create_model("deeplabv3plus", encoder="resnet18", num_classes=3, **kwargs)

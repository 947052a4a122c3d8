"""Initialisation and head parity with segmentation-models-pytorch (smp).

A fresh model's numbers are part of its contract (see segkit.decoders.init): decoder conv-BN-ReLU
layers He (fan_in, ReLU) with BatchNorm 1/0, 1x1 projections variance-preserving, U-Net up-convs
starting as projection + nearest upsampling, FCN's deconvolutions as bilinear interpolation and its
scores as zero, heads Xavier. Statistics are checked against the formulas and against smp's own
freshly initialised Unet (the oracle for "a user who moves from smp loses nothing").
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segkit
from segkit.decoders import MODES, Upsample, bilinear_kernel, nearest_upsample
from segkit.decoders.init import init_nearest_upconv
from segkit.errors import SegkitError
from segkit.heads import ClassificationHead, SegmentationHead

smp = pytest.importorskip("segmentation_models_pytorch")


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every convolution directly followed by a BatchNorm inside ``module`` (Sequential order)."""
    pairs = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq)
            pairs += [(a, b) for a, b in zip(layers, layers[1:]) if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]
    return pairs


def _fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * weight[0, 0].numel()


def _check_uniform(weight: torch.Tensor, variance: float) -> None:
    """``weight`` looks drawn from the zero-mean uniform distribution of that variance."""
    bound = math.sqrt(3 * variance)
    assert weight.abs().max() <= bound + 1e-6
    if weight.numel() >= 2000:  # enough draws for the sample statistics to be tight
        assert abs(weight.std().item() / math.sqrt(variance) - 1) < 0.06
        assert abs(weight.mean().item()) < 0.06 * math.sqrt(variance)


@pytest.mark.parametrize("mode", MODES)
def test_unet_decoder_conv_bn_relu_layers_are_he_fan_in(mode):
    torch.manual_seed(0)
    model = segkit.create_model("unet", encoder="resnet18", num_classes=3, upsampling=mode)
    pairs = _conv_bn_pairs(model.decoder)
    assert len(pairs) == 10  # two per block, five blocks
    for conv, norm in pairs:
        _check_uniform(conv.weight, 2.0 / _fan_in(conv.weight))
        assert conv.bias is None
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_unet_decoder_statistics_equal_smps():
    """Layer by layer, segkit's nearest U-Net decoder is drawn from the distributions smp draws from."""
    torch.manual_seed(0)
    ours = segkit.create_model("unet", encoder="resnet34", num_classes=4, upsampling="nearest")
    theirs = smp.Unet("resnet34", encoder_weights=None, classes=4)
    our_convs = [c for c, _ in _conv_bn_pairs(ours.decoder)]
    their_convs = [m for m in theirs.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.weight.shape for c in our_convs] == [c.weight.shape for c in their_convs]
    for a, b in zip(our_convs, their_convs):
        assert a.weight.abs().max() <= b.weight.abs().max() * 1.01 + 1e-6
        if a.weight.numel() >= 2000:
            assert abs(a.weight.std().item() / b.weight.std().item() - 1) < 0.08
    head, their_head = ours.head, theirs.segmentation_head[0]
    assert head.weight.shape == their_head.weight.shape and head.padding == their_head.padding
    assert abs(head.weight.std().item() / their_head.weight.std().item() - 1) < 0.1
    assert not head.bias.any() and not their_head.bias.any()


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])  # smp cuts VGG into levels differently
@pytest.mark.parametrize(("in_channels", "classes"), [(1, 1), (3, 8)])
def test_unet_nearest_has_smps_parameter_count_to_the_unit(encoder, in_channels, classes):
    ours = segkit.create_model("unet", encoder=encoder, num_classes=classes, in_channels=in_channels, upsampling="nearest")
    theirs = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=classes)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    paper_head = segkit.create_model("unet", encoder=encoder, num_classes=classes, in_channels=in_channels,
                                     upsampling="nearest", head_kernel_size=1)
    assert count(theirs) - count(paper_head) == 16 * classes * (9 - 1)


def test_heads_are_xavier_with_zero_bias():
    torch.manual_seed(0)
    head = SegmentationHead(64, 40)
    assert head.kernel_size == (3, 3) and head.padding == (1, 1)
    _check_uniform(head.weight, 2.0 / (64 * 9 + 40 * 9))
    assert not head.bias.any()
    one = SegmentationHead(64, 40, kernel_size=1)
    assert one.kernel_size == (1, 1)
    _check_uniform(one.weight, 2.0 / (64 + 40))
    aux = ClassificationHead(512, 10)
    _check_uniform(aux.fc.weight, 2.0 / (512 + 10))
    assert not aux.fc.bias.any()
    for bad in (0, 2, 1.0, True):
        with pytest.raises(SegkitError, match="head_kernel_size must be an odd positive integer"):
            SegmentationHead(8, 2, kernel_size=bad)


def test_head_kernel_size_reaches_the_model_from_a_config_option():
    model = segkit.create_model("unet", encoder="resnet18", num_classes=2, head_kernel_size=1)
    assert model.head.kernel_size == (1, 1)
    assert segkit.create_model("unet", encoder="resnet18", num_classes=2).head.kernel_size == (3, 3)
    # The paper's own net keeps its 1x1 output layer.
    assert segkit.create_model("unet_original", num_classes=2).head.kernel_size == (1, 1)


def test_transposed_upconv_starts_as_projection_then_nearest():
    torch.manual_seed(0)
    up = Upsample("transposed", 48, 24)
    w = up.conv.weight  # (in, out, 2, 2)
    assert torch.equal(w, w[:, :, :1, :1].expand_as(w)) and not up.conv.bias.any()
    _check_uniform(w[:, :, 0, 0], 1.0 / 48)
    x = torch.randn(2, 48, 5, 7)
    projected = F.conv2d(x, w[:, :, 0, 0].t()[:, :, None, None])
    torch.testing.assert_close(up(x), nearest_upsample(projected), rtol=1e-5, atol=1e-5)
    bad = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
    with pytest.raises(ValueError, match="kernel_size == stride"):
        init_nearest_upconv(bad)


@pytest.mark.parametrize("mode", ["nearest", "bed_of_nails"])
def test_projections_preserve_variance(mode):
    torch.manual_seed(0)
    up = Upsample(mode, 256, 64)
    _check_uniform(up.conv.weight, 1.0 / 256)
    assert not up.conv.bias.any()


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_starts_as_the_paper_does(stride):
    """Scores zero, deconvolutions bilinear (bias-free), fc6/fc7 He fan_in until a VGG file fills them."""
    torch.manual_seed(0)
    model = segkit.create_model(f"fcn{stride}s", encoder="vgg11", num_classes=3, fc_channels=64)
    decoder = model.decoder
    assert not decoder.score.weight.any() and not decoder.score.bias.any()
    for fusion in decoder.fusions:
        assert not fusion.score.weight.any()
    ups = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == {32: 1, 16: 2, 8: 3}[stride]
    for up in ups:
        assert up.bias is None
        torch.testing.assert_close(up.weight, bilinear_kernel(3, up.kernel_size[0]))
    for fc in (decoder.head[0], decoder.head[3]):
        _check_uniform(fc.weight, 2.0 / _fan_in(fc.weight))
        assert not fc.bias.any()


@pytest.mark.parametrize("mode", MODES)
def test_fresh_unet_logits_have_unit_scale(mode):
    """The signal survives the decoder: logits of a fresh model are of order 1, not vanishing."""
    torch.manual_seed(0)
    model = segkit.create_model("unet", encoder="resnet18", num_classes=4, upsampling=mode).train()
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 64, 64))
    assert 0.6 < logits.std().item() < 1.6  # PyTorch's default init gave 0.35-0.41 here


def test_fcn_max_unpool_projections_and_concat_fusion_start_well():
    """max_unpool's 1x1 projections preserve variance; concat fusion starts as the paper's sum."""
    torch.manual_seed(0)
    model = segkit.create_model("fcn8s", encoder="resnet18", num_classes=3, upsampling="max_unpool", skip_fusion="concat")
    projections = [m.conv for m in model.decoder.modules() if isinstance(m, Upsample) and isinstance(m.conv, nn.Conv2d)]
    projections += [m.classes for m in model.decoder.modules() if hasattr(m, "classes") and isinstance(m.classes, nn.Conv2d)]
    assert projections
    for conv in projections:
        _check_uniform(conv.weight, 1.0 / _fan_in(conv.weight))
        assert not conv.bias.any()
    for fusion in model.decoder.fusions:
        eye = torch.eye(3)[:, :, None, None]
        assert torch.equal(fusion.fuse.weight, torch.cat([eye, eye], dim=1)) and not fusion.fuse.bias.any()


def test_unet_original_keeps_the_papers_gaussian():
    """Ronneberger et al.: N(0, 2 / N), N = the inputs of one unit (in * k * k; in for the 2x2 up-conv)."""
    torch.manual_seed(0)
    model = segkit.create_model("unet_original", num_classes=2, in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for m in convs:
        fan_in = m.in_channels * (m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else 1)
        if m.weight.numel() >= 10000:
            assert abs(m.weight.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.05
        assert not m.bias.any()


@pytest.mark.parametrize("encoder", ["resnet18", "vgg16_bn"])
def test_non_rgb_stem_without_weights_starts_as_smps(encoder):
    """Grey (or 4-channel) encoders from scratch: the first convolution gets PyTorch's default, as
    smp re-initialises it; RGB keeps torchvision's He (fan_out) stem."""
    torch.manual_seed(0)
    for in_channels in (1, 4):
        ours = segkit.create_model("unet", encoder=encoder, num_classes=2, in_channels=in_channels)
        theirs = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=2)
        stem = ours.encoder.get_submodule(ours.encoder.first_conv).weight
        their_stem = next(m for m in theirs.encoder.modules() if isinstance(m, nn.Conv2d)).weight
        assert stem.shape == their_stem.shape
        _check_uniform(stem, 1.0 / (3 * _fan_in(stem)))
        assert stem.abs().max() <= their_stem.abs().max() * 1.05 + 1e-6 and stem.abs().max() > 0.9 * their_stem.abs().max()
    rgb = segkit.create_encoder("resnet18").conv1.weight
    assert abs(rgb.std().item() / math.sqrt(2.0 / (64 * 49)) - 1) < 0.05

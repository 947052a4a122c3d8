"""The encoder contract, checked over every registered encoder, and the factory's argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segkit
from segkit import SegkitError

ENCODERS = segkit.list_encoders()


def test_the_design_names_are_registered():
    expected = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {f"resnet{d}{o}" for d in (18, 34, 50, 101, 152) for o in ("", "_a", "_c")}
    expected |= {"plain18", "plain34", "googlenet", "inception_v3"}
    assert expected <= set(ENCODERS)
    classifiers = set(segkit.list_classifiers())
    assert expected <= classifiers
    assert {"lenet5", "alexnet", "cifar_resnet20", "cifar_resnet1202", "cifar_plain110"} <= classifiers


@pytest.mark.parametrize("name", ENCODERS)
def test_contract(name):
    """Five maps, shallow to deep, exactly H/r x W/r, with valid switches; one input channel works."""
    torch.manual_seed(0)
    encoder = segkit.create_encoder(name, in_channels=1).eval()
    assert len(encoder.out_channels) == len(encoder.reductions) == 5
    assert tuple(encoder.reductions) == (2, 4, 8, 16, 32)
    h, w = 64, 96
    x = torch.randn(1, 1, h, w)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
    assert [tuple(f.shape) for f in features] == [(1, c, h // r, w // r) for c, r in zip(encoder.out_channels, encoder.reductions)]
    assert len(switches) == 5
    previous = (h, w)
    for feature, sw in zip(features, switches):
        assert sw.dtype == torch.int64 and sw.shape[-2:] == feature.shape[-2:]
        # Every switch points into the plane of the previous level (the image for level 0).
        assert 0 <= sw.min() and sw.max() < previous[0] * previous[1]
        previous = tuple(feature.shape[-2:])


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "resnet50_a"])
def test_backward_reaches_the_first_convolution(name):
    encoder = segkit.create_encoder(name)
    features = encoder(torch.randn(2, 3, 32, 32))
    sum(f.mean() for f in features).backward()
    assert encoder.get_submodule(encoder.first_conv).weight.grad.abs().sum() > 0


def test_sizes_not_multiple_of_32_are_handled():
    encoder = segkit.create_encoder("resnet18")
    features = encoder(torch.randn(1, 3, 70, 45))
    assert [tuple(f.shape[-2:]) for f in features] == [(35, 23), (18, 12), (9, 6), (5, 3), (3, 2)]


def test_unknown_name_suggests_close_ones():
    with pytest.raises(SegkitError, match="unknown encoder 'resnet35'; did you mean .*resnet34"):
        segkit.create_encoder("resnet35")
    with pytest.raises(SegkitError, match="unknown classifier"):
        segkit.create_classifier("lenet6")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_in_channels(bad):
    with pytest.raises(SegkitError, match="in_channels must be a positive integer"):
        segkit.create_encoder("resnet18", in_channels=bad)


def test_bad_num_classes():
    with pytest.raises(SegkitError, match="num_classes must be a positive integer"):
        segkit.create_classifier("resnet18", num_classes=0)


def test_bad_inputs_get_clear_errors():
    encoder = segkit.create_encoder("resnet18", in_channels=1)
    with pytest.raises(SegkitError, match="built for 1 input channels but the batch has 3"):
        encoder(torch.randn(1, 3, 64, 64))
    with pytest.raises(SegkitError, match="at least 32x32"):
        encoder(torch.randn(1, 1, 16, 64))
    with pytest.raises(SegkitError, match=r"\(N, C, H, W\)"):
        encoder(torch.randn(1, 64, 64))
    vgg = segkit.create_classifier("vgg11", num_classes=3).eval()  # five poolings: a raw max_pool error before
    assert vgg(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(SegkitError, match="VGG needs images of at least 32x32 pixels; got 31x31"):
        vgg(torch.randn(1, 3, 31, 31))


def test_errors_name_what_to_do_instead(tmp_path):
    with pytest.raises(SegkitError, match=r"does not exist; pass the path of a checkpoint file you have, or a published name such as weights='imagenet'"):
        segkit.create_classifier("vgg16", weights=tmp_path / "vgg16-397923af.pth")
    with pytest.raises(SegkitError, match=r"pass no weights \(weights=None; encoder_weights in create_model"):
        segkit.create_encoder("resnet34_a", weights="imagenet")


def test_an_fcn_the_encoder_cannot_feed_names_those_it_can():
    pytest.importorskip("timm")
    with pytest.raises(SegkitError, match="choose fcn32s/fcn16s/fcn8s/fcn4s or another encoder"):  # not "fcn32s/fcn16s" alone
        segkit.create_model("fcn2s", encoder="tu-convnext_atto")


def test_bad_shortcut_option():
    from segkit.encoders.resnet import ResNetEncoder, BasicBlock

    with pytest.raises(SegkitError, match="shortcut must be one of A, B, C, none"):
        ResNetEncoder(BasicBlock, [2, 2, 2, 2], shortcut="D")


def test_switches_unpool_to_the_pooled_maxima():
    """max_unpool2d with an encoder's switches reproduces the pooled values at their argmax positions."""
    encoder = segkit.create_encoder("vgg11").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
        before = encoder.features[:encoder._pool_positions[0]](x)
    restored = F.max_unpool2d(features[0], switches[0], 2, output_size=before.shape[-2:])
    torch.testing.assert_close(F.max_pool2d(restored, 2), features[0])

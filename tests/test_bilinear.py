"""The ``bilinear`` upsampling mode in the FCN and U-Net decoders (issue 14).

Oracles: ``F.interpolate(mode="bilinear", align_corners=False)`` for the mode itself, smp's
``Unet(decoder_interpolation="bilinear")`` decoder for U-Net (same weights, same outputs, at a size
that is a multiple of 32 and one that is not), hand-written FCN-32s/8s for FCN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segkit
from segkit.decoders import FCNDecoder, MODES, UnetDecoder, Upsample, bilinear_upsample
from segkit.decoders.fcn import ScoreUpsample


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def test_bilinear_is_a_mode():
    assert "bilinear" in MODES


def test_bilinear_upsample_is_interpolate():
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(bilinear_upsample(x, 4), F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))
    torch.testing.assert_close(bilinear_upsample(x, 2, [11, 13]), F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=False))


def test_upsample_module_projects_then_interpolates_to_the_target():
    torch.manual_seed(0)
    up = Upsample("bilinear", 6, 4)
    assert isinstance(up.conv, nn.Conv2d) and up.conv.kernel_size == (1, 1)
    x = torch.randn(2, 6, 9, 10)
    expected = F.interpolate(up.conv(x), size=(17, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x, None, [17, 20]), expected)
    same = Upsample("bilinear", 6, 6, scale=8)
    assert isinstance(same.conv, nn.Identity) and not list(same.parameters())
    torch.testing.assert_close(same(x), F.interpolate(x, scale_factor=8.0, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("size", [64, 70])
def test_unet_decoder_equals_smps_bilinear_decoder(size):
    """smp's decoder_interpolation='bilinear': the same weights give the same outputs, odd sizes too."""
    smp_decoder = pytest.importorskip("segmentation_models_pytorch.decoders.unet.decoder")
    torch.manual_seed(0)
    channels = (3, 8, 8, 16, 24, 32)  # smp lists the image first
    theirs = smp_decoder.UnetDecoder(channels, (16, 12, 8, 6, 4), interpolation_mode="bilinear").eval()
    ours = UnetDecoder(channels[1:], (16, 12, 8, 6, 4), "bilinear").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    sizes = [size]
    for _ in range(5):
        sizes.append(-(-sizes[-1] // 2))  # strided layers round up: 70, 35, 18, 9, 5, 3
    features = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes)]
    with torch.no_grad():
        torch.testing.assert_close(ours(features[1:], None, [size, size]), theirs(features))


def test_unet_model_bilinear_has_smps_parameter_count_and_trains():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = segkit.create_model("unet", encoder="resnet18", num_classes=3, upsampling="bilinear")
    peer = smp.Unet("resnet18", encoder_weights=None, classes=3, decoder_interpolation="bilinear")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in peer.parameters())
    logits = model(torch.randn(2, 3, 50, 70))
    assert logits.shape == (2, 3, 50, 70)
    logits.mean().backward()
    assert model.encoder.conv1.weight.grad is not None


def test_fcn32s_bilinear_is_fixed_interpolation_of_the_scores():
    torch.manual_seed(0)
    features = [torch.randn(1, c, 64 // r, 96 // r) for c, r in zip((4, 6, 8, 10, 12), (2, 4, 8, 16, 32))]
    decoder = FCNDecoder((4, 6, 8, 10, 12), 3, 32, "bilinear")
    _randomise(decoder.score)
    assert not [p for n, p in decoder.named_parameters() if not n.startswith("score")]  # no learnt upsampling
    expected = F.interpolate(decoder.score(features[-1]), size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(decoder(features, None, [64, 96]), expected)


def test_fcn8s_bilinear_fuses_as_the_paper():
    """2x(score_fr) + score_pool4, 2x + score_pool3, 8x: every step bilinear."""
    torch.manual_seed(0)
    features = [torch.randn(1, c, 64 // r, 64 // r) for c, r in zip((4, 6, 8, 10, 12), (2, 4, 8, 16, 32))]
    decoder = _randomise(FCNDecoder((4, 6, 8, 10, 12), 2, 8, "bilinear"))
    up = lambda x, s: F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)  # noqa: E731
    x = up(decoder.score(features[4]), 4) + decoder.fusions[0].score(features[3])
    x = up(x, 8) + decoder.fusions[1].score(features[2])
    torch.testing.assert_close(decoder(features, None, [64, 64]), up(x, 64))
    assert all(isinstance(m, Upsample) and m.mode == "bilinear" for m in decoder.modules() if isinstance(m, Upsample))
    assert isinstance(ScoreUpsample("bilinear", 2, 3, 0, None).classes, nn.Identity)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s", "unet"])
@pytest.mark.parametrize("encoder", ["resnet18", "vgg11"])
def test_create_model_takes_bilinear(arch, encoder):
    model = segkit.create_model(arch, encoder=encoder, num_classes=2, in_channels=1, upsampling="bilinear")
    out = model(torch.randn(1, 1, 45, 61))
    assert out.shape == (1, 2, 45, 61)

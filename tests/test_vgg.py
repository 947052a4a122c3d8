"""VGG: configurations A/B/D/E with and without BN, torchvision layout and checkpoints, pooled features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segkit
from tests._oracles import count_params, randomize_norm_stats, save_state, shapes, torchvision_model

NAMES = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]


@pytest.mark.parametrize("name", NAMES)
def test_layout_equals_torchvision(name):
    with torch.device("meta"):
        ours = segkit.create_classifier(name)
    assert shapes(ours) == shapes(torchvision_model(name, meta=True))


def test_vgg16_parameter_count_matches_the_paper():
    with torch.device("meta"):
        assert count_params(segkit.create_classifier("vgg16")) == 138_357_544


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_torchvision_checkpoint_gives_same_logits(tmp_path, name):
    torch.manual_seed(0)
    reference = randomize_norm_stats(torchvision_model(name)).eval()
    path = save_state(reference, tmp_path / f"{name}.pth")
    ours = segkit.create_classifier(name, weights=path).eval()
    encoder = segkit.create_encoder(name, weights=path).eval()  # drops the classifier head
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
        torch.testing.assert_close(encoder(x)[-1], reference.features(x))


def test_encoder_features_are_the_five_pools_with_their_switches():
    torch.manual_seed(0)
    encoder = segkit.create_encoder("vgg13_bn").eval()
    assert encoder.out_channels == (64, 128, 256, 512, 512)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
        plain = encoder(x)
    for f, g, s, r, c in zip(features, plain, switches, encoder.reductions, encoder.out_channels):
        assert f.shape == (2, c, 64 // r, 96 // r)
        torch.testing.assert_close(f, g)
        assert s.shape == f.shape and s.dtype == torch.int64
    # Pool 3's switches send pool 3's values back to the maxima of the map before it.
    with torch.no_grad():
        before_pool3 = encoder.features[:encoder._pool_positions[2]](x)
    unpooled = F.max_unpool2d(features[2], switches[2], 2, output_size=before_pool3.shape[-2:])
    mask = unpooled != 0
    torch.testing.assert_close(unpooled[mask], before_pool3[mask])

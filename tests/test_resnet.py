"""ResNets: torchvision checkpoints load and agree; shortcut options A/B/C and plain nets; CIFAR nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segkit
from segkit.encoders.resnet import BasicBlock, Bottleneck, ZeroPadShortcut
from tests._oracles import count_params, randomize_norm_stats, save_state, shapes, torchvision_model


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_layout_equals_torchvision(depth):
    """Every state-dict key and shape is torchvision's (built on the meta device: instant)."""
    with torch.device("meta"):
        ours = segkit.create_classifier(f"resnet{depth}")
    assert shapes(ours) == shapes(torchvision_model(f"resnet{depth}", meta=True))


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_checkpoint_gives_same_logits(tmp_path, depth):
    torch.manual_seed(depth)
    reference = randomize_norm_stats(torchvision_model(f"resnet{depth}")).eval()
    path = save_state(reference, tmp_path / f"resnet{depth}.pth")
    ours = segkit.create_classifier(f"resnet{depth}", weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_encoder_features_equal_torchvision_activations(tmp_path):
    torch.manual_seed(0)
    reference = randomize_norm_stats(torchvision_model("resnet34")).eval()
    path = save_state(reference, tmp_path / "resnet34.pth")
    encoder = segkit.create_encoder("resnet34", weights=path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        stem = reference.relu(reference.bn1(reference.conv1(x)))
        expected = [stem]
        y = reference.maxpool(stem)
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            y = layer(y)
            expected.append(y)
        got = encoder(x)
    assert len(got) == 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


# Parameter counts: torchvision's (option B) and the relations the paper's options imply.
def test_option_parameter_relations():
    with torch.device("meta"):
        a, b, c, plain = (count_params(segkit.create_classifier(n)) for n in ("resnet34_a", "resnet34", "resnet34_c", "plain34"))
    assert b == 21_797_672  # torchvision's resnet34
    assert a == plain  # option A shortcuts have no parameters
    # B adds one 1x1 projection + BN where the width grows: 64->128, 128->256, 256->512.
    assert b - a == sum(cin * cout + 2 * cout for cin, cout in [(64, 128), (128, 256), (256, 512)])
    # C projects on every one of the 16 blocks.
    blocks = [(64, 64)] * 3 + [(64, 128)] + [(128, 128)] * 3 + [(128, 256)] + [(256, 256)] * 5 + [(256, 512)] + [(512, 512)] * 2
    assert c - a == sum(cin * cout + 2 * cout for cin, cout in blocks)


def test_plain_and_option_a_share_parameters():
    """The plain net and option A differ only in the parameter-free shortcut: same state-dict layout."""
    with torch.device("meta"):
        assert shapes(segkit.create_classifier("plain18")) == shapes(segkit.create_classifier("resnet18_a"))


def test_option_a_shortcut_pads_zero_channels_and_subsamples():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = ZeroPadShortcut(2, 5, stride=2)(x)
    assert y.shape == (1, 5, 2, 2)
    torch.testing.assert_close(y[:, :2], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 2:]) == 0


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_zero_init_residual_makes_block_its_shortcut(block):
    """With the residual branch zeroed, an option-A block maps x >= 0 to its shortcut; a plain block to 0."""
    torch.manual_seed(0)
    x = torch.rand(2, 8, 8, 8)
    out_channels = 16 * block.expansion
    residual = block(8, 16, stride=2, shortcut="A").eval()
    torch.nn.init.zeros_(residual.last_bn.weight)
    torch.nn.init.zeros_(residual.last_bn.bias)
    torch.testing.assert_close(residual(x), ZeroPadShortcut(8, out_channels, 2)(x))
    plain = block(8, 16, stride=2, shortcut="none").eval()
    torch.nn.init.zeros_(plain.last_bn.weight)
    torch.nn.init.zeros_(plain.last_bn.bias)
    assert torch.count_nonzero(plain(x)) == 0


def test_zero_init_residual_option():
    model = segkit.create_classifier("resnet50", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for layer in (model.layer1, model.layer4) for b in layer)
    assert torch.count_nonzero(model.layer1[0].bn1.weight) > 0
    with pytest.raises(segkit.SegkitError, match="plain"):
        segkit.create_classifier("plain18", zero_init_residual=True)


def test_he_initialisation():
    """Convolutions start from N(0, 2 / fan_out) (He et al. 2015, fan-out mode as torchvision)."""
    torch.manual_seed(0)
    conv = segkit.create_encoder("resnet18").layer4[0].conv2  # 512 x 512 x 3 x 3
    expected = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.02
    assert abs(conv.weight.mean().item()) < expected * 0.01


# CIFAR nets, He et al. 2016 Section 4.2 and Table 6.
@pytest.mark.parametrize(
    ("name", "millions", "tolerance"),
    [("cifar_resnet20", 0.27, 0.005), ("cifar_resnet32", 0.46, 0.005), ("cifar_resnet44", 0.66, 0.005),
     ("cifar_resnet56", 0.85, 0.005), ("cifar_resnet110", 1.7, 0.05), ("cifar_resnet1202", 19.4, 0.05)],
)
def test_cifar_parameter_counts_match_the_paper(name, millions, tolerance):
    with torch.device("meta"):
        model = segkit.create_classifier(name)
    assert abs(count_params(model) / 1e6 - millions) < tolerance


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_net_has_6n_plus_2_layers_and_classifies_32x32(depth):
    residual = segkit.create_classifier(f"cifar_resnet{depth}")
    plain = segkit.create_classifier(f"cifar_plain{depth}")
    # Weighted layers on the main path: convolutions outside the shortcuts plus the fc layer.
    layers = [n for n, m in plain.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == depth
    assert count_params(plain) == count_params(residual)
    x = torch.randn(2, 3, 32, 32)
    assert residual(x).shape == plain(x).shape == (2, 10)


def test_cifar_rejects_a_depth_that_is_not_6n_plus_2():
    from segkit.encoders.resnet import CifarResNet

    with pytest.raises(segkit.SegkitError, match="6n\\+2"):
        CifarResNet(21)


def test_stem_switches_locate_the_maxima():
    """Unpooling the stem pool's output with its switches puts each maximum back where it was."""
    torch.manual_seed(0)
    encoder = segkit.create_encoder("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
        stem = features[0]
        pooled = F.max_pool2d(stem, 3, 2, 1)
        flat = stem.flatten(2)
        torch.testing.assert_close(flat.gather(2, switches[1].flatten(2)), pooled.flatten(2))

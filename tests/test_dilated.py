"""Dilated ResNet encoders (``create_encoder(name, output_stride=16|8)``) against torchvision and smp.

torchvision's ``resnet50(replace_stride_with_dilation=...)`` is the oracle for the bottleneck nets
(same checkpoint, same activations); smp's dilated ``resnet34`` encoder, with its first dilated
block given torchvision's rule (smp dilates that block too), is the oracle for basic blocks, which
torchvision refuses to dilate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segkit
from segkit import SegkitError
from segkit.encoders.base import switches_2x2
from tests._oracles import randomize_norm_stats, save_state, shapes, torchvision_model

DILATIONS = {16: [False, False, True], 8: [False, True, True]}


def _torchvision_levels(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    stem = model.relu(model.bn1(model.conv1(x)))
    levels = [stem]
    y = model.maxpool(stem)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        y = layer(y)
        levels.append(y)
    return levels


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet50_equals_torchvision_replace_stride_with_dilation(tmp_path, output_stride):
    """Same checkpoint file, same activations at every level, true strides reported."""
    torch.manual_seed(output_stride)
    reference = randomize_norm_stats(torchvision_model("resnet50", replace_stride_with_dilation=DILATIONS[output_stride])).eval()
    path = save_state(reference, tmp_path / "resnet50.pth")
    encoder = segkit.create_encoder("resnet50", weights=path, output_stride=output_stride).eval()
    assert encoder.reductions == (2, 4, 8, min(16, output_stride), output_stride)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got, expected = encoder(x), _torchvision_levels(reference, x)
    for level, reduction, a, b in zip(range(5), encoder.reductions, got, expected):
        assert a.shape[-2:] == (64 // reduction, 96 // reduction), level
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("depth", [50, 101, 152])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_every_convolution_is_torchvisions(depth, output_stride):
    """stride, dilation and padding of every convolution equal torchvision's dilated net (meta device)."""
    with torch.device("meta"):
        ours = segkit.create_encoder(f"resnet{depth}", output_stride=output_stride)
    reference = torchvision_model(f"resnet{depth}", meta=True, replace_stride_with_dilation=DILATIONS[output_stride])
    theirs = {n: m for n, m in reference.named_modules() if isinstance(m, nn.Conv2d)}
    convs = {n: m for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs.keys() == theirs.keys()
    for name, conv in convs.items():
        other = theirs[name]
        assert (conv.stride, conv.dilation, conv.padding) == (other.stride, other.dilation, other.padding), name
    expected = {k: v for k, v in shapes(reference).items() if not k.startswith("fc.")}
    assert shapes(ours) == expected  # torchvision's checkpoints load unchanged


def test_resnet34_equals_smps_dilated_encoder_with_torchvisions_first_block():
    """Basic blocks: smp's encoder dilates every convolution of a dilated stage; torchvision's rule
    (segkit's) keeps the first block at the previous dilation. With that one block changed, the two agree."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    theirs = smp.encoders.get_encoder("resnet34", weights=None, output_stride=8)
    randomize_norm_stats(theirs)
    for layer, previous in ((theirs.layer3, 1), (theirs.layer4, 2)):
        for conv in (layer[0].conv1, layer[0].conv2):
            conv.dilation, conv.padding = (previous, previous), (previous, previous)
    ours = segkit.create_encoder("resnet34", output_stride=8)
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, expected = ours(x), theirs(x)[1:]  # smp's first feature is the image
    for a, b in zip(got, expected):
        # Same arithmetic, but oneDNN may pick another convolution algorithm (it does here with one
        # thread, as scripts/test.sh runs the suite): rounding differs by ~5e-7 of the feature's scale.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    assert ours.reductions == (2, 4, 8, 8, 8)


@pytest.mark.parametrize("name", ["resnet18", "resnet34_a", "resnet50_c", "plain18"])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_true_strides_and_switches(name, output_stride):
    """Features are H / reduction; one switch tensor per x2 step that remains, each the argmax of a
    2x2 max over the stage's input (the stem's 3x3 max-pool for stride 4)."""
    encoder = segkit.create_encoder(name, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
    assert encoder.reductions == tuple(min(r, output_stride) for r in (2, 4, 8, 16, 32))
    for f, r in zip(features, encoder.reductions):
        assert f.shape[-2:] == (96 // r, 64 // r)
    assert len(switches) == output_stride.bit_length() - 1  # log2: one per x2 step
    torch.testing.assert_close(switches[0], switches_2x2(x))
    for k in range(2, len(switches)):  # steps 2**k -> 2**(k+1), k >= 2: the level at stride 2**k pooled 2x2
        assert torch.equal(switches[k], switches_2x2(features[k - 1]))
        restored = F.max_unpool2d(F.max_pool2d(features[k - 1], 2, ceil_mode=True), switches[k], 2,
                                  output_size=features[k - 1].shape[-2:])
        torch.testing.assert_close(F.max_pool2d(restored, 2, ceil_mode=True), F.max_pool2d(features[k - 1], 2, ceil_mode=True))


def test_dilated_classifier_checkpoint_loads_into_dilated_encoder(tmp_path):
    """An ImageNet-style classifier file (with its fc) loads into every output stride."""
    torch.manual_seed(1)
    path = save_state(torchvision_model("resnet18"), tmp_path / "resnet18.pth")
    for output_stride in (32, 16, 8):
        encoder = segkit.create_encoder("resnet18", weights=path, output_stride=output_stride)
        assert encoder.out_channels == (64, 64, 128, 256, 512)


@pytest.mark.parametrize("name", ["vgg16", "vgg11_bn", "googlenet", "inception_v3"])
def test_encoders_without_dilation_say_which_do(name):
    with pytest.raises(SegkitError, match=rf"encoder '{name}' cannot trade stride for dilation \(output_stride=16\).*ResNet.*tu-NAME.*output_stride=32"):
        segkit.create_encoder(name, output_stride=16)
    assert max(segkit.create_encoder(name, output_stride=32).reductions) == 32


@pytest.mark.parametrize("bad", [4, 12, 64, "16", True])
def test_bad_output_stride(bad):
    with pytest.raises(SegkitError, match="output_stride must be 32 .*16 or 8"):
        segkit.create_encoder("resnet18", output_stride=bad)


def test_timm_encoder_takes_output_stride():
    pytest.importorskip("timm")
    encoder = segkit.create_encoder("tu-resnet18", output_stride=16)
    assert encoder.reductions == (2, 4, 8, 16, 16)
    features, switches = encoder.forward_with_switches(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 4]
    assert len(switches) == 4

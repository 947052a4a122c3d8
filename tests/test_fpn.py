"""FPN (issue 14): parameter counts and outputs against smp's ``FPN``, the upsampling modes, errors.

smp is the oracle. Its decoder's state dict loads into segkit's unchanged (its classifier,
``segmentation_head.0``, is segkit's ``decoder.classifier``). smp resizes with
``align_corners=True`` in the semantic branch and the head; segkit uses ``False`` (pixel
centres, torchvision's convention), so the smp model's resizes are switched to ``False`` before
outputs are compared.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segkit
from segkit import SegkitError
from segkit.decoders.fpn import FPNBlock, FPNDecoder
from segkit.decoders.upsample import cycle_switches, max_unpool
from tests._oracles import count_params

smp = pytest.importorskip("segmentation_models_pytorch")
fpn_decoder = pytest.importorskip("segmentation_models_pytorch.decoders.fpn.decoder")

X2_MODES = ["nearest", "bilinear", "bed_of_nails", "max_unpool", "transposed"]


def _smp_fpn(monkeypatch, branch_mode: str, classes: int = 3, **kwargs) -> nn.Module:
    """smp's FPN with pixel-centre resizes (and the semantic branch in ``branch_mode``)."""

    def interpolate(x, scale_factor=None, mode="nearest", align_corners=None, **rest):
        if mode == "bilinear":  # the semantic branch's x2 steps
            mode = branch_mode
        return F.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=False if mode == "bilinear" else None, **rest)

    monkeypatch.setattr(fpn_decoder, "F", types.SimpleNamespace(interpolate=interpolate))
    torch.manual_seed(0)
    model = smp.FPN("resnet34", encoder_weights=None, classes=classes, **kwargs)
    model.segmentation_head[1] = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
    return model


def _load_smp(ours: nn.Module, theirs: nn.Module) -> None:
    state = {}
    for key, value in theirs.state_dict().items():
        if key.startswith("encoder.fc."):
            continue
        state[key.replace("segmentation_head.0.", "decoder.classifier.")] = value
    ours.load_state_dict(state, strict=True)


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
@pytest.mark.parametrize("merge", ["add", "cat"])
def test_parameter_count_equals_smps(encoder, merge):
    with torch.device("meta"):
        theirs = count_params(smp.FPN(encoder, encoder_weights=None, classes=7, decoder_merge_policy=merge))
        for mode in [None, "nearest", "bilinear", "bed_of_nails", "max_unpool"]:
            assert count_params(segkit.create_model("fpn", encoder=encoder, num_classes=7, upsampling=mode, merge=merge)) == theirs, mode
        # transposed adds one 2x2 up-convolution (with bias) per x2 step: three in the pyramid, six in the branch.
        transposed = count_params(segkit.create_model("fpn", encoder=encoder, num_classes=7, upsampling="transposed", merge=merge))
    assert transposed - theirs == 3 * (256 * 256 * 4 + 256) + 6 * (128 * 128 * 4 + 128)


@pytest.mark.parametrize("merge", ["add", "cat"])
def test_default_is_smps_fpn(monkeypatch, merge):
    """upsampling=None: nearest pyramid (Lin et al.), bilinear branch (Kirillov et al.): smp's outputs."""
    theirs = _smp_fpn(monkeypatch, "bilinear", decoder_merge_policy=merge)
    ours = segkit.create_model("fpn", encoder="resnet34", num_classes=3, merge=merge)
    _load_smp(ours, theirs)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_nearest_mode_is_smps_fpn_with_a_nearest_branch(monkeypatch):
    theirs = _smp_fpn(monkeypatch, "nearest")
    ours = segkit.create_model("fpn", encoder="resnet34", num_classes=3, upsampling="nearest")
    _load_smp(ours, theirs)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", X2_MODES)
@pytest.mark.parametrize("encoder", ["resnet18", "vgg11"])
def test_every_x2_mode_trains(mode, encoder):
    model = segkit.create_model("fpn", encoder=encoder, num_classes=3, in_channels=1, upsampling=mode)
    assert model.decoder.upsampling == mode and model.use_switches == (mode == "max_unpool")
    logits = model(torch.randn(2, 1, 50, 70))
    assert logits.shape == (2, 3, 50, 70)
    logits.mean().backward()
    assert model.encoder.conv1.weight.grad is not None if encoder == "resnet18" else True


def test_max_unpool_step_uses_the_steps_switches_cyclically():
    """A top-down step undoes the pooling of its own x2 step: channel c takes the switches of channel c mod C."""
    torch.manual_seed(0)
    block = FPNBlock("max_unpool", 8, 4)
    x, skip = torch.randn(1, 8, 3, 5), torch.randn(1, 4, 6, 10)
    _, switches = F.max_pool2d(torch.randn(1, 3, 6, 10), 2, 2, return_indices=True)
    expected = max_unpool(x, cycle_switches(switches, 8), [6, 10]) + block.skip_conv(skip)
    torch.testing.assert_close(block(x, skip, switches), expected)


def test_max_unpool_model_reads_the_right_switches():
    """With the encoder's switches replaced by zeros-only positions, every unpooled value lands top-left:
    the model then equals the same weights in bed_of_nails mode."""
    torch.manual_seed(0)
    unpool = segkit.create_model("fpn", encoder="resnet18", num_classes=2, upsampling="max_unpool").eval()
    nails = segkit.create_model("fpn", encoder="resnet18", num_classes=2, upsampling="bed_of_nails").eval()
    nails.load_state_dict(unpool.state_dict())
    x = torch.randn(1, 3, 64, 64)
    features, switches = unpool.encoder.forward_with_switches(x)
    top_left = []
    for s in switches:
        h, w = s.shape[-2:]
        rows = torch.arange(h).view(h, 1) * 2 * (2 * w) + torch.arange(w).view(1, w) * 2
        top_left.append(rows.expand_as(s).contiguous())
    with torch.no_grad():
        got = unpool.decoder(features, top_left, [64, 64])
        expected = nails.decoder(features, None, [64, 64])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("final", ["nearest", "transposed"])
def test_final_upsampling(final):
    model = segkit.create_model("fpn", encoder="resnet18", num_classes=2, final_upsampling=final)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    assert (count_params(model.decoder.up) > 0) == (final == "transposed")


def test_stride_4_first_timm_encoder():
    pytest.importorskip("timm")
    model = segkit.create_model("fpn", encoder="tu-convnext_atto", num_classes=2, upsampling="max_unpool")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)


def test_initialisation():
    """P5 and the laterals: linear projections (variance 1/fan_in); conv-GN-ReLU He; classifier Xavier."""
    torch.manual_seed(0)
    decoder = segkit.create_model("fpn", encoder="resnet50", num_classes=4).decoder
    for conv in (decoder.p5, decoder.p4.skip_conv, decoder.p3.skip_conv, decoder.p2.skip_conv):
        assert abs(conv.weight.std().item() * math.sqrt(conv.weight[0].numel()) - 1) < 0.06 and not conv.bias.any()
    for stage in (s for block in decoder.seg_blocks for s in block.block):
        conv, norm = stage.block[0], stage.block[1]
        assert abs(conv.weight.std().item() / math.sqrt(2.0 / conv.weight[0].numel()) - 1) < 0.06
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    assert decoder.classifier.weight.abs().max() <= math.sqrt(6.0 / (128 + 4)) and not decoder.classifier.bias.any()


def test_errors():
    with pytest.raises(SegkitError, match="final_upsampling.*'max_unpool'.*choose bilinear \\(the paper's\\), nearest or transposed"):
        segkit.create_model("fpn", encoder="resnet18", final_upsampling="max_unpool")
    with pytest.raises(SegkitError, match="multiple of 32"):
        segkit.create_model("fpn", encoder="resnet18", segmentation_channels=100)
    with pytest.raises(SegkitError, match="merge policy 'sum'; choose one of add, cat"):
        segkit.create_model("fpn", encoder="resnet18", merge="sum")
    with pytest.raises(SegkitError, match="four encoder levels at doubling strides.*\\(2, 4, 8, 16, 16\\).*output_stride=32"):
        FPNDecoder((64, 64, 128, 256, 512), (2, 4, 8, 16, 16), 2)
    with pytest.raises(SegkitError, match="fpn has no option 'output_stride'"):
        segkit.create_model("fpn", encoder="resnet18", output_stride=16)
    with pytest.raises(SegkitError, match="unknown upsampling mode 'bicubic'"):
        segkit.create_model("fpn", encoder="resnet18", upsampling="bicubic")


@pytest.mark.parametrize("mode", ["null", "max_unpool"])
def test_the_config_trains_from_the_cli_and_evaluates(tmp_path, mode, capsys):
    """configs/fpn_resnet34.yaml on tiny data for one epoch, then segkit evaluate on its run directory."""
    from segkit.cli import main

    overrides = [f"data.root={tmp_path / 'data'}", "data.synthetic.n=8", "data.synthetic.size=64", "trainer.epochs=1",
                 "trainer.batch_size=3", "trainer.val_interval=1", "output.plots=false", f"model.upsampling={mode}", "model.aux_classes=3"]
    assert main(["train", "configs/fpn_resnet34.yaml", "--out", str(tmp_path / "run"), *overrides]) == 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--quiet"]) == 0
    assert "mIoU:" in capsys.readouterr().out

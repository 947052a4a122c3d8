"""timm backbones as segkit encoders (``encoder="tu-NAME"``): contract, U-Net and FCN, weights, errors, CLI.

Nothing here touches the network: every test runs with ``HF_HUB_OFFLINE=1`` and an empty temporary
Hugging Face cache (and torch hub directory), and timm's pretrained weights are stand-ins written
into that cache or into a file by the test itself.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segkit
from segkit import SegkitError
from segkit.decoders import UnetDecoder
from segkit.decoders.fcn import FCNDecoder
from segkit.encoders.timm_encoder import list_timm_encoders
from segkit.heads import SegmentationHead
from segkit.models import SegmentationModel

timm = pytest.importorskip("timm")

MODES = ["transposed", "nearest", "bed_of_nails", "max_unpool"]
# One per family: a ResNet, a stride-4-first ConvNeXt, an EfficientNet and a MobileNetV3.
FAMILIES = ["tu-resnet18", "tu-convnext_atto", "tu-efficientnet_b0", "tu-mobilenetv3_small_100"]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """No test may download: offline Hugging Face hub, empty caches under ``tmp_path``.

    huggingface_hub reads its settings at import, so its module constants are patched as well as the
    environment (for anything that reads the environment later).
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the encoder contract ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_encoder_follows_timms_feature_info(name):
    encoder = segkit.create_encoder(name, in_channels=1)
    info = timm.create_model(name[3:], features_only=True).feature_info
    assert encoder.out_channels == tuple(info.channels()) and encoder.reductions == tuple(info.reduction())
    assert encoder.in_channels == 1 and encoder.min_input_size == max(encoder.reductions)
    features = encoder(torch.randn(2, 1, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // r, 96 // r) for c, r in zip(encoder.out_channels, encoder.reductions)]
    with pytest.raises(SegkitError, match="in_channels=3"):
        encoder(torch.randn(2, 3, 64, 64))
    with pytest.raises(SegkitError, match="at least 32x32"):
        encoder(torch.randn(2, 1, 16, 64))


@pytest.mark.parametrize("name", ["tu-resnet18", "tu-convnext_atto"])
@pytest.mark.parametrize("size", [(64, 96), (70, 90)])
def test_switches_one_per_x2_step(name, size):
    """switches[k]: a 2x2 max over the map at stride 2**k, shaped like the level at 2**(k + 1).

    ConvNeXt has no level at stride 2: its first two switch tensors pool the image and the image's
    2x2 max-pool. On 70 rows its 4x4 patchify gives 17, not ceil(35 / 2) = 18: the switches follow.
    """
    encoder = segkit.create_encoder(name, in_channels=2).eval()
    x = torch.randn(1, 2, *size)
    features, switches = encoder.forward_with_switches(x)
    assert len(switches) == 5 and [s.shape[1] for s in switches] == list(encoder.switch_channels)
    assert switches[0].shape[1] == 2
    levels = dict(zip(encoder.reductions, features))
    for k, indices in enumerate(switches):
        if 2 ** (k + 1) in levels:
            assert indices.shape[-2:] == levels[2 ** (k + 1)].shape[-2:]
    expected = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)[1]
    torch.testing.assert_close(switches[0][..., : expected.shape[-2], : expected.shape[-1]], expected[..., : switches[0].shape[-2], : switches[0].shape[-1]])


def test_importing_segkit_does_not_import_timm():
    code = "import sys, segkit; segkit.create_model('unet', encoder='resnet18'); print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- U-Net and FCN ----------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", FAMILIES)
def test_unet_trains_one_step_and_takes_odd_sizes(name, in_channels):
    torch.manual_seed(0)
    model = segkit.create_model("unet", encoder=name, num_classes=3, in_channels=in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = torch.randn(2, in_channels, 64, 64), torch.randint(0, 3, (2, 64, 64))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    # Every decoder and head weight moves, and so does the encoder's stem. (timm starts residual
    # branches at or near zero, zero_init_last / layer scale 1e-6: some of theirs barely move at first.)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert {n for n in before if not n.startswith("encoder.")} <= moved
    assert f"encoder.{model.encoder.first_conv}.weight" in moved
    with torch.no_grad():
        assert model.eval()(torch.randn(2, in_channels, 70, 90)).shape == (2, 3, 70, 90)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["tu-resnet18", "tu-convnext_atto"])
def test_unet_every_upsampling_mode(name, mode):
    model = segkit.create_model("unet", encoder=name, num_classes=2, in_channels=1, upsampling=mode)
    y = model(torch.randn(2, 1, 70, 90))
    assert y.shape == (2, 2, 70, 90)
    y.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_unet_decoder_on_a_stride_4_first_encoder_is_smps():
    """ConvNeXt starts at stride 4: five blocks, the last two without a skip, as smp builds it.

    With ``upsampling="nearest"`` the whole model is smp's ``Unet("tu-convnext_atto")``: same
    state-dict keys (up to the head's name) and the same logits.
    """
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    theirs = smp.Unet("tu-convnext_atto", encoder_weights=None, in_channels=1, classes=2).eval()
    ours = segkit.create_model("unet", encoder="tu-convnext_atto", in_channels=1, num_classes=2, upsampling="nearest").eval()
    blocks = ours.decoder.blocks
    assert [b.conv1[0].in_channels for b in blocks] == [320 + 160, 256 + 80, 128 + 40, 64, 32]
    assert [b.conv2[0].out_channels for b in blocks] == [256, 128, 64, 32, 16]
    state = {k.replace("segmentation_head.0.", "head."): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("name", ["tu-resnet18", "tu-convnext_atto", "tu-efficientnet_b0", "tu-mobilenetv3_small_100"])
def test_unet_nearest_has_smps_parameter_count_to_the_unit(name):
    smp = pytest.importorskip("segmentation_models_pytorch")
    ours = segkit.create_model("unet", encoder=name, upsampling="nearest", num_classes=1)
    theirs = smp.Unet(name, encoder_weights=None, classes=1)
    assert _params(ours) == _params(theirs)
    if name == "tu-resnet18":
        assert _params(ours) == 14_328_209


def _truncated_resnet18() -> segkit.encoders.Encoder:
    """A timm ResNet-18 cut after layer3: deepest stride 16."""
    return segkit.create_encoder("tu-resnet18", in_channels=1, out_indices=(0, 1, 2, 3))


def test_unet_on_an_encoder_whose_deepest_stride_is_16():
    encoder = _truncated_resnet18()
    assert encoder.reductions == (2, 4, 8, 16)
    decoder = UnetDecoder(encoder.out_channels, reductions=encoder.reductions, upsampling="max_unpool",
                          switch_channels=encoder.switch_channels)
    assert [b.conv2[0].out_channels for b in decoder.blocks] == [128, 64, 32, 16]  # smp's default, from stride 8 down
    model = SegmentationModel(encoder, decoder, SegmentationHead(decoder.out_channels, 2))
    assert model.multiple == 16 and model(torch.randn(2, 1, 70, 90)).shape == (2, 2, 70, 90)
    with pytest.raises(SegkitError, match="4 positive integers"):
        UnetDecoder(encoder.out_channels, (256, 128, 64, 32, 16), reductions=encoder.reductions)


def test_unet_on_an_encoder_whose_deepest_stride_is_64():
    """EfficientViT-M0: levels at 16, 32 and 64; six blocks, the last four without a skip."""
    model = segkit.create_model("unet", encoder="tu-efficientvit_m0", num_classes=2, upsampling="max_unpool")
    assert model.encoder.reductions == (16, 32, 64) and len(model.decoder.blocks) == 6
    assert [b.conv2[0].out_channels for b in model.decoder.blocks] == [512, 256, 128, 64, 32, 16]
    assert model(torch.randn(2, 3, 70, 90)).shape == (2, 2, 70, 90)


@pytest.mark.parametrize("mode", MODES)
def test_fcn8s_on_tu_resnet18(mode):
    model = segkit.create_model("fcn8s", encoder="tu-resnet18", num_classes=3, in_channels=1, upsampling=mode)
    y = model(torch.randn(2, 1, 70, 90))
    assert y.shape == (2, 3, 70, 90)
    y.mean().backward()


def test_fcn8s_on_a_stride_4_first_encoder():
    model = segkit.create_model("fcn8s", encoder="tu-convnext_atto", num_classes=3, upsampling="max_unpool")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_fcn2s_needs_features_at_stride_2():
    with pytest.raises(SegkitError, match=r"fcn2s needs encoder features at strides 2, 4, 8, 16 and 32 .*\(4, 8, 16, 32\)"):
        segkit.create_model("fcn2s", encoder="tu-convnext_atto", num_classes=3)
    assert segkit.create_model("fcn4s", encoder="tu-convnext_atto", num_classes=3)(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_incompatible_architectures_say_why():
    encoder = _truncated_resnet18()
    with pytest.raises(SegkitError, match=r"fcn8s needs encoder features at strides 8, 16 and 32 .*\(2, 4, 8, 16\)"):
        FCNDecoder(encoder.out_channels, 3, stride=8, reductions=encoder.reductions)
    with pytest.raises(SegkitError, match=r"increasing power-of-two strides.*\(16, 16, 16\)"):
        segkit.create_model("unet", encoder="tu-vit_tiny_patch16_224", num_classes=2)


# --- weights ----------------------------------------------------------------------------------


def _stand_in_weights() -> dict[str, torch.Tensor]:
    """A state dict of timm's full ResNet-18 (classifier included), random: what a published file holds."""
    torch.manual_seed(1)
    return {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    state = _stand_in_weights()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        pytest.importorskip("safetensors.torch").save_file(state, str(path))
    encoder = segkit.create_encoder("tu-resnet18", in_channels=1, weights=str(path))
    torch.testing.assert_close(encoder.model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # timm adapts the 3-channel stem to one channel by summing over RGB
    torch.testing.assert_close(encoder.model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def _put_in_hub_cache(cache, repo: str, state: dict[str, torch.Tensor]) -> None:
    """Lay ``state`` out as huggingface_hub caches ``repo``'s model.safetensors (refs/main -> snapshot)."""
    save_file = pytest.importorskip("safetensors.torch").save_file
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(state, str(snapshot / "model.safetensors"))


@pytest.mark.parametrize("name,weights", [
    ("tu-resnet18", "a1_in1k"),
    ("tu-resnet18", "resnet18.a1_in1k"),
    ("tu-resnet18", "imagenet"),  # timm's default tag for resnet18 is a1_in1k
    ("tu-resnet18.a1_in1k", "imagenet"),
])
def test_timm_weights_saved_to_a_temp_cache_load_by_tag_offline(offline_hub, name, weights):
    state = _stand_in_weights()
    _put_in_hub_cache(offline_hub, "timm/resnet18.a1_in1k", state)
    encoder = segkit.create_encoder(name, weights=weights)
    torch.testing.assert_close(encoder.model.conv1.weight, state["conv1.weight"])
    model = segkit.create_model("unet", encoder=name, encoder_weights=weights, num_classes=2)
    torch.testing.assert_close(model.encoder.model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_weights_not_in_the_cache_offline_say_how_to_get_them(offline_hub):
    with pytest.raises(SegkitError, match=r"resnet18\.a2_in1k .*not in the Hugging Face cache.*run once online.*place the files in that cache"):
        segkit.create_encoder("tu-resnet18", weights="a2_in1k")


def test_weights_errors(tmp_path):
    with pytest.raises(SegkitError, match="no pretrained tag 'nope' for resnet18; its tags: a1_in1k"):
        segkit.create_encoder("tu-resnet18", weights="nope")
    with pytest.raises(SegkitError, match="timm's resnet34 weights, but the encoder is tu-resnet18"):
        segkit.create_encoder("tu-resnet18", weights="resnet34.a1_in1k")
    with pytest.raises(SegkitError, match="already names the pretrained tag 'a1_in1k'"):
        segkit.create_encoder("tu-resnet18.a1_in1k", weights="a2_in1k")
    with pytest.raises(SegkitError, match="timm publishes no pretrained weights for botnet50ts_256"):
        segkit.create_encoder("tu-botnet50ts_256", weights="imagenet")
    with pytest.raises(SegkitError, match="does not exist"):
        segkit.create_encoder("tu-resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SegkitError, match=r"could not load .*other\.pth into resnet18"):
        segkit.create_encoder("tu-resnet18", weights=str(tmp_path / "other.pth"))


# --- names and errors ---------------------------------------------------------------------------


def test_unknown_timm_name_says_how_to_list():
    with pytest.raises(SegkitError, match=r"timm has no model 'resnet1888'.*did you mean tu-resnet18.*segkit list --timm"):
        segkit.create_encoder("tu-resnet1888")
    with pytest.raises(SegkitError, match="segkit list --timm"):
        segkit.create_model("unet", encoder="tu-not_a_model", num_classes=2)


def test_missing_timm_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(SegkitError, match=r"pip install segkit\[timm\]"):
        segkit.create_encoder("tu-resnet18")
    with pytest.raises(SegkitError, match=r"pip install segkit\[timm\]"):
        list_timm_encoders("resnet*")


def test_models_timm_cannot_build_with_features_only_are_a_segkit_error(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("features_only not implemented for this model")

    monkeypatch.setattr(timm, "create_model", refuse)
    with pytest.raises(SegkitError, match=r"could not build resnet18 with features_only=True.*segkit list --timm"):
        segkit.create_encoder("tu-resnet18")


# --- command line ---------------------------------------------------------------------------------


def test_cli_lists_timm_names(capsys):
    from segkit.cli import main

    assert main(["list", "--timm", "convnext_at*"]) == 0
    assert "tu-convnext_atto" in capsys.readouterr().out.split()
    assert main(["list", "--timm", "tu-resnet18*", "--pretrained"]) == 0
    assert "tu-resnet18.a1_in1k" in capsys.readouterr().out.split()
    assert main(["list", "--timm", "no_such_model*"]) == 2
    assert "no timm model matches" in capsys.readouterr().err


def test_cli_list_encoders_says_how_to_list_timms(capsys):
    from segkit.cli import main

    assert main(["list", "--encoders"]) == 0
    out, err = capsys.readouterr()
    assert "resnet18" in out.split() and "segkit list --timm" in err
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "resnet18" in out.split() and err == ""

"""Checkpoint files: torchvision format, in_channels adaptation, head re-initialisation, clear errors."""

from __future__ import annotations

import collections
import logging

import pytest
import segmentation_models_pytorch.encoders._utils as smp_utils
import torch

import segkit
from segkit import SegkitError
from segkit.encoders import adapt_first_conv, read_checkpoint
from tests._oracles import randomize_norm_stats, save_state, torchvision_model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norm_stats(torchvision_model("resnet18")).eval()
    return model, save_state(model, tmp_path_factory.mktemp("ckpt") / "resnet18-f37072fd.pth")


@pytest.mark.parametrize("in_channels", [1, 2, 4, 7])
def test_first_conv_adaptation_matches_smp(resnet18_file, in_channels):
    reference, path = resnet18_file
    patched = torchvision_model("resnet18")
    patched.load_state_dict(reference.state_dict())
    smp_utils.patch_first_conv(patched, in_channels, pretrained=True)
    ours = segkit.create_encoder("resnet18", in_channels=in_channels, weights=path)
    torch.testing.assert_close(ours.conv1.weight, patched.conv1.weight)
    assert ours.in_channels == in_channels
    torch.testing.assert_close(adapt_first_conv(reference.conv1.weight, in_channels), patched.conv1.weight)


def test_grey_image_gives_the_same_logits_with_one_channel(resnet18_file):
    """Summing the RGB filters is exact for a grey image repeated over three channels."""
    reference, path = resnet18_file
    grey = segkit.create_classifier("resnet18", in_channels=1, weights=path).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), reference(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_other_head_size_is_reinitialised_and_logged(resnet18_file, caplog):
    reference, path = resnet18_file
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = segkit.create_classifier("resnet18", num_classes=5, weights=path)
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert "fc" in caplog.text and "fresh initialisation" in caplog.text


def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, resnet18_file):
    reference, _ = resnet18_file
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 3}, path)
    model = segkit.create_classifier("resnet18", weights=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_checkpoint_without_batchnorm_counters_loads(tmp_path, resnet18_file):
    """Old torchvision files predate BatchNorm's num_batches_tracked."""
    reference, _ = resnet18_file
    state = collections.OrderedDict((k, v) for k, v in reference.state_dict().items() if "num_batches_tracked" not in k)
    torch.save(state, tmp_path / "old.pth")
    segkit.create_encoder("resnet18", weights=tmp_path / "old.pth")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SegkitError, match="nowhere.pth does not exist"):
        segkit.create_encoder("resnet18", weights=tmp_path / "nowhere.pth")


def test_directory_is_refused(tmp_path):
    with pytest.raises(SegkitError, match="is not a file"):
        segkit.create_encoder("resnet18", weights=tmp_path)


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(SegkitError, match="broken.pth is not a readable PyTorch checkpoint"):
        segkit.create_encoder("resnet18", weights=path)


def test_truncated_file_is_refused(tmp_path, resnet18_file):
    _, path = resnet18_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(SegkitError, match="cut.pth"):
        segkit.create_encoder("resnet18", weights=cut)


class Pickled:  # an arbitrary object: loading it would need unsafe unpickling
    pass


def test_file_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Pickled()}, path)
    with pytest.raises(SegkitError, match=r"object \(\S*Pickled\) that only unsafe unpickling could load"):
        read_checkpoint(path)


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"conv1.weight": [1, 2, 3]}, path)
    with pytest.raises(SegkitError, match="'conv1.weight' that is not a named tensor"):
        read_checkpoint(path)


def test_checkpoint_of_another_architecture_lists_missing_tensors(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(SegkitError) as info:
        segkit.create_encoder("resnet34", weights=path)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert "missing layer1.2.conv1.weight" in message  # resnet34 has a third block in layer1


def test_option_b_checkpoint_into_option_a_lists_unexpected_tensors(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(SegkitError, match="unexpected layer2.0.downsample.0.weight"):
        segkit.create_encoder("resnet18_a", weights=path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, resnet18_file):
    reference, _ = resnet18_file
    state = reference.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(SegkitError, match=r"layer1.0.conv1.weight \(64, 64, 1, 1\) in the file vs \(64, 64, 3, 3\)"):
        segkit.create_classifier("resnet18", weights=tmp_path / "bad.pth")


def test_vgg_file_into_resnet_is_refused(tmp_path):
    with torch.device("meta"):
        vgg = torchvision_model("vgg11", meta=True)
    state = {k: torch.zeros(v.shape) for k, v in vgg.state_dict().items() if k.startswith("features.0")}
    torch.save(state, tmp_path / "vgg.pth")
    with pytest.raises(SegkitError, match="missing conv1.weight"):
        segkit.create_encoder("resnet18", weights=tmp_path / "vgg.pth")

"""Published weights by name (``weights="imagenet"``, ``"imagenet1k_v2"``, ...), fully offline.

Files saved from torchvision's randomly initialised models stand in for the published ones, under
their published file names in a temporary ``TORCH_HOME``; torch.hub's downloader is replaced by
one that fails the test, so any network attempt shows. torchvision's own models are the oracle for
what a loaded file must compute.
"""

from __future__ import annotations

import re

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision

import segkit
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.encoders.weights import lookup_published, published_weights, resolve_weights
from segkit.errors import SegkitError


@pytest.fixture
def resnet18_published(hub) -> torchvision.models.ResNet:
    """torchvision's resnet18 (random, seeded) saved as the published resnet18-f37072fd.pth."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), hub / "resnet18-f37072fd.pth")
    return model


def test_imagenet_resolves_to_the_default_variant_file(hub):
    for name in ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"):
        (hub / name).write_bytes(b"stand-in")
    # resnet50's default is torchvision's V2 recipe; V1 stays reachable by its name, in any case.
    assert resolve_weights("resnet50", "imagenet") == hub / "resnet50-11ad3fa6.pth"
    assert resolve_weights("resnet50", "imagenet1k_v2") == hub / "resnet50-11ad3fa6.pth"
    assert resolve_weights("resnet50", "IMAGENET1K_V1") == hub / "resnet50-0676ba61.pth"
    variants = {w.variant: w for w in published_weights("resnet50")}
    assert set(variants) == {"imagenet1k_v1", "imagenet1k_v2"}
    assert variants["imagenet1k_v2"].default and variants["imagenet1k_v2"].acc1 == pytest.approx(80.858)
    assert variants["imagenet1k_v1"].url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    # A path stays a path; None stays None.
    assert resolve_weights("resnet50", "weights/resnet50.pth") == Path("weights/resnet50.pth")
    assert resolve_weights("resnet50", None) is None


@pytest.mark.parametrize("arch", ["vgg16_bn", "googlenet", "inception_v3", "resnet152", "vgg11"])
def test_every_published_architecture_names_torchvisions_file(hub, arch):
    enum = torchvision.models.get_model_weights(arch)
    assert lookup_published(arch, "imagenet").url == enum.DEFAULT.url
    assert lookup_published(arch, "imagenet").path == hub / enum.DEFAULT.url.rsplit("/", 1)[-1]


def test_named_weights_load_and_give_torchvisions_logits(resnet18_published):
    x = torch.randn(2, 3, 64, 64)
    clf = segkit.create_classifier("resnet18", weights="imagenet").eval()
    with torch.no_grad():
        torch.testing.assert_close(clf(x), resnet18_published(x))
    encoder = segkit.create_encoder("resnet18", weights="imagenet1k_v1").eval()
    tv = resnet18_published
    with torch.no_grad():
        deepest = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(encoder(x)[-1], deepest)
    # In a model, on grey images: the first convolution is summed over RGB, as for files.
    model = segkit.create_model("unet", encoder="resnet18", num_classes=2, in_channels=1, encoder_weights="imagenet")
    torch.testing.assert_close(model.encoder.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))


def test_fcn_reads_the_named_file_for_the_encoder(resnet18_published):
    model = segkit.create_model("fcn8s", encoder="resnet18", num_classes=3, encoder_weights="imagenet")
    assert torch.equal(model.encoder.layer4[1].conv2.weight, resnet18_published.layer4[1].conv2.weight)


def test_offline_without_the_file_names_the_url_and_the_path(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    path = hub / "resnet18-f37072fd.pth"
    with pytest.raises(SegkitError) as err:
        segkit.create_encoder("resnet18", weights="imagenet")
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(err.value)
    assert f"copy that file to {path}" in str(err.value)
    assert not path.exists()


def test_download_goes_into_the_cache_with_the_hash_check_then_never_again(hub, monkeypatch):
    calls = []
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst), hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    segkit.create_encoder("resnet18", weights="imagenet")
    segkit.create_encoder("resnet18", weights="imagenet")
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", hub / "resnet18-f37072fd.pth", "f37072fd")]


def test_a_corrupt_cached_file_is_named_with_the_fix(hub):
    path = hub / "resnet18-f37072fd.pth"
    path.write_bytes(b"PK\x03\x04 a download cut short")
    with pytest.raises(SegkitError, match=f"{path}.*is a cached download: delete {path} and fetch it again"):
        segkit.create_encoder("resnet18", weights="imagenet")


@pytest.mark.parametrize(("arch", "why"), [
    ("resnet34_a", "shortcut option A; torchvision's ImageNet ResNets use option B"),
    ("alexnet", "the paper's original layer sizes"),
    ("cifar_resnet20", "no published weights"),
    ("plain18", "no published weights"),
])
def test_architectures_without_published_weights_say_why(hub, arch, why):
    build = segkit.create_classifier if arch in ("alexnet", "cifar_resnet20") else segkit.create_encoder
    with pytest.raises(SegkitError, match=why):
        build(arch, weights="imagenet")


def test_unknown_variant_lists_the_names(hub):
    with pytest.raises(SegkitError, match="resnet50 has no published weights 'imagenet1k_v3'; its names are imagenet, imagenet1k_v1, imagenet1k_v2"):
        segkit.create_encoder("resnet50", weights="imagenet1k_v3")


def test_cli_lists_and_fetches(resnet18_published, hub, capsys):
    assert main(["weights", "list", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet18 +imagenet1k_v1 +yes +ImageNet top-1 69\.76 +yes +" + re.escape(str(hub / "resnet18-f37072fd.pth")), out)
    assert main(["weights", "list"]) == 0  # every name: the ImageNet encoders and torchvision's whole segmentation models
    out = capsys.readouterr().out
    assert re.search(r"deeplabv3_resnet50 +coco_with_voc_labels_v1 +yes +COCO-VOC mIoU 66\.4", out)
    assert re.search(r"vgg16 +imagenet1k_features +no", out) and "nan" not in out  # no score published: blank
    assert main(["weights", "fetch", "resnet18"]) == 0
    assert "(already cached)" in capsys.readouterr().out
    assert main(["weights", "list", "resnet50"]) == 0
    assert " no " in capsys.readouterr().out
    assert main(["weights", "fetch", "alexnet"]) == 2
    assert "'one weird trick' variant" in capsys.readouterr().err


def test_training_with_named_weights_writes_imagenet_statistics_into_the_run_config(resnet18_published, tmp_path):
    from segkit.config import load_config
    from segkit.data import make_synthetic
    from segkit.engine.train import train

    make_synthetic(tmp_path / "data", n=4, size=64, seed=0)
    cfg = config_from_dict({
        "model": {"arch": "unet", "encoder": "resnet18", "encoder_weights": "imagenet", "num_classes": 3, "in_channels": 1,
                  "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}},
        "data": {"kind": "folder", "root": str(tmp_path / "data"), "train_transforms": [], "val_transforms": []},
        "trainer": {"epochs": 1, "batch_size": 2}, "output": {"plots": False},
    })
    train(cfg, tmp_path / "run", progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert list(saved.data.options.mean) == [0.449] and list(saved.data.options.std) == [0.226]
    # A config that sets its own statistics keeps them.
    own = config_from_dict({**cfg, "data": {**cfg.data, "options": {"mean": 0.2, "std": 0.15}}})
    train(own, tmp_path / "own", progress=False)
    saved = load_config(tmp_path / "own" / "config.yaml")
    assert saved.data.options.mean == 0.2 and saved.data.options.std == 0.15


@pytest.mark.parametrize("model, expected", [
    ({"encoder_weights": "imagenet"}, True),
    ({"weights": "coco_with_voc_labels_v1", "arch": "deeplabv3", "encoder": "resnet50"}, True),
    ({"encoder_weights": None}, False),
])
def test_named_weights_bring_imagenet_standardisation_into_the_config(model, expected):
    from segkit.config import config_from_dict
    from segkit.engine.builders import resolve_normalisation

    cfg = config_from_dict({"model": {"in_channels": 3, **model}})
    resolve_normalisation(cfg)
    assert ("mean" in cfg.data.options) is expected
    if expected:
        assert list(cfg.data.options.mean) == [0.485, 0.456, 0.406] and list(cfg.data.options.std) == [0.229, 0.224, 0.225]
    given = config_from_dict({"model": {"in_channels": 3, **model}, "data": {"options": {"mean": 0.5, "std": 0.25}}})
    resolve_normalisation(given)
    assert given.data.options.mean == 0.5  # the config's own values win


def test_an_empty_weights_string_is_named_not_taken_for_the_current_folder():
    """``Path("")`` is ".": the error said "weights path . is not a file"."""
    for build in (lambda: segkit.create_encoder("resnet18", weights=""),
                  lambda: segkit.create_model("unet", encoder="resnet18", num_classes=2, encoder_weights=" ")):
        with pytest.raises(SegkitError, match=r"^weights is an empty string \(model\.weights or model\.encoder_weights in a config\); pass a checkpoint"):
            build()

"""torchvision's published segmentation models in segkit (issue 14), fully offline.

torchvision's ``deeplabv3_resnet50`` and ``fcn_resnet50`` (``weights=None, weights_backbone=None,
aux_loss=True``, random weights and BatchNorm statistics) are saved as whole-model files and loaded
with ``create_model(..., weights=FILE)``: segkit must give torchvision's logits, and its auxiliary
logits in training mode. Published names resolve to torchvision's file names in a temporary
``TORCH_HOME``; any download attempt fails the test.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision
from torch import nn

import segkit
from segkit import SegkitError
from segkit.archs import AuxLogitsModel, from_torchvision
from segkit.config import config_from_dict
from segkit.encoders.weights import published_weights, resolve_model_weights
from segkit.engine.builders import build_loss_fn, build_model_from_config
from segkit.engine.tasks import make_task
from tests._oracles import count_params, randomize_norm_stats, shapes

ARCHS = {"deeplabv3": "deeplabv3", "fcn_head": "fcn"}  # segkit arch -> torchvision builder prefix
FILES = {  # torchvision's published file names
    ("deeplabv3", "resnet50"): "deeplabv3_resnet50_coco-cd0a2569.pth",
    ("deeplabv3", "resnet101"): "deeplabv3_resnet101_coco-586e9e4e.pth",
    ("fcn_head", "resnet50"): "fcn_resnet50_coco-1167a1af.pth",
    ("fcn_head", "resnet101"): "fcn_resnet101_coco-7ecb50ca.pth",
}


def _torchvision(arch: str, encoder: str, meta: bool = False, **kwargs) -> nn.Module:
    builder = getattr(torchvision.models.segmentation, f"{ARCHS[arch]}_{encoder}")
    options = {"weights": None, "weights_backbone": None, "aux_loss": True, **kwargs}
    if meta:
        with torch.device("meta"):
            return builder(**options)
    return builder(**options)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """torchvision's two resnet50 models (seeded random weights and statistics) and their files."""
    folder = tmp_path_factory.mktemp("torchvision")
    models = {}
    for seed, arch in enumerate(ARCHS):
        torch.manual_seed(seed)
        model = randomize_norm_stats(_torchvision(arch, "resnet50"), seed).eval()
        path = folder / FILES[(arch, "resnet50")]
        torch.save(model.state_dict(), path)
        models[arch] = (model, path)
    return models


def _build(arch: str, **kwargs) -> nn.Module:
    options = {"encoder": "resnet50", "num_classes": 21, "output_stride": 8, "aux_head": "fcn", **kwargs}
    return segkit.create_model(arch, **options)


@pytest.mark.parametrize("size", [(64, 96), (97, 131), (33, 47)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_whole_model_file_gives_torchvisions_logits(saved, arch, size):
    """At any size: the image goes in unpadded, as torchvision's (zero padding to a multiple of 8
    changed the logits by up to a quarter of the largest at 96x100)."""
    reference, path = saved[arch]
    model = _build(arch, weights=path).eval()
    assert isinstance(model, AuxLogitsModel)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert isinstance(ours, torch.Tensor)  # eval mode: the main logits only
    torch.testing.assert_close(ours, theirs["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_mode_also_returns_torchvisions_aux_logits(saved, arch):
    """Dropout off in both (it is random); BatchNorm in training mode uses the batch's statistics in both."""
    reference, path = saved[arch]
    model = _build(arch, weights=path)
    reference = _torchvision(arch, "resnet50")
    reference.load_state_dict(torch.load(path, weights_only=True))
    for m in [*model.modules(), *reference.modules()]:
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.train(), reference.train()
    x = torch.randn(2, 3, 61, 75)
    logits, aux = model(x)
    expected = reference(x)
    torch.testing.assert_close(logits, expected["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux, expected["aux"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("encoder", ["resnet50", "resnet101"])
def test_every_published_layout_converts_key_for_key(arch, encoder):
    """Every tensor of torchvision's model has a segkit name of the same shape (meta device), and the counts agree."""
    theirs = _torchvision(arch, encoder, meta=True)
    with torch.device("meta"):
        ours = _build(arch, encoder=encoder)
    assert {k: tuple(v.shape) for k, v in from_torchvision(theirs.state_dict(), arch).items()} == shapes(ours)
    assert count_params(ours) == count_params(theirs)


def test_published_counts():
    """torchvision's published parameter counts (with the auxiliary head)."""
    with torch.device("meta"):
        assert count_params(_build("deeplabv3")) == 42_004_074
        assert count_params(_build("deeplabv3", encoder="resnet101")) == 60_996_202
        assert count_params(_build("fcn_head")) == 35_322_218
        assert count_params(_build("fcn_head", encoder="resnet101")) == 54_314_346


@pytest.mark.parametrize(("arch", "encoder"), sorted(FILES))
def test_names_resolve_to_torchvisions_files(hub, arch, encoder):
    (hub / FILES[(arch, encoder)]).write_bytes(b"stand-in")
    assert resolve_model_weights(arch, encoder, "coco_with_voc_labels_v1") == hub / FILES[(arch, encoder)]
    assert resolve_model_weights(arch, encoder, "COCO_WITH_VOC_LABELS_V1") == hub / FILES[(arch, encoder)]
    [variant] = published_weights(f"{ARCHS[arch]}_{encoder}")
    assert variant.url == f"https://download.pytorch.org/models/{FILES[(arch, encoder)]}"
    assert variant.miou == {"deeplabv3_resnet50": 66.4, "deeplabv3_resnet101": 67.4, "fcn_resnet50": 60.5, "fcn_resnet101": 63.7}[variant.arch]


def test_named_weights_load_from_the_cache(hub, saved):
    reference, path = saved["deeplabv3"]
    (hub / path.name).write_bytes(path.read_bytes())
    model = _build("deeplabv3", weights="coco_with_voc_labels_v1").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x)["out"], rtol=1e-5, atol=1e-5)


def test_offline_without_the_file_names_the_url_and_the_path(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SegkitError) as err:
        _build("fcn_head", weights="coco_with_voc_labels_v1")
    message = str(err.value)
    assert "https://download.pytorch.org/models/fcn_resnet50_coco-1167a1af.pth" in message
    assert f"copy that file to {hub / 'fcn_resnet50_coco-1167a1af.pth'}" in message
    assert "segkit weights fetch fcn_resnet50" in message


def test_names_that_are_not_published(hub):
    with pytest.raises(SegkitError, match="no published weights are known for deeplabv3plus on resnet50; torchvision publishes deeplabv3 on resnet50"):
        segkit.create_model("deeplabv3plus", encoder="resnet50", weights="coco_with_voc_labels_v1")
    with pytest.raises(SegkitError, match="deeplabv3 on resnet50 has no published weights 'voc'; its names are coco_with_voc_labels_v1"):
        _build("deeplabv3", weights="voc")


def test_new_classes_and_grey_images_fine_tune_from_the_file(saved, caplog):
    """Another num_classes: the classifiers start fresh (logged), the rest loads; 1 channel: the stem is summed."""
    reference, path = saved["deeplabv3"]
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = _build("deeplabv3", num_classes=3, in_channels=1, weights=path)
    assert "decoder.classifier" in caplog.text and "fresh initialisation" in caplog.text
    assert torch.equal(model.encoder.conv1.weight, reference.backbone.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.decoder.aspp.project[0].weight, reference.classifier[0].project[0].weight)
    assert model.decoder.classifier.weight.shape == (3, 256, 1, 1)


def test_without_aux_head_the_files_aux_classifier_is_left_out(saved, caplog):
    reference, path = saved["fcn_head"]
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = _build("fcn_head", aux_head=None, weights=path).eval()
    assert "aux_classifier" in caplog.text and not isinstance(model, AuxLogitsModel)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x)["out"], rtol=1e-5, atol=1e-5)


def test_segkit_run_checkpoint_loads_the_whole_model(tmp_path):
    torch.manual_seed(0)
    trained = segkit.create_model("fpn", encoder="resnet18", num_classes=3)
    randomize_norm_stats(trained)
    path = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "config": {"model": {"arch": "fpn", "encoder": "resnet18"}}, "epoch": 3}, path)
    model = segkit.create_model("fpn", encoder="resnet18", num_classes=3, weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x))
    with pytest.raises(SegkitError, match=f"weights file {path} is a segkit checkpoint of fpn on resnet18, not of unet on resnet18"):
        segkit.create_model("unet", encoder="resnet18", num_classes=3, weights=path)


def test_weights_and_encoder_weights_are_exclusive(saved):
    with pytest.raises(SegkitError, match="give weights .* or encoder_weights .*, not both"):
        _build("deeplabv3", weights=saved["deeplabv3"][1], encoder_weights="imagenet")


def test_config_loads_the_file_and_trains_with_the_aux_loss(saved):
    """model.weights and model.decoder {output_stride, aux_head} in a config; the loss adds aux_weight x the aux loss."""
    reference, path = saved["fcn_head"]
    cfg = config_from_dict({"model": {"arch": "fcn_head", "encoder": "resnet50", "num_classes": 21, "weights": str(path),
                                      "decoder": {"output_stride": 8, "aux_head": "fcn"}},
                            "trainer": {"aux_weight": 0.5}})
    model = build_model_from_config(cfg)
    assert torch.equal(model.aux_classifier.classifier.weight, reference.aux_classifier[4].weight)
    target = torch.randint(0, 21, (2, 32, 32))
    output = model.train()(torch.randn(2, 3, 32, 32))
    loss_fn = build_loss_fn(cfg)
    loss, logits = make_task(cfg).loss(loss_fn, output, target)
    torch.testing.assert_close(loss, loss_fn(output[0], target) + 0.5 * loss_fn(output[1], target))
    assert logits is output[0]


# COCO ids of VOC's 20 categories in VOC's order, with COCO's names (configs/coco_deeplabv3_resnet50.yaml).
VOC_IN_COCO = [(5, "airplane"), (2, "bicycle"), (16, "bird"), (9, "boat"), (44, "bottle"), (6, "bus"), (3, "car"), (17, "cat"),
               (62, "chair"), (21, "cow"), (67, "dining table"), (18, "dog"), (19, "horse"), (4, "motorcycle"), (1, "person"),
               (64, "potted plant"), (20, "sheep"), (63, "couch"), (7, "train"), (72, "tv")]


def test_the_coco_config_evaluates_the_published_model_from_the_cli(tmp_path, saved, capsys):
    """configs/coco_deeplabv3_resnet50.yaml on a two-image COCO folder: the README's checkpoint recipe, then
    ``segkit evaluate``; the report's mIoU is that of torchvision's own model on the same standardised images."""
    import json

    import numpy as np
    from PIL import Image

    from segkit.cli import main
    from segkit.config import load_config, to_dict
    from segkit.data import CocoDataset
    from segkit.metrics import ConfusionMatrix

    reference, path = saved["deeplabv3"]
    images = tmp_path / "val2017"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("1.png", "2.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / name)
    annotations = [{"id": 1, "image_id": 1, "category_id": 17, "iscrowd": 0, "segmentation": [[4, 4, 40, 4, 40, 30, 4, 30]]},
                   {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 8, 60, 8, 60, 44, 10, 44]]}]
    for ann in annotations:
        ann.update(bbox=[0, 0, 1, 1], area=1.0)
    coco = {"images": [{"id": 1, "file_name": "1.png", "height": 48, "width": 64}, {"id": 2, "file_name": "2.png", "height": 48, "width": 64}],
            "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in VOC_IN_COCO]}
    (tmp_path / "instances_val2017.json").write_text(json.dumps(coco))
    cfg = load_config("configs/coco_deeplabv3_resnet50.yaml", [f"model.weights={path}", f"data.val_images={images}",
                                                               f"data.val_annotations={tmp_path / 'instances_val2017.json'}",
                                                               f"data.options.cache_dir={tmp_path / 'masks'}"])
    model = build_model_from_config(cfg)  # the README's recipe: the config's model, saved with its config
    cfg.model.weights = None
    checkpoint = tmp_path / "tv_deeplabv3_resnet50.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, checkpoint)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "report.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())

    dataset = CocoDataset(images, tmp_path / "instances_val2017.json", [i for i, _ in VOC_IN_COCO])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    matrix = ConfusionMatrix(21)
    for name, image_id in (("1.png", 1), ("2.png", 2)):
        x = torch.from_numpy(np.array(Image.open(images / name))).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            logits = reference(((x - mean) / std)[None])["out"]
        matrix.update(logits, torch.as_tensor(dataset.render_mask(image_id).astype("int64"))[None])
    assert report["miou"] == pytest.approx(matrix.compute()["miou"], abs=1e-6)
    assert "mIoU" in capsys.readouterr().out

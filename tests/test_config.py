"""Configs: schema defaults, YAML loading, overrides, and the errors users see."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from segkit import SegkitError
from segkit.config import config_from_dict, load_config, save_config, to_dict
from segkit.data import CifarDataset, CocoDataset, FolderDataset, ImageFolderDataset
from segkit.engine.builders import build_loss_fn, build_model_from_config, transforms_from_config

UPSAMPLING_MODES = ("transposed", "nearest", "bed_of_nails", "max_unpool")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_the_promised_recipes_ship():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS}
    assert {"quickstart.yaml", "biomedical_unet_resnet34.yaml", "coco_fcn8s_vgg16.yaml"} <= names
    modes = {load_config(CONFIG_DIR / "upsampling" / f"{m}.yaml").model.upsampling for m in UPSAMPLING_MODES}
    assert modes == set(UPSAMPLING_MODES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_shipped_configs_build(path):
    """Every shipped config loads, and its model, loss, transforms and dataset options are accepted."""
    cfg = load_config(path)
    assert cfg.trainer.epochs > 0
    model = build_model_from_config(cfg)
    build_loss_fn(cfg)
    for train in (True, False):
        transforms_from_config(cfg, train)
    dataset_class = {"folder": FolderDataset, "synthetic": FolderDataset, "coco": CocoDataset,
                     "cifar": CifarDataset, "imagefolder": ImageFolderDataset}[cfg.data.kind]
    accepted = set(inspect.signature(dataset_class).parameters)
    assert set(cfg.data.options) <= accepted, f"unknown data.options for {dataset_class.__name__}"
    if cfg.data.kind == "synthetic":  # small enough to run: logits at the input's size
        x = torch.zeros(1, cfg.model.in_channels, 64, 64)
        assert model.eval()(x).shape == (1, cfg.model.num_classes, 64, 64)


def test_upsampling_configs_differ_only_in_the_mode():
    base = to_dict(load_config(CONFIG_DIR / "quickstart.yaml"))
    for mode in UPSAMPLING_MODES:
        cfg = to_dict(load_config(CONFIG_DIR / "upsampling" / f"{mode}.yaml"))
        cfg["model"]["upsampling"] = base["model"]["upsampling"]
        assert cfg == base


def test_overrides_apply_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {encoder: vgg11}\ntrainer: {epochs: 3}\n")
    cfg = load_config(path, ["trainer.epochs=5", "optimizer.lr=0.5", "model.decoder.decoder_channels=[8,8,8,8,8]"])
    assert (cfg.trainer.epochs, cfg.optimizer.lr, cfg.model.encoder) == (5, 0.5, "vgg11")
    assert list(cfg.model.decoder.decoder_channels) == [8] * 5


def test_saved_config_reloads_identically(tmp_path):
    cfg = config_from_dict({"model": {"arch": "fcn8s", "encoder": "vgg16"}}, ["trainer.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        ({"trainer": {"epohcs": 3}}, [], "unknown config key 'trainer.epohcs'; did you mean 'trainer.epochs'?"),
        ({"modle": {}}, [], "unknown config key 'modle'; did you mean 'model'?"),
        ({}, ["model.NUM_CLASSES=3"], "command line: unknown config key 'model.NUM_CLASSES'; did you mean 'model.num_classes'?"),
        ({}, ["trainer.batchsize=4"], "command line: unknown config key 'trainer.batchsize'; did you mean 'trainer.batch_size'?"),
        ({"trainer": {"epochs": "many"}}, [], "config key 'trainer.epochs' has a value of the wrong type"),
        ({"optimizer": {"name": "sgdd"}}, [], "config key 'optimizer.name' is 'sgdd'; choose one of sgd, adam"),
        ({"schedule": {"name": "linear"}}, [], "config key 'schedule.name' is 'linear'; choose one of poly"),
        ({"trainer": {"batch_size": 0}}, [], "config key 'trainer.batch_size' must be > 0"),
        ({"loss": []}, [], "config key 'loss' is empty"),
        ({"loss": [{"weight": 1}]}, [], "config key 'loss\\[0\\]' needs a 'name'"),
        ({}, ["trainer.epochs"], "override 'trainer.epochs' is not of the form KEY=VALUE"),
        # A list where a mapping belongs, or the reverse: the key, not "set a list whole ... by index".
        ({"model": {"decoder": [64, 32, 16]}}, [], r"config: config key 'model.decoder' is a list but must be a mapping\.$"),
        ({}, ["data.options=[0.2,0.15]"], r"command line: config key 'data.options' is a list but must be a mapping"),
        ({"loss": ["ce"]}, [], r"config key 'loss\[0\]' has a value of the wrong type"),
        # ${...} that cannot be resolved: a traceback from OmegaConf before.
        ({"trainer": {"epochs": "${trainer.epoch}"}}, [], r"config: config key 'trainer.epochs' cannot be resolved "
                                                         r"\(Interpolation key 'trainer.epoch' not found\)"),
        ({}, ["loss.0.name=dice"], r"set a list whole"),
        ({}, ["data.root=${oc.env:SEGKIT_NO_SUCH_VARIABLE}/cells"], r"command line: config key 'data.root' cannot be resolved "
                                                                   r".*SEGKIT_NO_SUCH_VARIABLE.*set the environment variable"),
    ],
)
def test_errors_name_the_key(data, overrides, message):
    with pytest.raises(SegkitError, match=message):
        config_from_dict(data, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SegkitError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SegkitError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(SegkitError, match="must hold a mapping"):
        load_config(listed)


def test_an_escaped_interpolation_stays_text_and_reloads(tmp_path):
    """Interpolations are checked when the config loads, in a copy: an escaped one stays text."""
    cfg = config_from_dict({"data": {"root": "\\${literal}/x"}})
    assert cfg.data.root == "${literal}/x"
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.root == "${literal}/x"


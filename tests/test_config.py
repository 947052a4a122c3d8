"""Configs: schema defaults, YAML loading, overrides, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit import SegkitError
from segkit.config import config_from_dict, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.trainer.epochs > 0


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
        ({}, ["trainer.batchsize=4"], "command line: unknown config key 'trainer.batchsize'; did you mean 'trainer.batch_size'?"),
        ({"trainer": {"epochs": "many"}}, [], "config key 'trainer.epochs' has a value of the wrong type"),
        ({"optimizer": {"name": "sgdd"}}, [], "config key 'optimizer.name' is 'sgdd'; choose one of sgd, adam"),
        ({"schedule": {"name": "linear"}}, [], "config key 'schedule.name' is 'linear'; choose one of poly"),
        ({"trainer": {"batch_size": 0}}, [], "config key 'trainer.batch_size' must be > 0"),
        ({"loss": []}, [], "config key 'loss' is empty"),
        ({"loss": [{"weight": 1}]}, [], "config key 'loss\\[0\\]' needs a 'name'"),
        ({}, ["trainer.epochs"], "override 'trainer.epochs' is not of the form KEY=VALUE"),
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

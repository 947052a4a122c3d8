"""Config and command-line values that would train the wrong thing, or fail with a traceback, are
refused up front with one sentence naming the key and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from test_predict_export import write_checkpoint
from test_train import tiny_config

from segkit import SegkitError
from segkit.cli import main
from segkit.config import config_from_dict, load_config
from segkit.engine.builders import build_loss_fn
from segkit.engine.train import train


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.clip_grad_norm=-1", r"'trainer\.clip_grad_norm' must be > 0; got -1"),
    ("schedule.gamma=-1", r"'schedule\.gamma' must be > 0"),
    ("schedule.warmup_factor=-3", r"'schedule\.warmup_factor' must be > 0"),
    ("optimizer.momentum=-1", r"'optimizer\.momentum' must be >= 0"),
    ("output.num_vis=-2", r"'output\.num_vis' must be >= 0"),
    ("optimizer.betas=[0.9]", r"'optimizer\.betas' must be two numbers in \[0, 1\), e\.g\. \[0\.9, 0\.999\]; got \[0\.9\]"),
    ("optimizer.betas=[1.5,0.9]", r"'optimizer\.betas' must be two numbers in \[0, 1\)"),
    ("model.num_classes=1", r"'model\.num_classes' is 1; .* set model\.num_classes: 2 \(and data\.options\.binary: true"),
    ("loss.0.name=dice", r"set a list whole, e\.g\. 'loss=\[\{name: dice, weight: 1\.0\}\]', not one entry by index"),
    # A seed numpy or the sampler cannot take was a traceback after the run directory was made.
    ("trainer.seed=-1", r"^command line: config key 'trainer\.seed' is -1; give a whole number in \[0, 2\*\*32\)"),
    ("trainer.seed=99999999999999", r"'trainer\.seed' is 99999999999999"),
    ("loss=[{nam: dice}]", r"^command line: config key 'loss\[0\]' needs a 'name'"),  # was blamed on the file
    ("trainer=5", r"^command line: config key 'trainer' is a single value but must be a mapping of keys"),  # named no key
])
def test_values_that_would_misbehave_are_refused(tmp_path, override, message):
    with pytest.raises(SegkitError, match=message):
        config_from_dict(tiny_config(tmp_path), [override])


def test_yaml_errors_give_the_line_and_a_directory_is_named_as_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arch: unet\n  encoder: [resnet18\ndata: {}\n")
    with pytest.raises(SegkitError, match=r"bad\.yaml is not valid YAML at line 4, column 5 \(did not find expected ',' or '\]'"):
        load_config(path)
    with pytest.raises(SegkitError, match=r"config file .* is a directory; pass a YAML file"):
        load_config(tmp_path)


@pytest.mark.parametrize(("loss", "message"), [
    ([{"name": "dice", "mode": "binary"}], r"loss\[0\] \(dice\) does not fit a model of 3 classes \(mode='binary'"),
    ([{"name": "ce"}, {"name": "ce", "class_weights": [1, 2]}], r"loss\[1\] \(ce_1\) does not fit a model of 3 classes \(class_weights has 2 entries for 3 classes"),
    ([{"name": "dice", "mode": "multiclass", "classes": [5]}], r"loss\[0\] \(dice\) does not fit a model of 3 classes"),
    # bce was offered for configs but could never fit: its message said to use mode: multiclass, which it has not.
    ([{"name": "ce"}, {"name": "bce"}], r"loss\[1\] is bce, which takes 0/1 targets shaped like the logits .*use ce"),
    ([{"name": "ce", "label_smoothing": 2}], r"loss\[0\] \(ce\) does not fit a model of 3 classes"),
])
def test_loss_options_that_do_not_fit_the_model_are_named_before_training(tmp_path, loss, message):
    config = tiny_config(tmp_path)
    config["loss"] = loss
    with pytest.raises(SegkitError, match=message):
        build_loss_fn(config_from_dict(config))


def test_the_losses_that_fit_still_build(tmp_path):
    config = tiny_config(tmp_path)
    config["loss"] = [{"name": "ce", "class_weights": [1, 2, 3]}, {"name": "dice", "mode": "multiclass"},
                      {"name": "focal", "mode": "multiclass"}, {"name": "lovasz", "mode": "multiclass"},
                      {"name": "weight_map_ce"}]
    build_loss_fn(config_from_dict(config))


def test_models_the_loop_cannot_train_are_named(tmp_path, data_root):
    config = tiny_config(data_root)
    config["model"] = {"arch": "deeplabv3plus", "encoder": "resnet18", "num_classes": 3, "in_channels": 1}
    config["trainer"]["batch_size"] = 1
    with pytest.raises(SegkitError, match=r"each process's batch holds 1 image \(trainer\.batch_size.*DeepLab's image pooling .* set trainer\.batch_size: 2"):
        train(config_from_dict(config), tmp_path / "deeplab", progress=False)
    config = tiny_config(data_root)
    config["model"] = {"arch": "unet_original", "num_classes": 3, "in_channels": 1}
    with pytest.raises(SegkitError, match=r"unet_original with valid convolutions .* set model\.decoder\.padding: same"):
        train(config_from_dict(config), tmp_path / "original", progress=False)


def test_output_paths_that_cannot_be_written_are_named_first(tmp_path, data_root, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny_config(data_root, epochs=1)))
    assert main(["train", str(config), "--out", str(blocker), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3",
                 "--out", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker / 'r.json'} lies under {blocker}, which is a file" in err and err.count("\n") == 1


def test_export_states_the_sizes_the_traced_model_is_right_for(tmp_path):
    from segkit.engine.export import export_model

    ckpt = write_checkpoint(tmp_path / "deeplab.pt", arch="deeplabv3plus", encoder="resnet18", decoder={})
    result = export_model(ckpt, "onnx", tmp_path / "m.onnx", size=(64, 64))
    assert "H and W must be multiples of 16 (other sizes give wrong logits" in result.summary()
    ckpt = write_checkpoint(tmp_path / "original.pt", arch="unet_original", decoder={"padding": "same"})
    assert "multiples of 16" in export_model(ckpt, "onnx", tmp_path / "o.onnx", size=(64, 64)).summary()
    with pytest.raises(SegkitError, match=r"ONNX export at --opset 5 failed .*; use the default --opset 17"):
        export_model(ckpt, "onnx", tmp_path / "old.onnx", size=(64, 64), opset=5)
    assert result.ok


def test_a_bad_command_line_value_is_blamed_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny_config(tmp_path)))
    with pytest.raises(SegkitError, match=r"^command line: config key 'trainer\.amp_dtype' is 'fp8'"):
        load_config(path, ["trainer.amp_dtype=fp8"])
    config = tiny_config(tmp_path)
    config["trainer"]["amp_dtype"] = "fp8"
    path.write_text(json.dumps(config))
    with pytest.raises(SegkitError, match=r"c\.yaml: config key 'trainer\.amp_dtype' is 'fp8'"):
        load_config(path)


def test_a_misspelt_model_argument_is_suggested():
    import segkit

    with pytest.raises(SegkitError, match=r"unet has no option 'num_clases'; did you mean 'num_classes'\?"):
        segkit.create_model("unet", encoder="resnet18", num_clases=3)


def test_deeplab_with_one_image_a_process_is_named(tmp_path):
    from _data_helpers import gray, labels, write_png

    for split in ("train", "val"):
        write_png(tmp_path / "data" / "images" / split / "a.png", gray(64, 64))
        write_png(tmp_path / "data" / "masks" / split / "a.png", labels(64, 64, 3))
    config = tiny_config(tmp_path / "data")
    config["data"]["kind"] = "folder"
    config["model"] = {"arch": "deeplabv3plus", "encoder": "resnet18", "num_classes": 3, "in_channels": 1}
    with pytest.raises(SegkitError, match=r"each process's batch holds 1 image"):  # batch_size 2, one training image
        train(config_from_dict(config), tmp_path / "run", progress=False)


def test_load_model_takes_the_devices_the_cli_takes(tmp_path):
    from segkit.engine.inference import load_model

    ckpt = write_checkpoint(tmp_path / "m.pt")
    model, _ = load_model(ckpt, device="auto")
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SegkitError, match="device cuda was asked for but PyTorch sees no CUDA GPU"):
            load_model(ckpt, device="cuda")


def test_onnx_of_max_location_unpooling_says_the_one_shape_it_is_right_for(tmp_path):
    """Its unpooling sizes are traced as constants: checked at the export shape, and the summary says so."""
    pytest.importorskip("onnxruntime")
    from segkit.engine.export import export_model

    ckpt = write_checkpoint(tmp_path / "unpool.pt", upsampling="max_unpool")
    result = export_model(ckpt, "onnx", tmp_path / "m.onnx", size=(64, 96))
    assert result.ok and "the graph is right for 1x1x64x96 inputs only" in result.summary()
    scripted = export_model(ckpt, "torchscript", tmp_path / "m.pt", size=(64, 96))
    assert scripted.ok and "1x1x64x96" not in scripted.summary()


@pytest.mark.parametrize("override,match", [
    ("schedule.warmup_factor=1.5", "'schedule.warmup_factor' is 1.5; the warm-up starts at this fraction"),
    ("schedule.power=-1", "'schedule.power' must be > 0"),
    ("schedule.decay=-0.5", "'schedule.decay' must be >= 0"),
    ("schedule.min_lr=-0.05", "'schedule.min_lr' must be >= 0"),
    ("optimizer.alpha=1.5", "'optimizer.alpha' must be >= 0 and < 1"),
    ("optimizer.momentum=1.0", "'optimizer.momentum' must be >= 0 and < 1"),
    ("optimizer.lr=.nan", "'optimizer.lr' must be > 0; got nan"),
    ("optimizer.lr=.inf", "'optimizer.lr' must be > 0; got inf"),
    ("schedule.milestones=[0,5]", "'schedule.milestones' holds \\[0, 5\\]"),
    ("optimizer.nesterov=true", "'optimizer.nesterov' is true with momentum 0"),
])
def test_schedule_and_optimizer_values_that_cannot_work_are_named(override, match):
    """Each trained uphill (a negative rate), crashed with a traceback mid-run, or stopped on a NaN loss."""
    base = {"model": {"arch": "unet", "encoder": "resnet18", "num_classes": 2}, "data": {"kind": "folder", "root": "x"}}
    extra = ["optimizer.momentum=0"] if "nesterov" in override else []
    with pytest.raises(SegkitError, match=match):
        config_from_dict(base, [override, *extra])


def test_a_file_mistake_beside_an_override_of_its_section_is_the_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {arch: unet, encoder: resnet18, num_classes: 2}\ntrainer: {seed: -1}\n")
    with pytest.raises(SegkitError, match=r"c\.yaml: config key 'trainer\.seed' is -1"):
        load_config(path, ["trainer={epochs: 1}"])
    with pytest.raises(SegkitError, match=r"^command line: config key 'trainer\.seed' is -2"):
        load_config(path, ["trainer={seed: -2}"])


def test_a_scalar_section_in_a_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {arch: unet, encoder: resnet18, num_classes: 2}\ntrainer: 5\n")
    with pytest.raises(SegkitError, match=r"c\.yaml: config key 'trainer' is a single value but must be a mapping of keys"):
        load_config(path)


def test_the_saved_config_holds_the_values_the_run_used(tmp_path, monkeypatch):
    """config.yaml kept ${oc.env:...}: `segkit train RUN/config.yaml` failed once the variable was gone."""
    from segkit.config import save_config

    monkeypatch.setenv("SEGKIT_TEST_ROOT", str(tmp_path / "data"))
    config = tiny_config(tmp_path)
    config["data"]["root"] = "${oc.env:SEGKIT_TEST_ROOT}"
    save_config(config_from_dict(config), tmp_path / "config.yaml")
    monkeypatch.delenv("SEGKIT_TEST_ROOT")
    assert load_config(tmp_path / "config.yaml").data.root == str(tmp_path / "data")


def test_synthetic_data_too_small_to_validate_is_named(tmp_path):
    """n=1 or 2 gave 'no images found in .../images/val; put the images there', about generated data."""
    from segkit.data import make_synthetic

    with pytest.raises(SegkitError, match=r"'data\.synthetic\.n' is 1; the built-in data needs at least 2 images"):
        config_from_dict({"data": {"kind": "synthetic", "synthetic": {"n": 1}}})
    make_synthetic(tmp_path, n=2, size=32)
    assert len(list((tmp_path / "images" / "val").iterdir())) == 1


def test_a_batch_of_one_image_with_a_one_pixel_deepest_map_is_named(tmp_path, data_root):
    config = tiny_config(data_root, epochs=1)
    config["trainer"]["batch_size"] = 1
    config["data"]["train_transforms"] = [{"name": "random_crop", "size": 32}]
    with pytest.raises(SegkitError, match=r"a training batch of 1 image\(s\) of 32x32 leaves one value per channel .* "
                                          r"set trainer\.batch_size: 2 or more"):
        train(config_from_dict(config), tmp_path / "run", progress=False)

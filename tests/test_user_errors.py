"""Mistakes a user makes in data and config get a SegkitError naming the key or file and the fix,
not a traceback from torch or albumentations, and never a silent misreading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_helpers import gray, labels, rgb, write_png
from test_train import tiny_config

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.data import FolderDataset, build_transforms
from segkit.engine.builders import build_datasets
from segkit.engine.inputs import ImageFiles, collate_interleaved
from segkit.engine.train import train


def test_images_of_different_sizes_in_one_batch_name_the_fix():
    batch = [(torch.zeros(3, 40, 50), torch.zeros(40, 50)), (torch.zeros(3, 30, 50), torch.zeros(30, 50))]
    with pytest.raises(SegkitError, match=r"a training batch holds images of 50x40 and 50x30 pixels, which cannot be stacked; "
                                          r"add a crop or resize step to data\.train_transforms"):
        collate_interleaved(batch)


@pytest.mark.parametrize("name", ["random_crop", "center_crop"])
def test_a_crop_larger_than_the_image_pads_the_mask_with_ignore_index(name):
    pipeline = build_transforms([{"name": name, "size": [40, 30]}], train=True, seed=0, ignore_index=255)
    image, mask = rgb(20, 24, 1), labels(20, 24, 3, 1)
    out = pipeline(image=image, mask=mask)
    image_out, mask_out = np.asarray(out["image"]), np.asarray(out["mask"])  # (3, H, W) and (H, W)
    assert image_out.shape == (3, 40, 30) and mask_out.shape == (40, 30)
    kept = mask_out != 255
    assert kept.sum() == mask.size  # every original pixel, once; the padding is ignored
    np.testing.assert_array_equal(np.bincount(mask_out[kept], minlength=3), np.bincount(mask.ravel(), minlength=3))
    assert (image_out[:, ~kept] == 0).all()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("percentiles", 5, r"percentiles 5 must be two numbers 0 <= low < high <= 100, e\.g\. \[1, 99\.8\]"),
    ("percentiles", "1,99", r"percentiles is '1,99'; give a finite number or a list of finite numbers"),
    ("percentiles", [99, 1], r"percentiles \[99, 1\] must be two numbers 0 <= low < high <= 100"),
    ("std", "abc", r"std is 'abc'; give a finite number or a list of finite numbers"),
    ("mean", [0.5, None], r"mean is \[0\.5, None\]; give a finite number or a list of finite numbers"),
    ("std", float("nan"), r"std is nan; give a finite number"),  # training stopped on a NaN loss, advising a lower lr
])
def test_intensity_options_of_the_wrong_type_are_named(tmp_path, option, value, message):
    write_png(tmp_path / "images" / "a.png", gray(16, 16))
    write_png(tmp_path / "masks" / "a.png", labels(16, 16, 2))
    with pytest.raises(SegkitError, match=message):
        FolderDataset(tmp_path, **{option: value})


def test_a_quoted_boolean_in_data_options_is_refused(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root), ["data.options.binary=maybe"])
    with pytest.raises(SegkitError, match=r"data\.options\.binary is 'maybe'; give true or false \(unquoted\)"):
        build_datasets(cfg)
    cfg = config_from_dict(tiny_config(data_root), ["data.options.unknown_color=1"])
    with pytest.raises(SegkitError, match=r"data\.options\.unknown_color is 1; give a string"):
        build_datasets(cfg)


def test_a_single_number_for_decoder_channels_is_named(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root), ["model.decoder.decoder_channels=5"])
    with pytest.raises(SegkitError, match=r"decoder_channels must be 5 positive integers.*got 5"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_colour_prediction_gets_advice_evaluate_can_follow(tmp_path):
    from segkit.engine.folders import evaluate_folders

    write_png(tmp_path / "gt" / "a.png", labels(16, 16, 3))
    write_png(tmp_path / "pred" / "a.png", rgb(16, 16))
    with pytest.raises(SegkitError, match=r"prediction .*a\.png is a colour \(RGB\) image; save predictions as single-channel"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", 3)


def test_predict_names_the_models_channel_count(tmp_path):
    path = write_png(tmp_path / "a.png", rgb(16, 16))
    files = ImageFiles([path], in_channels=1)
    with pytest.raises(SegkitError, match=r"has 3 channels but the checkpoint's model takes 1; .*model\.in_channels=3"):
        files.load_stored_image(0)


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    """`segkit check-data ... | head`: the pipe closes before segkit has written its report."""
    import subprocess
    import sys

    from segkit.data import make_synthetic

    make_synthetic(tmp_path / "data", n=16, size=32, seed=0)
    child = subprocess.Popen([sys.executable, "-m", "segkit", "check-data", str(tmp_path / "data"), "--num-classes", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the first line
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_split_file_with_a_byte_order_mark_lists_its_first_stem(tmp_path):
    for stem in ("a", "b"):
        write_png(tmp_path / "images" / f"{stem}.png", gray(16, 16))
        write_png(tmp_path / "masks" / f"{stem}.png", labels(16, 16, 2))
    (tmp_path / "train.txt").write_bytes("\ufeffa\nb\n".encode())  # as Windows Notepad saves UTF-8
    assert FolderDataset(tmp_path, "train", num_classes=2).stems == ["a", "b"]


def test_a_keyboard_interrupt_ends_a_command_without_a_traceback(monkeypatch, capsys):
    """A second Ctrl-C while training writes last.pt ("stops at once") raised KeyboardInterrupt
    through the CLI: 15 frames of traceback. It ends as a signal does: one line, exit 130."""
    from segkit import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", (*cli.COMMANDS["list"][:2], interrupted))
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err == "segkit: interrupted\n"


def test_synthetic_data_made_for_another_request_is_not_reused_in_silence(tmp_path):
    """A second run asking data.synthetic for other images trained on the first run's, while its
    config.yaml named the new ones."""
    import json

    root = tmp_path / "synthetic"
    first = config_from_dict(tiny_config(root))  # n 8, size 64, seed 1
    train_set, _ = build_datasets(first)
    assert json.loads((root / "segkit_synthetic.json").read_text()) == {"n": 8, "seed": 1, "size": 64}
    assert len(build_datasets(first)[0]) == len(train_set)  # the same request reuses the folder
    for override in ("data.synthetic.n=12", "data.synthetic.seed=2", "data.synthetic.size=80"):
        with pytest.raises(SegkitError, match=r"holds synthetic data made with n=8, seed=1, size=64, not the .* that data\.synthetic asks for"):
            build_datasets(config_from_dict(tiny_config(root), [override]))


def test_synthetic_classification_data_records_its_request_too(tmp_path):
    from test_classification import tiny_config as classification_config

    root = tmp_path / "cifar"
    build_datasets(config_from_dict(classification_config(root)))
    with pytest.raises(SegkitError, match=r"n=120, seed=0, size=16, not the n=600, seed=0, size=16"):
        build_datasets(config_from_dict(classification_config(root), ["data.synthetic.n=600"]))


def test_synthetic_cifar_named_defaults_ask_for_the_same_data(tmp_path):
    from test_classification import tiny_config as classification_config

    root = tmp_path / "cifar"
    unset = classification_config(root)
    unset["data"]["synthetic"] = {"seed": 0}  # n and size left to make_synthetic_cifar's defaults (6000, 16)
    build_datasets(config_from_dict(unset))
    build_datasets(config_from_dict(unset, ["data.synthetic.n=6000", "data.synthetic.size=16"]))  # the same data

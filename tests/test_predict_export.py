"""segkit predict (mask and overlay files) and segkit export (TorchScript / ONNX round trips)."""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pytest
import torch
from _model_helpers import fit_to_intensity_thirds
from _process_helpers import group_empties
from PIL import Image

from segkit import SegkitError
from segkit.cli import main
from segkit.config import config_from_dict, to_dict
from segkit.engine.builders import build_model_from_config
from segkit.engine.checkpoint import save_checkpoint
from segkit.engine.export import export_model
from segkit.engine.plots import palette
from segkit.engine.predict import predict_folder


def write_checkpoint(path: Path, in_channels: int = 1, num_classes: int = 3, fit: bool = False, **model) -> Path:
    cfg = config_from_dict({
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": num_classes, "in_channels": in_channels,
                  "decoder": {"decoder_channels": [8, 8, 8, 8, 8]}, **model},
        "data": {"kind": "folder", "root": "unused", "options": {"mean": 0.5, "std": 0.25}},
        "trainer": {"batch_size": 2},
    })
    torch.manual_seed(0)
    net = build_model_from_config(cfg)
    if fit:
        fit_to_intensity_thirds(net, in_channels, mean=0.5, std=0.25)  # the config's normalisation below
    save_checkpoint({"model": net.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", fit=True)


def expected_labels(ckpt: Path, image: np.ndarray) -> np.ndarray:
    """The model run by hand on an 8-bit grey image normalised with the config's mean 0.5 / std 0.25."""
    from segkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    model = build_model_from_config(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    x = (torch.from_numpy(image.astype(np.float32) / 255.0)[None, None] - 0.5) / 0.25
    with torch.no_grad():
        return model(x).argmax(1)[0].numpy()


def test_predict_writes_palette_masks_and_overlays_of_any_size(tmp_path, ckpt):
    rng = np.random.default_rng(0)
    sizes = {"a": (37, 53), "nested/b": (64, 64), "c": (20, 101)}  # odd sizes: no multiple of 32 needed
    source = tmp_path / "images"
    pictures = {}
    for name, size in sizes.items():
        pictures[name] = rng.integers(0, 256, size).astype(np.uint8)
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[name]).save(source / f"{name}.png")
    written = predict_folder(ckpt, source, tmp_path / "out", device="cpu")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["masks/a.png", "masks/c.png", "masks/nested/b.png"]
    for name, size in sizes.items():
        mask = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
        assert mask.mode == "P" and mask.size == (size[1], size[0])
        assert np.asarray(mask.getpalette()[:9]).reshape(3, 3).tolist() == palette(3).tolist()
        labels = np.asarray(mask)
        np.testing.assert_array_equal(labels, expected_labels(ckpt, pictures[name]))
        shown = Image.open(tmp_path / "out" / "overlays" / f"{name}.png")
        assert shown.mode == "RGB" and shown.size == mask.size
        # background pixels keep the grey image; class pixels are tinted
        rgb = np.asarray(shown).astype(int)
        background = labels == 0
        if background.any():
            assert np.abs(rgb[background] - pictures[name][background][:, None]).max() <= 1
        assert len(np.unique(labels)) > 1  # the check above is not vacuous


def test_predict_matches_evaluate_and_takes_a_single_file(tmp_path, ckpt, capsys):
    """The labels predict writes are the ones evaluate scores, with the same sliding window and TTA."""
    from segkit.engine.evaluate import evaluate_checkpoint, evaluate_folders

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 45)).astype(np.uint8)
    for folder, array in (("images", image), ("masks", rng.integers(0, 3, (40, 45)).astype(np.uint8))):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "data" / folder / "one.png")
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "data" / "images" / "one.png"),
                 "--output", str(tmp_path / "o"), "--quiet", "--tile", "32", "--overlap", "0.5", "--tta", "--no-overlays"]) == 0
    assert "wrote 1 mask to" in capsys.readouterr().out
    assert (tmp_path / "o" / "masks" / "one.png").is_file() and not (tmp_path / "o" / "overlays").exists()
    written = np.asarray(Image.open(tmp_path / "o" / "masks" / "one.png"))
    assert len(np.unique(written)) > 1  # not a constant prediction: the comparison below can fail
    scored = evaluate_checkpoint(ckpt, tmp_path / "data", device="cpu", tile=32, overlap=0.5, tta=True)
    folders = evaluate_folders(tmp_path / "o" / "masks", tmp_path / "data" / "masks", num_classes=3)
    assert folders.metrics["confusion_matrix"] == scored.metrics["confusion_matrix"]
    whole = evaluate_checkpoint(ckpt, tmp_path / "data", device="cpu")  # and the options matter
    assert whole.metrics["confusion_matrix"] != scored.metrics["confusion_matrix"]


def test_predict_errors(tmp_path, ckpt, capsys):
    with pytest.raises(SegkitError, match="input .*nowhere does not exist"):
        predict_folder(ckpt, tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegkitError, match="no images found in"):
        predict_folder(ckpt, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SegkitError, match="is the input folder"):
        predict_folder(ckpt, tmp_path / "empty", tmp_path / "empty")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    code = main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "rgb.png"), "--output", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "rgb.png has 3 channels but the checkpoint's model takes 1" in err and err.count("\n") == 1
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "rgb.png"), "--output", str(tmp_path / "o"),
                 "--overlap", "1.5"]) == 2
    assert "--overlap must lie in [0, 1)" in capsys.readouterr().err


def test_predict_output_problems_are_one_line_errors_before_any_inference(tmp_path, ckpt, capsys, monkeypatch):
    """An --output that is a file or cannot be created ended in a traceback after the first image's
    forward pass; an input inside --output listed no image ("no images found") and would have filled
    the output's masks/ folder, where a dataset keeps its ground truth."""
    from segkit.engine import inference

    images = tmp_path / "project" / "images"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "result").write_text("not a folder")
    for output, message in [(tmp_path / "result", r"--output .*result is a file; give a folder"),
                            (tmp_path / "result" / "sub", r"--output .*sub cannot be created \(Not a directory\)"),
                            (tmp_path / "project", r"the input .*images lies inside --output .*project, whose masks/ folder")]:
        code = main(["predict", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(output), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    monkeypatch.chdir(images.parent)  # the hunt's case: `cd project; segkit predict --input images --output .`
    assert main(["predict", "--checkpoint", str(ckpt), "--input", "images", "--output", ".", "--quiet"]) == 2
    assert "lies inside --output ." in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--input", "images/a.png", "--output", "images/a.png", "--quiet"]) == 2
    assert "--output images/a.png is the input file; write the predictions to another folder" in capsys.readouterr().err
    # One file of the dataset: its prediction replaced the ground truth project/masks/a.png (or, with
    # --input out/masks/a.png --output out, the file itself).
    for output in (".", str(tmp_path)):
        assert main(["predict", "--checkpoint", str(ckpt), "--input", "images/a.png", "--output", output, "--quiet"]) == 2
        assert "images/a.png lies inside --output" in capsys.readouterr().err


def test_a_single_image_predicts_into_its_own_folder(tmp_path, ckpt):
    """`segkit predict --input scan.png --output .`: masks/ goes beside the image, nothing is overwritten."""
    image = np.random.default_rng(3).integers(0, 256, (20, 24)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "scan.png")
    predict_folder(ckpt, tmp_path / "scan.png", tmp_path, overlays=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks" / "scan.png")), expected_labels(ckpt, image))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "scan.png")), image)


def test_run_directory_stands_for_its_best_checkpoint(tmp_path, ckpt):
    image = np.random.default_rng(2).integers(0, 256, (33, 35)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    predict_folder(ckpt.parent, tmp_path / "x.png", tmp_path / "out", overlays=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "x.png")), expected_labels(ckpt, image))


def test_torchscript_export_round_trip(tmp_path):
    ckpt = write_checkpoint(tmp_path / "best.pt", in_channels=3, aux_classes=3)
    result = export_model(ckpt, "torchscript", tmp_path / "model.ts")
    assert result.path == tmp_path / "model.ts" and result.ok and result.max_abs_diff is not None
    loaded = torch.jit.load(str(result.path))
    from segkit.engine.inference import load_model

    model, _ = load_model(ckpt)
    for shape in ((1, 3, *result.input_size), (2, 3, 320, 192)):  # scripted: any size; traced: multiples of 32
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x)[0]  # the auxiliary class logits are dropped from the export
            torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_onnx_export_round_trip(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path / "best.pt")
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--size", "60", "90"]) == 0
    assert "outputs match PyTorch's" in capsys.readouterr().out
    path = tmp_path / "best.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from segkit.engine.inference import load_model

    model, _ = load_model(ckpt)
    for shape in ((1, 1, 64, 96), (3, 1, 128, 32)):  # dynamic batch, height and width (multiples of 32)
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x), rtol=1e-4, atol=1e-5)


def test_unpadded_deeplab_exports_take_any_size(tmp_path, capsys):
    """DeepLabV3's bilinear logits are not padded (torchvision's behaviour), so its traced graphs
    are right at sizes off any stride grid too, and the summary says so."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path / "best.pt", arch="deeplabv3", decoder={"aspp_channels": 16})
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--size", "64", "64"]) == 0
    assert "any H and W of at least" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    from segkit.engine.inference import load_model

    model, _ = load_model(ckpt)
    for shape in ((1, 1, 97, 131), (2, 1, 40, 75)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    ckpt = write_checkpoint(tmp_path / "best.pt")
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx"]) == 2
    assert "pip install onnx onnxruntime" in capsys.readouterr().err


def test_export_tolerance_is_relative_to_the_logits_size(tmp_path):
    from segkit.engine.export import ExportResult

    small = ExportResult(tmp_path / "m", "onnx", (32, 32), 4e-4, "onnxruntime", reference_scale=0.8)
    large = ExportResult(tmp_path / "m", "onnx", (32, 32), 4e-4, "onnxruntime", reference_scale=200.0)
    assert not small.ok and large.ok
    assert not ExportResult(tmp_path / "m", "onnx", (32, 32), 0.05, "onnxruntime", reference_scale=200.0).ok


def test_a_checkpoint_fine_tuned_from_a_weights_file_loads_without_it(tmp_path):
    """load_model ignores model.weights / model.encoder_weights: the checkpoint's own weights replace them."""
    from segkit.config import config_from_dict, to_dict
    from segkit.engine.inference import load_model

    ckpt = write_checkpoint(tmp_path / "best.pt")
    from segkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    cfg = to_dict(config_from_dict(state["config"]))
    cfg["model"]["weights"] = str(tmp_path / "gone.pt")
    cfg["model"]["encoder_weights"] = str(tmp_path / "gone_too.pth")
    save_checkpoint({**state, "config": cfg}, tmp_path / "tuned.pt")
    model, loaded = load_model(tmp_path / "tuned.pt")
    assert loaded.model.weights is None and loaded.model.encoder_weights is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_overlays_of_big_images_are_subsampled_without_tiles_too(tmp_path, ckpt, monkeypatch):
    """As the striped path (--tile) draws them: at most OVERLAY_MAX_SIDE pixels a side, the mask keeps every pixel."""
    from segkit.engine import stripes

    monkeypatch.setattr(stripes, "OVERLAY_MAX_SIDE", 32)
    picture = np.random.default_rng(1).integers(0, 256, (70, 45)).astype(np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(picture).save(tmp_path / "images" / "big.png")
    predict_folder(ckpt, tmp_path / "images", tmp_path / "out", device="cpu")
    labels = np.asarray(Image.open(tmp_path / "out" / "masks" / "big.png"))
    shown = np.asarray(Image.open(tmp_path / "out" / "overlays" / "big.png")).astype(int)
    assert labels.shape == (70, 45) and shown.shape == (24, 15, 3)  # every 3rd row and column (70 / 32 -> 3)
    background = labels[::3, ::3] == 0
    assert np.abs(shown[background] - picture[::3, ::3][background][:, None]).max() <= 1


def test_the_valid_convolution_unet_exports_at_the_sides_it_takes(tmp_path, capsys):
    """Sides 16*b + 60 (188, 204, ...) are not multiples of 32: the size was rounded to one and refused."""
    ckpt = write_checkpoint(tmp_path / "original.pt", arch="unet_original", decoder={})
    result = export_model(ckpt, "torchscript", tmp_path / "o.ts")  # default: 188, the smallest side it takes
    assert result.ok and result.input_size == (188, 188) and result.max_abs_diff is not None
    loaded = torch.jit.load(str(result.path))
    assert loaded(torch.randn(1, 1, 204, 188)).shape == (1, 3, 20, 4)  # valid convolutions: 184 pixels fewer
    with pytest.raises(SegkitError, match=r"got 200: use 188 or 204"):  # the side the user gave, not a rounded one
        export_model(ckpt, "torchscript", tmp_path / "p.ts", size=(200, 204))


def test_export_output_problems_are_one_line_errors(tmp_path, capfd):
    ckpt = write_checkpoint(tmp_path / "checkpoint")  # a checkpoint file without a suffix: not a run directory
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--size", "32", "32"]) == 0
    assert (tmp_path / "checkpoint.torchscript.pt").is_file()
    for out in ("/proc/m.pt", "/proc/no/such/m.pt"):  # places no one may write, root included
        assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", out]) == 2
        err = capfd.readouterr().err
        assert f"cannot write {out}" in err and err.count("\n") == 1
    pytest.importorskip("onnx")
    capfd.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--opset", "99"]) == 2
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--opset", "7", "--size", "32", "32"]) == 2
    out, err = capfd.readouterr()  # file-descriptor level: torch's C++ exporter printed its IR graph there
    assert out == "" and err.count("\n") == 2 and "newer than" in err and "--opset 7 failed" in err, out[:300]
    assert "[Caused by" not in err
    assert not (tmp_path / "checkpoint.onnx").exists()


def test_a_failed_check_does_not_say_match(tmp_path):
    from segkit.engine.export import ExportResult

    bad = ExportResult(tmp_path / "m", "onnx", (32, 32), 0.05, "onnxruntime", reference_scale=2.0)
    assert "DIFFER from PyTorch's by up to 5.00e-02" in bad.summary() and "match" not in bad.summary()


def test_tile_with_resizing_or_padding_val_transforms_says_it_holds_the_whole_image(tmp_path, ckpt, caplog):
    """Such checkpoints skip the striped path (memory grows with the image); README promised it for every --tile."""
    from segkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    state["config"]["data"]["val_transforms"] = [{"name": "pad", "divisor": 64}]
    padded = tmp_path / "padded.pt"
    save_checkpoint(state, padded)
    image = np.random.default_rng(4).integers(0, 256, (40, 50)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    with caplog.at_level("WARNING", logger="segkit"):
        predict_folder(padded, tmp_path / "x.png", tmp_path / "out", tile=32, overlays=False)
    assert "--tile runs on the whole image in memory" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segkit"):
        predict_folder(ckpt, tmp_path / "x.png", tmp_path / "plain", tile=32, overlays=False)
    assert "whole image in memory" not in caplog.text


def test_predict_stopped_by_a_group_sigterm_leaves_no_worker_behind(tmp_path, ckpt):
    """The loader workers outlive a SIGTERM sent to the whole job (training needs them to finish its
    step); predict, which has no stop flag, dies of it at once, and its orphaned workers hung for good
    in their exit, writing into a queue nobody read."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(80):
        Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(images / f"{i:03d}.png")
    command = [sys.executable, "-m", "segkit", "predict", "--checkpoint", str(ckpt), "--input", str(images),
               "--output", str(tmp_path / "out"), "--workers", "2", "--batch-size", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out" / "masks").glob("*.png")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)  # as timeout, systemd and scancel do
        process.wait(60)
        assert group_empties(process.pid, 20), "predict's loader workers outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_an_overlap_that_repeats_each_pixel_many_times_is_warned_about(tmp_path, ckpt, caplog):
    """--tile 64 --overlap 0.99 steps 1 pixel at a time (4096 passes a pixel) and ran for minutes without a word."""
    from segkit.engine.evaluate import evaluate_checkpoint
    from segkit.engine.inference import warn_heavy_overlap

    with caplog.at_level("WARNING", logger="segkit"):
        warn_heavy_overlap(64, 0.99)
    assert "moves the window 1 pixel(s) at a time" in caplog.text and "about 4096 times" in caplog.text
    assert "(1.8 at the default overlap 0.25)" in caplog.text
    for tile, overlap in ((64, 0.5), (64, 0.75), (None, 0.99), (1, 0.99)):  # 4 passes, 16 (the limit), no tiles, 1-pixel tiles
        caplog.clear()
        with caplog.at_level("WARNING", logger="segkit"):
            warn_heavy_overlap(tile, overlap)
        assert caplog.text == "", (tile, overlap)
    rng = np.random.default_rng(5)
    for folder, array in (("images", rng.integers(0, 256, (24, 24))), ("masks", rng.integers(0, 3, (24, 24)))):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(array.astype(np.uint8)).save(tmp_path / "data" / folder / "x.png")
    caplog.clear()
    with caplog.at_level("WARNING", logger="segkit"):
        predict_folder(ckpt, tmp_path / "data" / "images", tmp_path / "out", tile=16, overlap=0.9, overlays=False)
    assert caplog.text.count("moves the window 1 pixel(s)") == 1  # 16 / 1: 256 passes a pixel
    caplog.clear()
    with caplog.at_level("WARNING", logger="segkit"):
        evaluate_checkpoint(ckpt, tmp_path / "data", device="cpu", tile=16, overlap=0.9)
    assert caplog.text.count("moves the window 1 pixel(s)") == 1

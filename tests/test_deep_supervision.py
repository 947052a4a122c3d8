"""U-Net deep supervision (issue 14): side heads, the weighted loss against nearest-resized masks,
eval/predict/export on the main logits only, the config key through training, and the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import segkit
from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine.tasks import SegmentationTask, downsample_nearest
from segkit.losses import CrossEntropyLoss

IGNORE = 255
K = 3  # classes
TINY = {"decoder_channels": (8, 8, 8, 8, 8)}  # five levels at strides 16, 8, 4, 2, 1


def ds_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return segkit.create_model("unet", encoder="resnet18", num_classes=K, in_channels=1, deep_supervision=True, **TINY, **kwargs)


def task(weights: list[float] | None = None, aux_weight: float = 0.3) -> SegmentationTask:
    cfg = OmegaConf.create({"trainer": {"aux_weight": aux_weight, "deep_supervision_weights": weights},
                            "data": {"ignore_index": IGNORE}})
    return SegmentationTask(cfg)


def random_mask(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, K, (n, h, w), generator=g)
    mask[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE  # ignored pixels everywhere, at every scale
    return mask


def centre_pick_reference(mask: np.ndarray, rows: int, cols: int, stride: int) -> np.ndarray:
    """Side pixel (i, j) at ``stride`` sees the mask pixel at its block's centre, ``stride * i + stride // 2``;
    ``IGNORE`` where that centre lies past the image (the padding the model adds). Loops, no padding trick."""
    n, h, w = mask.shape
    out = np.full((n, rows, cols), IGNORE, dtype=mask.dtype)
    for i in range(rows):
        for j in range(cols):
            y, x = stride * i + stride // 2, stride * j + stride // 2
            if y < h and x < w:
                out[:, i, j] = mask[:, y, x]
    return out


# -- the model ------------------------------------------------------------------------------------


def test_training_returns_main_and_side_logits_eval_the_main_only():
    model = ds_model(aux_classes=2).train()
    x = torch.randn(2, 1, 50, 70)  # not a multiple of 32: padded to 64 x 96 inside
    logits, class_logits, sides = model(x)
    assert logits.shape == (2, K, 50, 70) and class_logits.shape == (2, 2)
    assert isinstance(sides, list)  # the list is what tells side logits from auxiliary tensors
    # finest first: strides 2, 4, 8, 16, each cropped to the ceil(H / s) x ceil(W / s) that see the image
    assert [tuple(s.shape) for s in sides] == [(2, K, math.ceil(50 / s), math.ceil(70 / s)) for s in (2, 4, 8, 16)]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, K, 50, 70)
    without_aux = ds_model().train()
    out = without_aux(x)
    assert len(out) == 2 and isinstance(out[1], list) and len(out[1]) == 4
    assert isinstance(without_aux.eval()(x), torch.Tensor)


def test_side_heads_are_1x1_xavier_like_the_segmentation_head():
    model = segkit.create_model("unet", encoder="resnet18", num_classes=5, deep_supervision=True,
                                decoder_channels=(256, 128, 64, 32, 16))
    # finest first: the levels at strides 2, 4, 8, 16 are 32, 64, 128, 256 wide
    assert [tuple(h.weight.shape) for h in model.side_heads] == [(5, c, 1, 1) for c in (32, 64, 128, 256)]
    for head in model.side_heads:
        fan_in, fan_out = head.weight.shape[1], head.weight.shape[0]
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio 2010, uniform
        w = head.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound  # uniform on (-bound, bound), not PyTorch's default
        assert torch.allclose(w.var(), torch.tensor(bound**2 / 3), rtol=0.35)
        assert torch.count_nonzero(head.bias) == 0


def test_main_logits_do_not_depend_on_the_side_heads():
    """Same weights without side heads: the same main logits, in training mode (batch statistics) too."""
    ds = ds_model(seed=4).train()
    plain = segkit.create_model("unet", encoder="resnet18", num_classes=K, in_channels=1, **TINY).train()
    missing, unexpected = plain.load_state_dict(ds.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith("side_heads.") for k in unexpected)
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(ds(x)[0], plain(x), rtol=0, atol=0)


# -- the loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(64, 64), (50, 70), (7, 3), (1, 33)])
def test_targets_are_the_mask_at_each_side_block_centre_with_ignore_kept(h, w):
    mask = random_mask(2, h, w)
    for stride in (1, 2, 4, 8, 16, 32):
        rows, cols = math.ceil(h / stride), math.ceil(w / stride)
        got = downsample_nearest(mask, (rows, cols), IGNORE)
        ref = centre_pick_reference(mask.numpy(), rows, cols, stride)
        if h < stride or w < stride:  # a single row/column covers the image; any centre inside it is right
            assert got.shape == ref.shape and np.isin(got.numpy(), mask.numpy()).all()
            continue
        np.testing.assert_array_equal(got.numpy(), ref)
        assert (got == IGNORE).any() or (ref != IGNORE).all()


def test_targets_match_torch_nearest_exact_on_unpadded_sizes():
    """nnU-Net resizes its deep-supervision targets with nearest-exact; without padding we are that exactly."""
    mask = random_mask(2, 64, 96)
    for stride in (2, 4, 8, 16):
        size = (64 // stride, 96 // stride)
        ref = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
        torch.testing.assert_close(downsample_nearest(mask, size, IGNORE), ref, rtol=0, atol=0)


def hand_written_loss(logits, sides, mask, weights, h, w):
    """main CE + sum_k weight_k * CE(side_k, mask at side_k's block centres); F.cross_entropy, not segkit's."""
    total = F.cross_entropy(logits, mask, ignore_index=IGNORE)
    for side, weight, stride in zip(sides, weights, (2, 4, 8, 16)):
        target = torch.from_numpy(centre_pick_reference(mask.numpy(), side.shape[-2], side.shape[-1], stride))
        total = total + weight * F.cross_entropy(side, target, ignore_index=IGNORE)
    return total


@pytest.mark.parametrize("weights", [None, [0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.0, 1.5]])
@pytest.mark.parametrize("h, w", [(64, 64), (50, 70)])
def test_loss_equals_the_hand_written_sum(weights, h, w):
    model = ds_model(seed=2).train()
    x, mask = torch.randn(2, 1, h, w), random_mask(2, h, w)
    output = model(x)
    loss, logits = task(weights).loss(CrossEntropyLoss(ignore_index=IGNORE), output, mask)
    assert logits is output[0]
    expected = hand_written_loss(output[0], output[1], mask, weights or [0.5, 0.25, 0.125, 0.0625], h, w)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # the sides matter: the main loss alone is clearly less
    main_only = F.cross_entropy(output[0], mask, ignore_index=IGNORE)
    assert (loss - main_only).item() > 1e-3
    # and gradients reach every side head
    loss.backward()
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0
               for head, wt in zip(model.side_heads, weights or [1] * 4) if wt > 0)


def test_loss_with_the_image_level_head_and_the_sides_together():
    model = ds_model(seed=3, aux_classes=K).train()
    x, mask = torch.randn(2, 1, 64, 64), random_mask(2, 64, 64)
    logits, class_logits, sides = model(x)
    loss, _ = task(None, aux_weight=0.7).loss(CrossEntropyLoss(ignore_index=IGNORE), (logits, class_logits, sides), mask)
    presence = torch.stack([torch.tensor([float((m == c).any()) for c in range(K)]) for m in mask])
    expected = (hand_written_loss(logits, sides, mask, [0.5, 0.25, 0.125, 0.0625], 64, 64)
                + 0.7 * F.binary_cross_entropy_with_logits(class_logits, presence))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_weight_map_comes_down_with_the_mask():
    from segkit.losses import WeightMapCrossEntropyLoss

    model = ds_model(seed=5).train()
    x, mask = torch.randn(2, 1, 64, 64), random_mask(2, 64, 64)
    weight_map = torch.rand(2, 64, 64) + 0.5
    logits, sides = model(x)
    loss, _ = task([1.0, 0.0, 0.0, 0.0]).loss(WeightMapCrossEntropyLoss(ignore_index=IGNORE), (logits, sides), mask, weight_map=weight_map)

    def weighted_ce(pred, target, wmap):  # the U-Net paper's weighted CE, mean over the labelled pixels
        valid = target != IGNORE
        per_pixel = F.cross_entropy(pred, target.clamp(max=K - 1), reduction="none") * wmap
        return per_pixel[valid].sum() / valid.sum()

    side_target = mask[:, 1::2, 1::2]  # stride 2: the block centres
    expected = weighted_ce(logits, mask, weight_map) + weighted_ce(sides[0], side_target, weight_map[:, 1::2, 1::2])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# -- errors ---------------------------------------------------------------------------------------


def test_wrong_number_of_weights_is_an_error_naming_the_key():
    model = ds_model().train()
    output, mask = model(torch.randn(1, 1, 64, 64)), random_mask(1, 64, 64)
    for weights in ([0.5, 0.25], [0.5] * 5, []):
        with pytest.raises(SegkitError, match=r"trainer\.deep_supervision_weights has \d+ weights but the model has 4 side outputs"):
            task(weights).loss(CrossEntropyLoss(ignore_index=IGNORE), output, mask)


@pytest.mark.parametrize("weights", [[0.5, -0.25, 0.1, 0.1], [0.5, float("nan"), 0.1, 0.1], [float("inf")] * 4])
def test_negative_or_non_finite_weights_are_a_config_error(weights):
    with pytest.raises(SegkitError, match=r"trainer\.deep_supervision_weights.*>= 0"):
        config_from_dict({"model": {"decoder": {"deep_supervision": True}}, "trainer": {"deep_supervision_weights": weights}})


def test_weights_without_deep_supervision_are_a_config_error():
    with pytest.raises(SegkitError, match=r"deep_supervision_weights.*model\.decoder\.deep_supervision"):
        config_from_dict({"trainer": {"deep_supervision_weights": [0.5, 0.25, 0.125, 0.0625]}})
    cfg = config_from_dict({"model": {"decoder": {"deep_supervision": True}}, "trainer": {"deep_supervision_weights": [1, 0, 0, 0]}})
    assert list(cfg.trainer.deep_supervision_weights) == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("arch, encoder", [("unet_original", None), ("fcn8s", "resnet18"), ("fcn32s", "vgg11")])
def test_other_archs_refuse_deep_supervision_naming_unet(arch, encoder):
    with pytest.raises(SegkitError, match=rf"deep_supervision is an option of arch .*\bunet\b.* not of {arch}"):
        segkit.create_model(arch, encoder=encoder, num_classes=2, deep_supervision=True)
    # asking for none is fine everywhere (a config shared between archs may say false)
    model = segkit.create_model(arch, encoder=encoder, num_classes=2, deep_supervision=False)
    assert getattr(model, "side_heads", None) is None


def test_deep_supervision_must_be_a_bool():
    with pytest.raises(SegkitError, match="deep_supervision must be true or false"):
        segkit.create_model("unet", encoder="resnet18", deep_supervision="yes")


# -- through the training engine, evaluate and export --------------------------------------------


def tiny_config(root: Path, **trainer) -> dict:
    return {
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": K, "in_channels": 1,
                  "decoder": {"decoder_channels": [8, 8, 8, 8, 8], "deep_supervision": True}},
        "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1},
                 "train_transforms": [], "val_transforms": []},
        "loss": [{"name": "ce", "weight": 1.0}],
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": 1, "batch_size": 3, "seed": 3, "log_interval": 1, **trainer},  # 6 training images: 2 steps
        "output": {"plots": False},
    }


def step_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_root):
    from segkit.engine.train import train

    run = tmp_path_factory.mktemp("ds_run") / "run"
    result = train(config_from_dict(tiny_config(data_root)), run, progress=False)
    assert result.steps == 2
    return run


def test_the_config_key_trains_and_the_weights_are_applied(tmp_path, data_root, trained_run):
    from segkit.engine.train import train

    state = torch.load(trained_run / "last.pt", weights_only=True)
    assert any(k.startswith("side_heads.") for k in state["model"])
    with_sides = step_losses(trained_run)
    assert len(with_sides) == 2 and all(math.isfinite(v) for v in with_sides)
    # Zero side weights: exactly the plain U-Net's losses (the same main weights from the same seed) ...
    zero = train(config_from_dict(tiny_config(data_root), ["trainer.deep_supervision_weights=[0,0,0,0]"]), tmp_path / "zero", progress=False)
    plain_cfg = tiny_config(data_root)
    del plain_cfg["model"]["decoder"]["deep_supervision"]
    plain = train(config_from_dict(plain_cfg), tmp_path / "plain", progress=False)
    assert zero.steps == plain.steps == 2
    assert step_losses(tmp_path / "zero") == pytest.approx(step_losses(tmp_path / "plain"), rel=1e-6)
    # ... and the default halving weights add the side losses on top at the first step (same weights, same batch)
    assert with_sides[0] > step_losses(tmp_path / "plain")[0] + 1e-3


def test_a_trained_model_evaluates_as_the_same_model_without_side_heads(trained_run, data_root):
    from segkit.engine.inference import load_model

    model, cfg = load_model(trained_run / "last.pt")  # eval mode, side heads built from the saved config
    assert model.side_heads is not None
    plain = segkit.create_model("unet", encoder="resnet18", num_classes=K, in_channels=1, decoder_channels=(8, 8, 8, 8, 8)).eval()
    state = torch.load(trained_run / "last.pt", weights_only=True)["model"]
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert missing == [] and sorted({k.split(".")[0] for k in unexpected}) == ["side_heads"]
    x = torch.randn(2, 1, 64, 80)
    with torch.no_grad():
        out, ref = model(x), plain(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_evaluate_and_export_of_a_deep_supervision_checkpoint(trained_run, data_root, tmp_path):
    from segkit.engine.evaluate import evaluate_checkpoint
    from segkit.engine.export import export_model

    report = evaluate_checkpoint(trained_run / "last.pt", data_root, device="cpu")
    assert 0.0 <= report.metrics["miou"] <= 1.0
    result = export_model(trained_run / "last.pt", "torchscript", tmp_path / "model.ts", size=(64, 64))
    assert result.ok and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    loaded = torch.jit.load(str(result.path))
    assert isinstance(loaded(torch.randn(1, 1, 64, 64)), torch.Tensor)

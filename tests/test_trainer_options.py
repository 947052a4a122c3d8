"""Trainer options end to end on tiny generated data (CPU): compile, clip_grad_norm, val_interval,
amp_dtype, and exact resume with DataLoader workers.

Each option is checked against something computed independently of the trainer: gradient norms
measured at every optimizer step, the epochs a validation is due, a float32 run's weights, an
uninterrupted run's weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine.checkpoint import load_checkpoint
from segkit.engine.train import train
from test_train import tiny_config

# Plain SGD with a constant lr: what reaches the optimizer is the whole update, nothing smooths it.
SGD = ["optimizer.name=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.lr=0.05",
       "schedule.name=constant", "schedule.warmup_iters=0"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- clip_grad_norm ------------------------------------------------------------------------------


def grad_norms_at_each_step(cfg, run: Path) -> list[float]:
    """Train ``cfg``; the total gradient norm the optimizer sees at each of its steps."""
    norms: list[float] = []

    def measure(optimizer, args, kwargs):  # runs just before every optimizer.step(), after clipping
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(math.sqrt(sum(float(g.double().square().sum()) for g in grads)))

    handle = register_optimizer_step_pre_hook(measure)
    try:
        train(cfg, run, progress=False)
    finally:
        handle.remove()
    return norms


def test_clip_grad_norm_bounds_the_gradient_the_optimizer_steps_with(tmp_path, data_root):
    limit = 0.05
    free = grad_norms_at_each_step(config_from_dict(tiny_config(data_root, epochs=1), SGD), tmp_path / "free")
    clipped = grad_norms_at_each_step(
        config_from_dict(tiny_config(data_root, epochs=1, clip_grad_norm=limit), SGD), tmp_path / "clipped"
    )
    assert len(free) == len(clipped) == 3  # 6 training images, batch 2
    # Unclipped, the gradients are well above the limit (otherwise this test would show nothing) ...
    assert min(free) > 2 * limit
    # ... clipped, every step's gradient has norm at most the limit, and exactly the limit where it
    # was larger (clip_grad_norm_ scales by limit / (norm + 1e-6)).
    assert max(clipped) <= limit * (1 + 1e-5)
    assert clipped == pytest.approx([limit] * 3, rel=1e-4)
    # The first step sees the same batch and weights in both runs: clipping only rescales it.
    assert free[0] * (limit / (free[0] + 1e-6)) == pytest.approx(clipped[0], rel=1e-5)


# --- val_interval --------------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "interval", "expected"), [(5, 2, [2, 4, 5]), (3, 3, [3])])
def test_val_interval_validates_every_n_epochs_and_after_the_last(tmp_path, data_root, epochs, interval, expected):
    cfg = config_from_dict(tiny_config(data_root, epochs=epochs, val_interval=interval), ["trainer.log_interval=100"])
    result = train(cfg, tmp_path / "run", progress=False)
    rows = [r for r in records(tmp_path / "run") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # an epoch row every epoch
    assert [r["epoch"] for r in rows if "val_miou" in r] == expected  # validation only when due
    for r in rows:  # no validation value of any kind on the other epochs
        assert any(k.startswith("val_") for k in r) == (r["epoch"] in expected), r
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] in expected  # best.pt can only come from a validated epoch
    assert result.best_miou == pytest.approx(max(r["val_miou"] for r in rows if "val_miou" in r))


def test_val_interval_must_be_positive(data_root):
    with pytest.raises(SegkitError, match="trainer.val_interval"):
        config_from_dict(tiny_config(data_root), ["trainer.val_interval=0"])


# --- amp_dtype -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["fp8", "bf16", "half"])
def test_amp_dtype_outside_its_menu_is_a_config_error(data_root, value):
    with pytest.raises(SegkitError, match=r"trainer.amp_dtype.*bfloat16"):
        config_from_dict(tiny_config(data_root), [f"trainer.amp_dtype={value}"])


def test_amp_bfloat16_on_the_cpu_trains_in_float32(tmp_path, data_root):
    """AMP runs on CUDA only: on the CPU, amp=true with bfloat16 trains exactly as amp=false does."""
    cfg = config_from_dict(tiny_config(data_root, epochs=1, amp=True, amp_dtype="bfloat16"))
    result = train(cfg, tmp_path / "bf16", progress=False)
    assert result.steps == 3
    assert all(math.isfinite(r["train_loss"]) for r in records(tmp_path / "bf16") if r["kind"] == "epoch")
    assert load_checkpoint(tmp_path / "bf16" / "last.pt")["config"]["trainer"]["amp_dtype"] == "bfloat16"
    train(config_from_dict(tiny_config(data_root, epochs=1, amp=False)), tmp_path / "fp32", progress=False)
    assert_same_weights(weights(tmp_path / "bf16"), weights(tmp_path / "fp32"))
    assert all(v.dtype != torch.bfloat16 for v in weights(tmp_path / "bf16").values())


# --- num_workers > 0 and exact resume ------------------------------------------------------------


def test_resume_with_two_workers_is_bit_identical_to_an_uninterrupted_run(tmp_path, data_root):
    """Random augmentations run in the workers; stopping mid-epoch and resuming must not change them."""
    cfg = config_from_dict(tiny_config(data_root, epochs=2), ["data.num_workers=2"])
    straight = train(cfg, tmp_path / "straight", progress=False)
    assert straight.steps == 6
    train(cfg, tmp_path / "split", max_steps=2, progress=False)  # inside epoch 1
    mid = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (0, 2, 2)
    train(cfg, tmp_path / "split", max_steps=4, resume=True, progress=False)  # inside epoch 2
    train(cfg, tmp_path / "split", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 6
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))
    # The workers' augmentations matter: a run without them ends elsewhere, so the equality above
    # is not that of two runs that ignore the data order and its random flips.
    no_aug = config_from_dict(tiny_config(data_root, epochs=2), ["data.num_workers=2", "data.train_transforms=[]"])
    train(no_aug, tmp_path / "no_aug", progress=False)
    other = weights(tmp_path / "no_aug")
    a = weights(tmp_path / "straight")
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())


# --- compile -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_trains_through_torch_compile_and_matches_eager(tmp_path, data_root, monkeypatch):
    """trainer.compile wraps the training model in torch.compile (inductor, CPU); it trains to the
    eager run's weights up to float rounding, and the checkpoint holds the plain model's keys."""
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        compiled.append(model)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    cfg = config_from_dict(tiny_config(data_root, epochs=1, compile=True), SGD)
    result = train(cfg, tmp_path / "compiled", progress=False)
    assert len(compiled) == 1 and result.steps == 3
    monkeypatch.setattr(torch, "compile", real_compile)
    train(config_from_dict(tiny_config(data_root, epochs=1), SGD), tmp_path / "eager", progress=False)
    a, b = weights(tmp_path / "compiled"), weights(tmp_path / "eager")
    assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in a)
    for key in a:
        if a[key].is_floating_point():
            # Inductor reduces in another order (BatchNorm's batch statistics too); three SGD steps at
            # lr 0.05 carry that rounding to ~3e-4 of the tensor's scale in layer4's running means,
            # where 2x2 maps give few values per statistic. One step more or fewer moves every running
            # mean by 6e-2 of its scale or more, 60x this tolerance.
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-3 * max(1.0, b[key].abs().max().item()), msg=key)
        else:
            assert torch.equal(a[key], b[key]), key

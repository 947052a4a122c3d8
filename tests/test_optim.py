"""Optimizers and per-iteration schedules: parameter groups and lr values against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segkit.config import config_from_dict
from segkit.engine.optim import build_optimizer, build_scheduler

TOTAL = 20


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)


def lrs(schedule: dict, total: int = TOTAL, lr: float = 1.0) -> list[float]:
    cfg = config_from_dict({"optimizer": {"name": "sgd", "lr": lr}, "schedule": schedule})
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def closed_form(name: str, t: int, total: int) -> float:
    return {
        "poly": (1 - t / total) ** 0.9,
        "step": 0.1 ** (t // 6),
        "multistep": 0.1 ** sum(t >= m for m in (5, 12)),
        "exponential": 0.8**t,
        "inverse_time": 1 / (1 + 0.5 * t),
        "cosine": 0.5 * (1 + math.cos(math.pi * t / total)),
        "constant": 1.0,
    }[name]


@pytest.mark.parametrize("name", ["poly", "step", "multistep", "exponential", "inverse_time", "cosine", "constant"])
def test_schedules_follow_their_closed_forms(name):
    got = lrs({"name": name, "step_size": 6, "milestones": [5, 12], "gamma": 0.8 if name == "exponential" else 0.1, "decay": 0.5})
    expected = [closed_form(name, t, TOTAL) for t in range(TOTAL)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_warmup_ramps_linearly_then_hands_over():
    got = lrs({"name": "poly", "warmup_iters": 5, "warmup_factor": 0.1})
    assert got[:5] == pytest.approx([0.1 + 0.9 * t / 5 for t in range(5)])
    assert got[5:] == pytest.approx([(1 - t / 15) ** 0.9 for t in range(15)])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_each_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = Tiny()
    cfg = config_from_dict({"optimizer": {"name": name, "lr": 0.01, "nesterov": True}})
    optimizer = build_optimizer(model, cfg)
    before = model.head.weight.detach().clone()
    x = torch.randn(2, 1, 8, 8)
    model.head(model.encoder(x)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.head.weight)


def test_norms_and_biases_get_no_weight_decay_and_encoder_its_own_lr():
    model = Tiny()
    cfg = config_from_dict({"optimizer": {"lr": 0.1, "weight_decay": 0.01}, "model": {"encoder_lr_mult": 0.1}})
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert groups["encoder"]["lr"] == pytest.approx(0.01) and groups["encoder"]["weight_decay"] == 0.01
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["encoder_no_decay"]["params"]} == {id(model.encoder[0].bias), id(model.encoder[1].weight), id(model.encoder[1].bias)}
    assert groups["model"]["lr"] == pytest.approx(0.1)


def test_frozen_encoder_is_left_out():
    model = Tiny()
    cfg = config_from_dict({"model": {"freeze_encoder": True}})
    optimizer = build_optimizer(model, cfg)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(model.head.weight), id(model.head.bias)}
    assert not any(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad"])
def test_optimizers_with_a_fused_kernel_use_it_and_step_as_torchs_default(name):
    """Fused by default (one kernel instead of a Python loop over the parameters); the weights
    after a few steps equal those of torch's default implementation to float32 rounding."""
    torch.manual_seed(0)
    models = [Tiny(), Tiny()]
    for model in models:  # a bias before BatchNorm gets rounding noise as gradient, which Adam scales up to lr
        model.encoder[0] = nn.Conv2d(1, 4, 3, bias=False)
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    cfg = config_from_dict({"optimizer": {"name": name, "lr": 0.05, "weight_decay": 0.01}})
    fused, plain = build_optimizer(models[0], cfg), build_optimizer(models[1], cfg, fused=False)
    assert fused.defaults["fused"] is True and not plain.defaults.get("fused")
    x = torch.randn(4, 1, 8, 8)
    for _ in range(5):
        for model, optimizer in zip(models, (fused, plain)):
            optimizer.zero_grad()
            model.head(model.encoder(x)).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(models[0].parameters(), start))  # every weight moved


def test_fused_can_be_switched_off_and_is_refused_where_torch_has_none():
    from segkit import SegkitError

    off = build_optimizer(Tiny(), config_from_dict({"optimizer": {"name": "adamw", "fused": False}}))
    assert not off.defaults.get("fused")
    rmsprop = build_optimizer(Tiny(), config_from_dict({"optimizer": {"name": "rmsprop"}}))  # no fused kernel: torch's default
    assert isinstance(rmsprop, torch.optim.RMSprop)
    with pytest.raises(SegkitError, match="optimizer.fused is true but torch has no fused rmsprop"):
        build_optimizer(Tiny(), config_from_dict({"optimizer": {"name": "rmsprop", "fused": True}}))

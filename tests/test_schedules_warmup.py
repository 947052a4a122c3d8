"""``step`` / ``multistep`` with a warm-up: boundaries count from iteration 0 and the ramp multiplies them.

Expected lrs are written out by hand (lr = base * ramp(t) * gamma ** boundaries passed, see
segkit/engine/optim.py); without a warm-up torch's own StepLR / MultiStepLR are the reference.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from segkit.config import config_from_dict
from segkit.engine.optim import build_optimizer, build_scheduler


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(1, 2, 3)
        self.head = nn.Conv2d(2, 2, 1)


def lrs(schedule: dict, total: int, lr: float = 1.0, group: str = "model") -> list[float]:
    """The lr each of ``total`` optimizer steps uses, stepping the schedule as the trainer does."""
    cfg = config_from_dict({"optimizer": {"name": "sgd", "lr": lr}, "schedule": schedule, "model": {"encoder_lr_mult": 0.1}})
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    values = []
    for _ in range(total):
        values.append(next(g["lr"] for g in optimizer.param_groups if g["name"] == group))
        optimizer.step()
        scheduler.step()
    return values


WARM = {"warmup_iters": 4, "warmup_factor": 0.2, "gamma": 0.5}
# t:         0    1    2    3          4    5    6     7     8     9
# ramp:      0.2  0.4  0.6  0.8        1    1    1     1     1     1
# decays:    0    0    0    1          1    1    2     2     2     3   (boundaries 3, 6, 9)
BY_HAND = [0.2, 0.4, 0.6, 0.8 * 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_step_with_warmup_counts_boundaries_from_iteration_zero():
    assert lrs({"name": "step", "step_size": 3, **WARM}, 10) == pytest.approx(BY_HAND, rel=1e-12)


def test_multistep_with_warmup_gives_the_same_lrs_as_step():
    assert lrs({"name": "multistep", "milestones": [3, 6, 9], **WARM}, 10) == pytest.approx(BY_HAND, rel=1e-12)
    # Milestones in any order mean the same iterations.
    assert lrs({"name": "multistep", "milestones": [9, 3, 6], **WARM}, 10) == pytest.approx(BY_HAND, rel=1e-12)


def test_a_boundary_after_the_warmup_and_the_encoder_multiplier():
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]  # one milestone at 6
    assert lrs({"name": "multistep", "milestones": [6], **WARM}, 10, lr=2.0) == pytest.approx([2 * v for v in expected], rel=1e-12)
    assert lrs({"name": "step", "step_size": 6, **WARM}, 10, lr=2.0, group="encoder") == pytest.approx(
        [0.2 * v for v in expected], rel=1e-12
    )


@pytest.mark.parametrize("name", ["step", "multistep"])
def test_without_warmup_they_are_torchs_step_schedules(name):
    got = lrs({"name": name, "step_size": 3, "milestones": [3, 5, 8], "gamma": 0.3}, 12)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = lr_scheduler.StepLR(optimizer, 3, 0.3) if name == "step" else lr_scheduler.MultiStepLR(optimizer, [3, 5, 8], 0.3)
    expected = []
    for _ in range(12):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert got == pytest.approx(expected, rel=1e-12)


def test_schedule_state_resumes_mid_warmup():
    """A scheduler restored from its state dict continues the hand-computed sequence."""
    cfg = config_from_dict({"optimizer": {"name": "sgd", "lr": 1.0}, "schedule": {"name": "step", "step_size": 3, **WARM}})
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg, 10)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    # As segkit.engine.train resumes: build both, then load the optimizer's state and the schedule's.
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg, 10)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    rest = []
    for _ in range(8):
        rest.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rest == pytest.approx(BY_HAND[2:], rel=1e-12)


def test_a_run_saved_with_the_old_sequential_schedule_resumes():
    """``last.pt`` of an older segkit holds a SequentialLR (warm-up, then StepLR) state: it loads, by iteration count."""
    cfg = config_from_dict({"optimizer": {"name": "sgd", "lr": 1.0}, "schedule": {"name": "step", "step_size": 3, **WARM}})
    optimizer = build_optimizer(Tiny(), cfg)
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=0.2, end_factor=1.0, total_iters=4)
    old = lr_scheduler.SequentialLR(optimizer, [ramp, lr_scheduler.StepLR(optimizer, 3, 0.5)], milestones=[4])
    for _ in range(5):
        optimizer.step()
        old.step()
    opt_state, sched_state = optimizer.state_dict(), old.state_dict()
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg, 10)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    rest = []
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rest.append(optimizer.param_groups[0]["lr"])
    assert rest == pytest.approx(BY_HAND[6:] + [0.125], rel=1e-12)

"""Optimizers and learning-rate schedules from the config, built from torch.optim.

Parameter groups: the encoder may get its own learning rate (``model.encoder_lr_mult``, the
fine-tuning recipe of transfer learning) or be frozen (``model.freeze_encoder``); for a classifier
the "encoder" is everything but its head (:func:`encoder_parameters`); norm-layer
weights and biases get no weight decay unless ``optimizer.decay_norm_and_bias`` is set (Goyal
et al. 2017; decaying them only pulls BN scales towards zero).

Schedules are stepped once per optimizer step (iteration), as segmentation training does: the
"poly" policy of DeepLab, lr = base * (1 - t / T) ** power, is the default. Every schedule may
start with a linear warm-up from ``warmup_factor * base`` over ``warmup_iters`` iterations.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import lr_scheduler

__all__ = ["build_optimizer", "build_scheduler", "encoder_parameters", "parameter_groups"]


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The "encoder" part: ``model.encoder`` of a segmentation model; everything but the head
    (its ``head_prefixes`` layers, those replaced for new classes) of a classifier."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return list(encoder.parameters())
    head = tuple(getattr(model, "head_prefixes", ()))
    if not head:
        return []
    return [p for name, p in model.named_parameters() if not name.startswith(head)]


def parameter_groups(model: nn.Module, cfg: DictConfig) -> list[dict[str, Any]]:
    """Split trainable parameters into (encoder?, decay?) groups with their lr and weight decay."""
    encoder_params = encoder_parameters(model)
    encoder_ids = {id(p) for p in encoder_params}
    if cfg.model.freeze_encoder:
        if not encoder_ids:
            from segkit.errors import SegkitError

            raise SegkitError(f"model.freeze_encoder is set but {type(model).__name__} has no encoder to freeze; remove the key.")
        for p in encoder_params:
            p.requires_grad_(False)
    opt = cfg.optimizer
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # Biases and norm scales are the 1-D parameters of every segkit layer.
        decay = opt.decay_norm_and_bias or p.ndim > 1
        groups.setdefault((id(p) in encoder_ids, decay), []).append(p)
    result = []
    for (in_encoder, decay), params in sorted(groups.items()):
        lr = opt.lr * (cfg.model.encoder_lr_mult if in_encoder else 1.0)
        result.append({"params": params, "lr": lr, "weight_decay": opt.weight_decay if decay else 0.0,
                       "name": f"{'encoder' if in_encoder else 'model'}{'' if decay else '_no_decay'}"})
    return result


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer.name`` over :func:`parameter_groups`."""
    opt = cfg.optimizer
    groups = parameter_groups(model, cfg)
    name = opt.name
    if name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=opt.lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=opt.lr, eps=opt.eps)
    raise ValueError(f"unknown optimizer {name!r}")  # config validation lists the names


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_iters: int) -> lr_scheduler.LRScheduler:
    """The schedule named by ``cfg.schedule.name`` over ``total_iters`` optimizer steps, with warm-up."""
    s = cfg.schedule
    warmup = min(s.warmup_iters, max(total_iters - 1, 0))
    main_iters = max(total_iters - warmup, 1)
    name = s.name
    main: lr_scheduler.LRScheduler
    if name == "poly":
        main = lr_scheduler.PolynomialLR(optimizer, total_iters=main_iters, power=s.power)
    elif name == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    elif name == "multistep":
        main = lr_scheduler.MultiStepLR(optimizer, milestones=[m - warmup for m in s.milestones], gamma=s.gamma)
    elif name == "exponential":
        main = lr_scheduler.ExponentialLR(optimizer, gamma=s.gamma)
    elif name == "inverse_time":
        decay = s.decay
        main = lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
    elif name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_iters, eta_min=s.min_lr)
    elif name == "constant":
        main = lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    else:
        raise ValueError(f"unknown schedule {name!r}")
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=s.warmup_factor, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

"""The pieces a hand-written training loop (torchvision reference style) builds from a segkit config.

The peers of ``training`` and ``end_to_end`` share them, so that both benchmarks compare the engine
with the same plain loop: the seeded model and loss, a DataLoader that shuffles and drops the last
incomplete batch, torch's default optimizer implementation (not segkit's fused choice), and the
config's schedule over ``epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from segkit.engine.builders import build_datasets, build_loss_fn, build_model_from_config
from segkit.engine.optim import build_optimizer, build_scheduler


@dataclass
class PlainPieces:
    model: nn.Module
    loss_fn: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    val_set: Any


def plain_pieces(cfg: DictConfig, device: torch.device, epochs: int) -> PlainPieces:
    """Model, loss, training loader, optimizer and schedule (``epochs`` epochs) on ``device``, and the validation set."""
    torch.manual_seed(cfg.trainer.seed)
    train_set, val_set = build_datasets(cfg)
    model = build_model_from_config(cfg).to(device)
    loss_fn = build_loss_fn(cfg).to(device)
    loader = DataLoader(train_set.dataset, batch_size=cfg.trainer.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    optimizer = build_optimizer(model, cfg, fused=False)  # torch's default implementation, as a hand-written loop gets
    scheduler = build_scheduler(optimizer, cfg, len(loader) * epochs)
    return PlainPieces(model, loss_fn, loader, optimizer, scheduler, val_set)

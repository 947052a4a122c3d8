"""Helpers shared by the backbone tests: torchvision models as oracles, checkpoint files in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn


def torchvision_model(name: str, meta: bool = False, **kwargs) -> nn.Module:
    """torchvision's model ``name`` with random weights (on the meta device: no memory, no init cost)."""
    builder = getattr(torchvision.models, name)
    if meta:
        with torch.device("meta"):
            return builder(weights=None, **kwargs)
    return builder(weights=None, **kwargs)


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters.

    Fresh BNs are the identity in eval mode, which would hide a misplaced or missing norm layer.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def save_state(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Validation during training: the ConfusionMatrix over the validation split, summed across ranks
(for ``task: classification``, top-k accuracy: :func:`segkit.engine.classify.validate_classification`)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from segkit.engine.builders import pad_collate
from segkit.engine.distributed import DistInfo, SeededSampler

__all__ = ["validate"]


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: Any,
    cfg: DictConfig,
    device: torch.device,
    info: DistInfo,
    *,
    amp: tuple[bool, torch.dtype] = (False, torch.float32),
    channels_last: bool = False,
) -> dict[str, Any]:
    """mIoU and friends of ``model`` on ``dataset`` (every sample once, across all ranks).

    Each rank scores its own shard of the split, with no padding samples (a padded
    DistributedSampler would count repeated images twice); ``ConfusionMatrix.compute`` sums the
    matrices of all ranks in place.
    """
    from segkit.metrics import ConfusionMatrix

    if cfg.task == "classification":
        from segkit.engine.classify import validate_classification

        return validate_classification(model, dataset, cfg, device, info, amp=amp, channels_last=channels_last)
    was_training = model.training
    model.eval()
    sampler = SeededSampler(dataset, shuffle=False, seed=cfg.trainer.seed, rank=info.rank, world_size=info.world_size, pad=False)
    loader = DataLoader(dataset, batch_size=cfg.trainer.val_batch_size or cfg.trainer.batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, collate_fn=pad_collate(cfg.data.ignore_index),
                        pin_memory=device.type == "cuda")
    matrix = ConfusionMatrix(cfg.model.num_classes, ignore_index=cfg.data.ignore_index)
    use_amp, dtype = amp
    for images, masks in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            output = model(images)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        matrix.update(logits.float().argmax(1), masks.to(device, non_blocking=True))
    model.train(was_training)
    return matrix.compute()

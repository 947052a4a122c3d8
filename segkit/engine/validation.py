"""Validation during training: the model scored on the validation split, as ``segkit evaluate`` scores it.

The images go through :func:`segkit.engine.inputs.iterate_logits`, the one input pipeline that
evaluation and prediction use too, so ``segkit evaluate --checkpoint best.pt`` reproduces the
validation confusion matrix stored in ``best.pt`` (for any image sizes, mixed sizes in one folder,
16-bit images). Each rank scores its own shard of the split (no padding samples: a padded
sampler would count repeated images twice) and ``ConfusionMatrix.compute`` sums the ranks'
matrices. For ``task: classification``: top-k accuracy,
:func:`segkit.engine.classify.validate_classification`.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from segkit.engine.distributed import DistInfo

__all__ = ["score_validation_split"]


def score_validation_split(
    model: nn.Module,
    dataset: Any,
    cfg: DictConfig,
    device: torch.device,
    info: DistInfo,
    *,
    amp: tuple[bool, torch.dtype] = (False, torch.float32),
    channels_last: bool = False,
) -> dict[str, Any]:
    """mIoU and friends of ``model`` on the validation ``dataset`` (every sample once, across all ranks).

    ``dataset`` is the training's validation set (a segkit dataset, possibly wrapped); only its
    files, labels and normalisation are used: the images take the config's ``data.val_transforms``
    through :class:`~segkit.engine.inputs.InputPipeline` and the masks are scored as stored.
    """
    from segkit.engine.builders import transform_steps
    from segkit.engine.inputs import InferenceItems, InputPipeline, iterate_logits
    from segkit.metrics import ConfusionMatrix

    if cfg.task == "classification":
        from segkit.engine.classify import validate_classification

        return validate_classification(model, dataset, cfg, device, info, amp=amp, channels_last=channels_last)
    base = getattr(dataset, "dataset", dataset)  # SeededDataset wraps the segkit dataset
    pipeline = InputPipeline(transform_steps(cfg, train=False), cfg.data.ignore_index, cfg.trainer.seed)
    items = InferenceItems(base, pipeline)
    use_amp, dtype = amp
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(cfg.model.num_classes, ignore_index=cfg.data.ignore_index)
    shard = range(info.rank, len(items), info.world_size)
    for item, logits in iterate_logits(model, items, device, batch_size=cfg.trainer.val_batch_size or cfg.trainer.batch_size,
                                       workers=cfg.data.num_workers, indices=shard, amp=dtype if use_amp else False,
                                       channels_last=channels_last):
        assert item.mask is not None
        matrix.update(logits, item.mask[None].to(device, non_blocking=True))
    model.train(was_training)
    return matrix.compute()

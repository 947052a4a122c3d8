"""Image classification in the training engine (``task: classification``): data, model, loss, validation.

- Data: ``data.kind`` ``cifar`` (the "python version" batch files), ``imagefolder``
  (``root/<split>/<class>/<image>``) or ``synthetic`` (generated CIFAR-format shapes, written to
  ``data.root`` when missing). Augmentation per ``data.augment`` (see
  :mod:`segkit.data.classification`); ``data.options`` takes ``mean``/``std`` (default: the
  CIFAR training images' own per-channel statistics, ImageNet's for folders), and for CIFAR
  ``labels`` (CIFAR-100 fine/coarse) and ``holdout``.
- Model: ``segkit.create_classifier(model.arch, ...)``; ``model.encoder_weights`` is the path of
  the classifier's checkpoint (torchvision's file, or a segkit run's ``best.pt``); a head of
  another class count keeps its fresh initialisation.
- Loss: cross-entropy on the main logits plus ``trainer.aux_weight`` (0.3, the GoogLeNet paper's)
  times the cross-entropy of each auxiliary head (GoogLeNet's two, Inception-v3's one). The
  auxiliary heads exist in training mode only, so validation never sees them.
- Validation: top-1/top-5 accuracy and error, per-class accuracy, on one centre crop or ten crops
  (``trainer.eval_crops: ten_crop``) whose softmax probabilities are averaged (the VGG paper
  averages the soft-max class posteriors of its crops).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segkit.config import synthetic_sizes
from segkit.engine.distributed import DistInfo, SeededSampler, main_then_share
from segkit.engine.loop import ignore_foreign_sigterm
from segkit.errors import SegkitError

__all__ = [
    "average_crops",
    "build_classification_datasets",
    "build_classification_loss",
    "build_classifier_from_config",
    "classification_loss",
    "predict_ten_crop",
    "validate_classification",
]

logger = logging.getLogger("segkit")

_OPTIONS = {"cifar": ("mean", "std", "labels", "holdout"), "imagefolder": ("mean", "std")}


def _transforms(cfg: DictConfig, kind: str, mean: Any, std: Any) -> tuple[Any, Any]:
    from segkit.data.classification import ClassificationTransform

    d = cfg.data
    folder = kind == "imagefolder"
    augment = d.augment if d.augment != "auto" else ("random_resized_crop" if folder else "pad_crop")
    crop = d.crop_size if d.crop_size is not None else (224 if folder else None)
    if cfg.trainer.eval_crops == "ten_crop" and crop is None:
        # Crops the size of the image would be five copies of it and five of its flip: 10x the work for 2 views.
        raise SegkitError("trainer.eval_crops: ten_crop needs data.crop_size smaller than the (resized) images, e.g. "
                          "data.crop_size: 28 with data.resize_size: 32 for CIFAR; or use eval_crops: center.")
    resize = d.resize_size if d.resize_size is not None else (round(crop / 0.875) if folder and crop else None)
    if crop is not None and resize is not None and crop > resize:
        # Found before training, not at the first validation after a whole epoch (and nothing saved).
        raise SegkitError(f"data.crop_size {crop} is larger than data.resize_size {resize}: evaluation resizes the shorter side "
                          f"to {resize}, so its centre crop cannot fit; make data.crop_size at most data.resize_size.")
    train = ClassificationTransform(True, augment, crop, mean=mean, std=std, resize_size=resize, padding=d.crop_padding, hflip=d.hflip)
    val = ClassificationTransform(False, "none", crop, mean=mean, std=std, resize_size=resize,
                                  ten_crop=cfg.trainer.eval_crops == "ten_crop")
    return train, val


def build_classification_datasets(cfg: DictConfig, info: DistInfo | None = None) -> tuple[Any, Any]:
    """Training and validation sets of a classification config (items ``(image, label)``; they take ``(index, seed)``)."""
    from segkit.data.cifar import CifarDataset, find_cifar, make_synthetic_cifar
    from segkit.data.classification import ImageFolderDataset, channel_stats

    data = cfg.data
    kind = data.kind
    if kind in ("folder", "coco"):
        raise SegkitError(f"data.kind {kind!r} is for task: segmentation; use cifar, imagefolder or synthetic for classification.")
    if any(spec not in (None, "auto") and len(spec) for spec in (data.train_transforms, data.val_transforms)):
        raise SegkitError("data.train_transforms / data.val_transforms are segmentation pipelines; for classification use "
                          "data.augment, data.crop_size, data.resize_size, data.crop_padding and data.hflip.")
    if not data.root:
        raise SegkitError("config key 'data.root' is empty; give the dataset folder.")
    root = Path(data.root).expanduser()
    options: dict[str, Any] = OmegaConf.to_container(data.options, resolve=True)  # type: ignore[assignment]
    if kind == "synthetic":
        def write() -> None:
            from segkit.data.synthetic import record_synthetic, reuse_synthetic

            try:
                find_cifar(root)
                present = True
            except SegkitError:
                present = False
            # data.synthetic's n and size left unset: make_synthetic_cifar's CIFAR-like defaults (spelt out,
            # so that a config naming them asks for the same data)
            request = {"seed": data.synthetic.seed, **synthetic_sizes(cfg, n=6000, size=16)}
            if not reuse_synthetic(root, present, request):
                make_synthetic_cifar(root, **request)
                record_synthetic(root, request)

        # Rank 0 writes, the others wait for it; if writing fails every rank raises its error (no gloo traceback).
        main_then_share(write, info or DistInfo())
        kind = "cifar"
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise SegkitError(f"data.options.{unknown[0]} is not an option of {kind} data; its options are {', '.join(_OPTIONS[kind])}.")
    mean, std = options.pop("mean", None), options.pop("std", None)
    if kind == "cifar":
        holdout = options.get("holdout")
        if isinstance(holdout, int) and not isinstance(holdout, bool) and holdout > 0 and data.val_split != "val" \
                and data.train_split == "train":
            # The held-back images would be used nowhere: the run trains on fewer and validates on test.
            raise SegkitError(f"data.options.holdout={options['holdout']} keeps training images back for the val split, but "
                              f"data.val_split is {data.val_split!r}; set data.val_split=val, or remove the holdout.")
        train = CifarDataset(root, data.train_split, **options)
        val = CifarDataset(root, data.val_split, **options)
        if mean is None or std is None:
            stats = channel_stats(train.images)  # per-channel statistics of the training images
            mean, std = mean if mean is not None else stats[0], std if std is not None else stats[1]
    else:
        from segkit.data.base import default_mean_std

        train = ImageFolderDataset(root, data.train_split, in_channels=cfg.model.in_channels)
        val = ImageFolderDataset(root, data.val_split, in_channels=cfg.model.in_channels, classes=train.classes)
        defaults = default_mean_std(cfg.model.in_channels)
        mean, std = mean if mean is not None else defaults[0], std if std is not None else defaults[1]
    train.transform, val.transform = _transforms(cfg, kind, mean, std)
    crop = val.transform.size
    if kind == "cifar" and crop is not None and val.transform.resize_size is None and len(val) and crop > min(val.images.shape[-2:]):
        side = "x".join(map(str, val.images.shape[-2:]))
        raise SegkitError(f"data.crop_size {crop} is larger than the {side} images under {root}; evaluation takes a centre "
                          f"crop of that size, which cannot fit: lower data.crop_size (or set data.resize_size to upscale first).")
    if train.in_channels != cfg.model.in_channels:
        raise SegkitError(f"the images under {root} have {train.in_channels} channel(s) but model.in_channels is "
                          f"{cfg.model.in_channels}; set model.in_channels={train.in_channels}.")
    if train.num_classes != cfg.model.num_classes:
        raise SegkitError(f"the data under {root} has {train.num_classes} classes but model.num_classes is "
                          f"{cfg.model.num_classes}; set model.num_classes={train.num_classes}.")
    return train, val


def build_classifier_from_config(cfg: DictConfig) -> nn.Module:
    """``segkit.create_classifier`` with the config's model section (``model.arch`` names the classifier)."""
    from segkit.models import create_classifier

    m = cfg.model
    if m.decoder:
        raise SegkitError("model.decoder holds segmentation decoder options; remove it for task: classification.")
    # A classifier is its backbone and head: model.weights (the whole model, as the resume hints say) and
    # model.encoder_weights name the same thing here. It was silently ignored before.
    if m.weights is not None and m.encoder_weights is not None and str(m.weights) != str(m.encoder_weights):
        raise SegkitError(f"model.weights ({m.weights}) and model.encoder_weights ({m.encoder_weights}) both set the classifier's "
                          "weights; keep one of them.")
    weights = m.weights if m.weights is not None else m.encoder_weights
    if m.freeze_encoder and weights is None:
        logger.warning("segkit: model.freeze_encoder is set but model.encoder_weights is not: the frozen backbone keeps its "
                       "random initialisation (set model.encoder_weights to a checkpoint file for transfer learning).")
    return create_classifier(m.arch, num_classes=m.num_classes, in_channels=m.in_channels, weights=weights)


def build_classification_loss(cfg: DictConfig) -> nn.Module:
    """Cross-entropy from ``cfg.loss`` (``ce`` terms only; options class_weights, label_smoothing). No label is ignored."""
    from segkit.losses import build_loss

    spec = OmegaConf.to_container(cfg.loss, resolve=True)
    for i, term in enumerate(spec):  # type: ignore[arg-type]
        if term.get("name") != "ce":  # type: ignore[union-attr]
            raise SegkitError(f"loss[{i}] is {term.get('name')!r}; task: classification takes cross-entropy: loss: [{{name: ce}}].")  # type: ignore[union-attr]
        term.setdefault("ignore_index", -100)  # type: ignore[union-attr]  # never 255: ImageNet has a class 255
    return build_loss(spec)  # type: ignore[arg-type]


def classification_loss(loss_fn: nn.Module, output: Any, target: Tensor, aux_weight: float) -> tuple[Tensor, Tensor]:
    """``(loss, main logits)``: ``loss_fn(main) + aux_weight * sum(loss_fn(aux_i))``.

    ``output`` is the logits ``(N, K)`` or, from a net with auxiliary heads in training mode,
    ``(logits, aux_logits...)``.
    """
    if isinstance(output, (tuple, list)):
        logits, aux = output[0], list(output[1:])
    else:
        logits, aux = output, []
    loss = loss_fn(logits.float(), target)
    for extra in aux:
        loss = loss + aux_weight * loss_fn(extra.float(), target)
    return loss, logits


def average_crops(model: nn.Module, crops: Tensor, channels_last: bool = False) -> Tensor:
    """Mean softmax probabilities ``(N, K)`` of the crops ``(N, M, C, h, w)`` of each image (e.g. M = 10)."""
    n, m = crops.shape[:2]
    flat = crops.flatten(0, 1)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    output = model(flat)
    logits = output[0] if isinstance(output, (tuple, list)) else output
    return logits.float().softmax(dim=1).view(n, m, -1).mean(dim=1)


def predict_ten_crop(model: nn.Module, images: Tensor, size: int) -> Tensor:
    """10-crop prediction of same-size ``images`` ``(N, C, H, W)``: mean softmax probabilities ``(N, K)``."""
    from segkit.data.classification import ten_crop

    return average_crops(model, ten_crop(images, size))


@torch.no_grad()
def validate_classification(model: nn.Module, dataset: Any, cfg: DictConfig, device: torch.device, info: DistInfo, *,
                            amp: tuple[bool, torch.dtype] = (False, torch.float32), channels_last: bool = False) -> dict[str, Any]:
    """Top-1/top-5 accuracy and error, per-class and mean class accuracy over ``dataset`` (every sample once, across ranks)."""
    from segkit.metrics import TopKAccuracy

    was_training = model.training
    model.eval()
    num_classes = cfg.model.num_classes
    sampler = SeededSampler(dataset, shuffle=False, seed=cfg.trainer.seed, rank=info.rank, world_size=info.world_size, pad=False)
    loader = DataLoader(dataset, batch_size=cfg.trainer.val_batch_size or cfg.trainer.batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_foreign_sigterm)
    topk = (1, 5) if num_classes > 5 else (1,)  # with <= 5 classes top-5 is always right
    metric = TopKAccuracy(topk, device=device, num_classes=num_classes)
    use_amp, dtype = amp
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            if images.dim() == 5:  # (N, crops, C, h, w)
                scores = average_crops(model, images, channels_last)
            else:
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                output = model(images)
                scores = output[0] if isinstance(output, (tuple, list)) else output
        metric.update(scores.float(), labels.to(device, non_blocking=True))
    model.train(was_training)
    metrics: dict[str, Any] = metric.compute()
    for k in topk:
        metrics[f"top{k}_error"] = 1.0 - metrics[f"top{k}"]
    return metrics

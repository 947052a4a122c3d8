"""From image files to model inputs, and from logits back to the ground truth's pixels.

Evaluation and prediction feed the model exactly what training's validation fed it: the image
scaled and standardised by the dataset (``segkit.data.base``: the config's ``data.options`` mean,
std, scaling), after the config's ``data.val_transforms`` applied to the image alone. The masks
are never transformed: scores are taken at the ground truth's own resolution, so logits of a
resized input are resized back (bilinear) and those of a padded input cropped back.

Validation steps that move pixels without a way back (crops, flips, rotations, elastic) are left
out with a warning: evaluation scores every pixel of the whole image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from segkit.data.base import SegmentationDataset
from segkit.engine.inference import resize_logits

__all__ = ["ImageFiles", "InputPipeline", "Item", "InferenceItems", "group_by_size", "normalisation_options"]

logger = logging.getLogger("segkit")

# val_transforms steps that evaluation cannot map back to the ground truth's pixels
_NOT_INVERTIBLE = {"random_resized_crop", "random_crop", "center_crop", "hflip", "vflip", "rotate90", "rotate", "affine", "elastic"}
_INTENSITY_KEYS = ("mean", "std", "scaling", "percentiles")


def _step_name(step: Any) -> str | None:
    if isinstance(step, str):
        return step
    if isinstance(step, Mapping):
        return step.get("name")
    return None


class InputPipeline:
    """The validation transforms, on images only; remembers the size to crop logits back to.

    Steps up to the last ``resize`` run first; the size they produce is the one logits are
    cropped to (undoing later ``pad`` steps, which pad bottom/right) before being resized to the
    mask. Without any steps the image passes unchanged.
    """

    def __init__(self, spec: Sequence[Any] | None, ignore_index: int = 255, seed: int | None = 0) -> None:
        from segkit.data import build_transforms

        kept, dropped = [], []
        for step in spec or []:
            name = _step_name(step)
            position = step.get("position", "top_left") if isinstance(step, Mapping) else "top_left"
            if name in _NOT_INVERTIBLE or (name == "pad" and position != "top_left"):
                dropped.append(str(name))
            else:
                kept.append(step)
        self.dropped = dropped
        if dropped:
            logger.warning("%s", self.note())
        last_resize = max((i for i, step in enumerate(kept) if _step_name(step) == "resize"), default=-1)
        before, after = kept[: last_resize + 1], kept[last_resize + 1 :]
        self.before = build_transforms(before, train=False, seed=seed, ignore_index=ignore_index) if before else None
        self.after = build_transforms(after, train=False, seed=seed, ignore_index=ignore_index) if after else None

    def note(self) -> str:
        """What was left out of the validation transforms, as a sentence ('' if nothing)."""
        if not self.dropped:
            return ""
        return (f"val_transforms step(s) {', '.join(self.dropped)} left out: inference covers whole images and scores "
                "them at the ground truth's resolution")

    def __call__(self, image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """``image`` float32 (H, W, C) in [0, 1] -> (model input (C, h, w) not yet standardised, size to crop logits to)."""
        size = (image.shape[0], image.shape[1])
        tensor: Tensor | None = None
        if self.before is not None:
            tensor = self.before(image=image)["image"]
            size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
            image = tensor.permute(1, 2, 0).numpy()
        if self.after is not None:
            tensor = self.after(image=image)["image"]
        if tensor is None:
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return tensor.float(), size

    @staticmethod
    def to_mask_size(logits: Tensor, scored: Sequence[int], mask: Sequence[int]) -> Tensor:
        """Logits ``(N, K, h, w)`` of the model input -> ``(N, K, H, W)`` of the mask: crop, then resize."""
        return resize_logits(logits[..., : scored[0], : scored[1]], mask)


def normalisation_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The intensity options (mean, std, scaling, percentiles) among a config's ``data.options``."""
    return {k: options[k] for k in _INTENSITY_KEYS if options.get(k) is not None}


class ImageFiles(SegmentationDataset):
    """Image files without masks, scaled and standardised as a segkit dataset would (for ``predict``)."""

    def __init__(self, paths: Sequence[Path], in_channels: int, **intensity: Any) -> None:
        self.paths = list(paths)
        self.in_channels = in_channels
        self.num_classes = None
        self.classes = None
        self.ignore_index = 255
        self._setup_intensity(intensity.get("mean"), intensity.get("std"), intensity.get("scaling", "auto"),
                              intensity.get("percentiles", (1.0, 99.8)))

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]


@dataclass
class Item:
    index: int
    size: tuple[int, int]  # (H, W) of the image file
    image: Tensor  # (C, h, w) standardised model input
    scored_size: tuple[int, int]  # crop the logits to this before resizing to the mask
    mask: Tensor | None  # (H, W) int64, the ground truth as stored
    unit_image: np.ndarray | None  # (H, W, C) float32 in [0, 1], for overlays


class InferenceItems(Dataset):
    """Items of a segkit dataset for inference: the image through ``pipeline``, the mask untouched."""

    def __init__(self, dataset: SegmentationDataset, pipeline: InputPipeline, masks: bool = True, keep_image: bool = False) -> None:
        self.dataset = dataset
        self.pipeline = pipeline
        self.masks = masks
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        from segkit.errors import SegkitError

        unit = self.dataset.load_image(index)
        mask = None
        if self.masks:
            raw = self.dataset.load_mask(index)
            if raw.shape[:2] != unit.shape[:2]:
                raise SegkitError(
                    f"image {self.dataset.image_path(index)} is {unit.shape[1]}x{unit.shape[0]} but its mask "
                    f"{self.dataset.mask_source(index)} is {raw.shape[1]}x{raw.shape[0]}; make them the same size"
                )
            mask = torch.from_numpy(raw.astype(np.int64))
        image, scored = self.pipeline(unit)
        image = (image - self.dataset.mean) / self.dataset.std
        return Item(index, (unit.shape[0], unit.shape[1]), image, scored, mask, unit if self.keep_image else None)


def collate_items(batch: list[Item]) -> list[Item]:
    return batch


def group_by_size(items: Sequence[Item]) -> list[list[Item]]:
    """Consecutive runs of items whose model inputs have the same size (one forward pass each)."""
    groups: list[list[Item]] = []
    for item in items:
        if groups and groups[-1][0].image.shape == item.image.shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def loader_workers(requested: int | None, configured: int) -> int:
    """DataLoader workers: the command line's value, else the config's, never more than the CPUs."""
    workers = configured if requested is None else requested
    return max(0, min(workers, os.cpu_count() or 1))

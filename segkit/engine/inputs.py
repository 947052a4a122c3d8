"""The one way an image becomes model input and logits go back to the ground truth's pixels.

Training's validation, ``segkit evaluate``, ``segkit predict`` and the Python API all go through
:func:`iterate_logits`, so the same model gives the same confusion matrix on every path:

1. the image is read and scaled to [0, 1] by the dataset (``segkit.data.base``: 8-bit / 255,
   16-bit and float by percentiles, as ``data.options`` says);
2. the config's ``data.val_transforms`` run on the image alone (:class:`InputPipeline`; none by
   default);
3. it is standardised with the dataset's mean/std;
4. images of the same size go through the model together (:func:`group_by_size`; never padded to
   a neighbour's size, which would change the logits near the border); the model pads each to a
   multiple of its deepest stride itself (zeros after standardisation) and crops the logits back;
5. logits are cropped back over any ``pad`` step and resized (bilinear) over any ``resize`` step
   to the image file's size, where the mask is scored untouched.

Validation steps that move pixels without a way back (crops, flips, rotations, elastic) are left
out with a warning: evaluation scores every pixel of the whole image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from segkit.data.base import SegmentationDataset
from segkit.data.io import scaled_by_255, to_unit_float
from segkit.engine.inference import resize_logits
from segkit.engine.loop import ignore_foreign_sigterm
from segkit.errors import SegkitError

__all__ = ["DeviceScaling", "ImageFiles", "collate_interleaved", "InputPipeline", "Item", "InferenceItems", "checkpoint_amp", "group_by_size", "iterate_logits",
           "normalisation_options"]

logger = logging.getLogger("segkit")

# val_transforms steps that evaluation cannot map back to the ground truth's pixels
_NOT_INVERTIBLE = {"random_resized_crop", "random_crop", "center_crop", "hflip", "vflip", "rotate90", "rotate", "affine", "elastic"}
_INTENSITY_KEYS = ("mean", "std", "scaling", "percentiles")
_WARNED: set[str] = set()
_RESIZES = ("resize", "smallest_max_size")  # steps whose output size the logits are scored from


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
        """``spec``: the validation steps (a list, as :func:`segkit.engine.builders.transform_steps` resolves them)."""
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
        if dropped and self.note() not in _WARNED:  # once per process: validation builds one every epoch
            _WARNED.add(self.note())
            logger.warning("%s", self.note())
        last_resize = max((i for i, step in enumerate(kept) if _step_name(step) in _RESIZES), default=-1)
        early_pads = [i for i, step in enumerate(kept[:last_resize]) if _step_name(step) == "pad"]
        if early_pads:
            # The logits are resized back whole, so a pad before the resize would be stretched over the image.
            raise SegkitError("data.val_transforms pads before it resizes (letterboxing); inference maps logits back by undoing "
                              "pads after the last resize only, so put the pad after the resize, e.g. [{name: resize, size: 256}, "
                              "{name: pad, divisor: 32}]")
        before, after = kept[: last_resize + 1], kept[last_resize + 1 :]
        self.before = build_transforms(before, train=False, seed=seed, ignore_index=ignore_index) if before else None
        self.after = build_transforms(after, train=False, seed=seed, ignore_index=ignore_index) if after else None

    @property
    def identity(self) -> bool:
        """No step to run: the model input is the standardised image itself."""
        return self.before is None and self.after is None

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
            tensor = _chw_tensor(image)
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

    def channel_message(self, path: str | Path, channels: int) -> str:
        return (f"image {path} has {channels} channels but the checkpoint's model takes {self.in_channels}; predict on "
                f"images like its training data ({self.in_channels} channel(s)), or train a model with model.in_channels={channels}")

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]


class DeviceScaling:
    """Images as items carry them -> standardised float32 model input, on the images' device.

    8-bit images arrive as uint8 and others as float32 in [0, 1]; one fused multiply-add per
    channel, ``x * (1 / (s * std)) - mean / std`` with ``s`` = 255 for uint8 and 1 otherwise,
    turns them into ``(x / s - mean) / std`` (within a float32 rounding of the two-step form).
    Done on the GPU in the training and validation step, it takes the conversion off the
    DataLoader workers and makes the host-to-device copy 4x smaller. Training, validation,
    ``evaluate`` and ``predict`` all standardise here, so they see the same numbers.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        mean, std = mean.reshape(1, -1, 1, 1).double(), std.reshape(1, -1, 1, 1).double()
        self._factors = {torch.uint8: ((1.0 / (255.0 * std)).float(), (-mean / std).float()),
                         torch.float32: ((1.0 / std).float(), (-mean / std).float())}
        self._on: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @classmethod
    def of(cls, dataset: Any) -> DeviceScaling:
        """The scaling of a segkit dataset (or of the dataset a wrapper such as SeededDataset holds)."""
        base = getattr(dataset, "dataset", dataset)
        return cls(base.mean, base.std)

    def __call__(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """``images (N, C, H, W)`` (or ``(C, H, W)``) uint8 or float32 -> float32 standardised.

        The result is laid out in ``memory_format`` (``torch.channels_last`` for a channels-last
        model; 4-D input only), whatever the input's layout: the training loader hands batches
        stacked pixel-interleaved (:func:`collate_interleaved`). The layout is fixed on the
        narrow input (a uint8 copy, cheap) and the multiply-add reads it without a float32 copy.
        """
        kind = torch.uint8 if images.dtype == torch.uint8 else torch.float32
        key = (images.device, kind)
        if key not in self._on:
            scale, shift = self._factors[kind]
            self._on[key] = (scale.to(images.device), shift.to(images.device))
        scale, shift = self._on[key]
        if images.dim() == 3:
            scale, shift = scale[0], shift[0]
            memory_format = torch.contiguous_format
        images = images.contiguous(memory_format=memory_format)
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
        return torch.addcmul(shift, images, scale, out=out)


_BYTE_SCALE = float(np.float32(1.0 / 255.0))  # to_unit_float's 8-bit factor, exact in float32


def _unit_float(image: Tensor) -> Tensor:
    """An item's image as float32 in [0, 1]: uint8 times float32(1/255), the numbers ``to_unit_float`` gives."""
    return image if image.dtype != torch.uint8 else image.to(torch.float32).mul_(_BYTE_SCALE)


def collate_interleaved(batch: Sequence[Sequence[Any]]) -> list[Any]:
    """``default_collate`` for ``(image, mask, ...)`` samples whose image is a ``(C, H, W)`` view of
    pixel-interleaved ``(H, W, C)`` memory, as a decoded or augmented image is.

    ``default_collate`` would gather such views into a contiguous ``(N, C, H, W)`` batch, a
    strided copy that cost an RGB loader about 10 % of its images/s (``scripts/benchmark.py
    loader``). This stacks the ``(H, W, C)`` memory as it lies (plain copies, into shared memory in
    a worker as ``default_collate`` does) and returns the batch as an ``(N, C, H, W)`` view of it:
    channels-last strides, the layout a channels-last model wants. :class:`DeviceScaling` gives
    the model its layout, on the device. Other samples (grey or contiguous images, classification
    labels) collate as ``default_collate`` does.
    """
    from torch.utils.data import default_collate

    first = batch[0][0] if batch and isinstance(batch[0], (tuple, list)) else None
    if isinstance(first, Tensor) and first.dim() == 3:
        other = next((sample[0] for sample in batch if sample[0].shape[-2:] != first.shape[-2:]), None)
        if other is not None:
            raise SegkitError(f"a training batch holds images of {first.shape[-1]}x{first.shape[-2]} and {other.shape[-1]}x"
                              f"{other.shape[-2]} pixels, which cannot be stacked; add a crop or resize step to "
                              "data.train_transforms (e.g. {name: random_crop, size: 256}), or set trainer.batch_size: 1.")
        if any(sample[0].dtype != first.dtype for sample in batch):
            # A folder mixing 8-bit and 16-bit images: the 8-bit items travel as stored (uint8) and the
            # others as float32 in [0, 1], so a batch would stack 0..255 beside 0..1. Such a batch is
            # scaled here, as to_unit_float scales an 8-bit image, and reaches DeviceScaling as float32.
            batch = [(_unit_float(sample[0]), *sample[1:]) for sample in batch]
            first = batch[0][0]
    if not (isinstance(first, Tensor) and first.dim() == 3 and first.shape[0] > 1 and not first.is_contiguous()
            and all(sample[0].stride() == first.stride() and sample[0].shape == first.shape for sample in batch)
            and first.permute(1, 2, 0).is_contiguous()):
        return default_collate(batch)
    images = default_collate([sample[0].permute(1, 2, 0) for sample in batch]).permute(0, 3, 1, 2)
    return [images, *default_collate([tuple(sample[1:]) for sample in batch])]


@dataclass
class Item:
    index: int
    size: tuple[int, int]  # (H, W) of the image file
    image: Tensor  # (C, h, w) model input before DeviceScaling: uint8 as stored, or float32 in [0, 1]
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

        stored = self.dataset.load_stored_image(index)
        # 8-bit with no transform: it travels as stored and DeviceScaling scales it where the model runs
        as_stored = self.pipeline.identity and scaled_by_255(stored.dtype, self.dataset.scaling)
        unit = None if as_stored and not self.keep_image else to_unit_float(stored, self.dataset.scaling, self.dataset.percentiles)
        mask = None
        if self.masks:
            raw = self.dataset.load_mask(index)
            if raw.shape[:2] != stored.shape[:2]:
                raise SegkitError(
                    f"image {self.dataset.image_path(index)} is {stored.shape[1]}x{stored.shape[0]} but its mask "
                    f"{self.dataset.mask_source(index)} is {raw.shape[1]}x{raw.shape[0]}; make them the same size"
                )
            mask = torch.from_numpy(raw.astype(np.int64))
        size = (stored.shape[0], stored.shape[1])
        if as_stored:
            image, scored = _chw_tensor(stored), size
        else:
            assert unit is not None
            image, scored = self.pipeline(unit)
        return Item(index, size, image, scored, mask, unit if self.keep_image else None)


def _chw_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, C)`` pixels as a ``(C, H, W)`` tensor. A read-only array (``np.asarray`` of a Pillow
    image) is copied: torch warns about sharing memory it may not write."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw if chw.flags.writeable else chw.copy())


def collate_items(batch: list[Item]) -> list[Item]:
    return batch


def group_by_size(items: Sequence[Item]) -> list[list[Item]]:
    """Consecutive runs of items whose model inputs have the same size and dtype (one forward pass each)."""
    groups: list[list[Item]] = []
    for item in items:
        first = groups[-1][0].image if groups else None
        if first is not None and first.shape == item.image.shape and first.dtype == item.image.dtype:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def checkpoint_amp(cfg: Any, requested: bool, device: torch.device) -> bool | torch.dtype:
    """Autocast for inference with a checkpoint: on CUDA, when both the caller and the run's
    ``trainer.amp`` ask for it, the dtype training would use there for its ``trainer.amp_dtype``
    (:func:`segkit.engine.amp.resolve_amp`); else False (full precision)."""
    from segkit.engine.amp import resolve_amp

    enabled, dtype, _ = resolve_amp(bool(requested and cfg.trainer.amp), cfg.trainer.amp_dtype, device)
    return dtype if enabled else False


def loader_workers(requested: int | None, configured: int) -> int:
    """DataLoader workers: the command line's value, else the config's, never more than the CPUs."""
    workers = configured if requested is None else requested
    return max(0, min(workers, os.cpu_count() or 1))


def iterate_logits(
    model: nn.Module,
    items: InferenceItems,
    device: torch.device,
    *,
    batch_size: int,
    workers: int = 0,
    indices: Sequence[int] | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    tta: Sequence[str] | bool = (),
    amp: bool | torch.dtype = False,
    channels_last: bool = False,
    progress: str | None = None,
) -> Iterator[tuple[Item, Tensor]]:
    """Each item (of ``indices``, default all, in order) with its logits ``(1, K, H, W)`` float32 at the image file's size.

    ``batch_size`` items are loaded at a time; among them, runs of equal input size go through
    the model together (whole image, or sliding window with ``tile``; flip TTA with ``tta``;
    autocast on CUDA with ``amp``: True for the device's default dtype or a dtype). ``progress``:
    a tqdm label, or None for no bar.
    """
    from segkit.engine.inference import model_forward, predict_logits

    subset: Dataset = items if indices is None else Subset(items, list(indices))
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, collate_fn=collate_items,
                        worker_init_fn=ignore_foreign_sigterm)
    batches: Any = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=progress, leave=False, dynamic_ncols=True, disable=None)
    forward = model_forward(model, amp, channels_last=channels_last)
    scaling = DeviceScaling.of(items.dataset)
    for batch in batches:
        for group in group_by_size(batch):
            images = scaling(torch.stack([item.image for item in group]).to(device, non_blocking=True))
            logits = predict_logits(forward, images, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size)
            for item, item_logits in zip(group, logits):
                yield item, InputPipeline.to_mask_size(item_logits[None], item.scored_size, item.size)

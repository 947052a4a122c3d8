"""What every segkit dataset shares: from (image, mask) files to (image tensor, mask tensor).

An item is made in four steps:

1. read the image and scale it to float32 (H, W, C) in [0, 1] (``segkit.data.io.to_unit_float``:
   8-bit / 255, 16-bit and float by per-image percentiles);
2. read the mask as class indices and check its values (``SegmentationDataset.check_mask``);
3. apply ``transforms`` (an albumentations pipeline from ``build_transforms``, or any callable
   taking ``image=`` and ``mask=`` and returning a dict with both);
4. standardise per channel: ``(x - mean) / std`` (with ``device_scaling``, steps 1 and 4 are left
   to the training step on the device for 8-bit images; see ``SegmentationDataset.device_scaling``). ``mean``/``std`` come from the config, or default
   to ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for 3 channels, and to their
   averages 0.449 / 0.226 for any other channel count, which matches ImageNet weights whose
   first convolution was averaged over RGB. ``mean=0, std=1`` leaves the [0, 1] scaling alone.

The result is ``(image float32 (C, H, W), mask int64 (H, W))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import SCALINGS, scaled_by_255, to_unit_float
from segkit.data.masks import bad_value_message
from segkit.data.transforms import clipping_steps, moves_pixels_only, reseed_for_worker
from segkit.errors import SegkitError

__all__ = ["SegmentationDataset", "default_mean_std"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean/std for 3 channels; their averages, repeated, for any other count."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.449,) * channels, (0.226,) * channels


def _numbers(value: Any, name: str) -> list[float]:
    """``value`` as a list of floats: one number or a list of numbers (not a string), else a SegkitError."""
    items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
        raise SegkitError(f"{name} is {value!r}; give a finite number or a list of finite numbers")
    return [float(v) for v in items]


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    values = _numbers(value, name)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise SegkitError(
            f"{name} has {len(values)} values but the images have {channels} channels; give one value per channel"
        )
    if name.rpartition(".")[2] == "std" and any(v <= 0 for v in values):
        raise SegkitError(f"{name} {values} has a value <= 0; every std must be positive")
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def checked_transforms(transforms: Any) -> Any:
    """``transforms`` if it is None or callable, else a SegkitError (a spec such as ``"hflip"`` failed
    only at the first item, as "'str' object is not callable")."""
    if transforms is None or callable(transforms):
        return transforms
    raise SegkitError(f"transforms is {transforms!r}; give a callable such as segkit.data.build_transforms(['hflip']) "
                      "(an albumentations pipeline) or None")


def channels_for(found: int, wanted: int | None, images: str) -> int:
    """The channel count a dataset gives its items: its images' own (``found``), or ``wanted`` (a
    model's) when the images fit it: equal, or grayscale repeated to RGB as among RGB images."""
    if wanted is None or wanted == found or (found == 1 and wanted == 3):
        return found if wanted is None else wanted
    raise SegkitError(f"{images} have {found} channel(s) but in_channels (model.in_channels in a config) is {wanted}; "
                      f"use images like the model's, or set in_channels={found}.")


class SegmentationDataset(Dataset):
    """Base class: subclasses set ``in_channels`` and implement ``image_path`` and ``read_mask``."""

    in_channels: int
    num_classes: int | None
    classes: list[str] | None
    ignore_index: int
    transforms: Callable[..., dict[str, Any]] | None = None
    #: False (the default): items are standardised float32. True (the training engine sets it): the
    #: image leaves the worker as uint8 when it is 8-bit and the transforms only move whole pixels
    #: (else float32 in [0, 1]), and ``segkit.engine.inputs.DeviceScaling`` scales and standardises
    #: it on the device: workers only decode and augment, the host copies 4x fewer bytes. 8-bit
    #: masks then stay uint8 as well (int64 on the device).
    device_scaling: bool = False

    def _setup_intensity(
        self,
        mean: float | Sequence[float] | None,
        std: float | Sequence[float] | None,
        scaling: str,
        percentiles: Sequence[float],
    ) -> None:
        if scaling not in SCALINGS:
            raise SegkitError(f"scaling {scaling!r} is not one of {', '.join(SCALINGS)}; pick one of those")
        bounds = _numbers(percentiles, "percentiles")
        if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1] <= 100:
            raise SegkitError(f"percentiles {percentiles!r} must be two numbers 0 <= low < high <= 100, e.g. [1, 99.8]")
        default_mean, default_std = default_mean_std(self.in_channels)
        self.mean = _per_channel(default_mean if mean is None else mean, self.in_channels, "mean")
        self.std = _per_channel(default_std if std is None else std, self.in_channels, "std")
        self.scaling = scaling
        self.percentiles = (bounds[0], bounds[1])

    # -- subclass interface -------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def read_mask(self, index: int) -> np.ndarray:
        """Class indices (H, W) as uint8 or uint16, values not yet checked."""
        raise NotImplementedError

    def read_raw_image(self, index: int) -> np.ndarray:
        from segkit.data.io import read_image

        return read_image(self.image_path(index))

    # -- shared ------------------------------------------------------------------------------
    def load_image(self, index: int) -> np.ndarray:
        """Float32 (H, W, in_channels) in [0, 1] (before transforms and standardisation)."""
        return to_unit_float(self.load_stored_image(index), self.scaling, self.percentiles)

    def load_stored_image(self, index: int) -> np.ndarray:
        """(H, W, in_channels) in the file's own dtype (a grayscale image among RGB ones repeated)."""
        raw = self.read_raw_image(index)
        if raw.shape[2] != self.in_channels:
            if raw.shape[2] == 1 and self.in_channels == 3:
                raw = np.repeat(raw, 3, axis=2)  # a grayscale image among RGB ones
            else:
                raise SegkitError(self.channel_message(self.image_path(index), raw.shape[2]))
        return raw

    def channel_message(self, path: str | Path, channels: int) -> str:
        """The error for an image whose channel count the dataset cannot take."""
        return (f"image {path} has {channels} channels but the dataset has {self.in_channels}; "
                "convert the images to one channel count")

    def keeps_stored_dtype(self, stored: np.ndarray) -> bool:
        """With ``device_scaling``, whether this image travels as stored (8-bit, scaled by 1/255,
        transforms that only move whole pixels) instead of as float32 in [0, 1]."""
        return self.device_scaling and scaled_by_255(stored.dtype, self.scaling) and moves_pixels_only(self.transforms)

    def check_mask(self, mask: np.ndarray, path: str | Path) -> None:
        """Raise a SegkitError naming the file and value when a label is outside [0, num_classes)."""
        if self.num_classes is None or mask.size == 0 or int(mask.max()) < self.num_classes:
            return  # the common case, 10x cheaper than the histogram below
        counts = np.bincount(mask.ravel(), minlength=self.num_classes)
        bad = np.flatnonzero(counts[self.num_classes :]) + self.num_classes
        bad = bad[bad != self.ignore_index]
        if bad.size:
            values = bad.tolist()
            raise SegkitError(
                bad_value_message(path, values, [int(counts[v]) for v in values], self.num_classes, self.ignore_index)
            )

    def load_mask(self, index: int) -> np.ndarray:
        mask = self.read_mask(index)
        self.check_mask(mask, self.mask_source(index))
        return mask

    def mask_source(self, index: int) -> str | Path:
        """What to name in an error about item ``index``'s mask."""
        return self.image_path(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self.load_stored_image(index)
        image = stored if self.keeps_stored_dtype(stored) else to_unit_float(stored, self.scaling, self.percentiles)
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape[:2]:
            raise SegkitError(
                f"image {self.image_path(index)} is {image.shape[1]}x{image.shape[0]} but its mask "
                f"{self.mask_source(index)} is {mask.shape[1]}x{mask.shape[0]}; make them the same size"
            )
        if self.transforms is not None:
            self._check_unit_range(index, stored, image)
            reseed_for_worker(self.transforms)
            out = self.transforms(image=image, mask=mask)
            if not isinstance(out, Mapping) or "image" not in out or "mask" not in out:
                raise SegkitError(f"the transforms returned {type(out).__name__} for {self.image_path(index)}; a transform "
                                  "callable takes image= and mask= and returns a dict with both (as albumentations does)")
            image, mask = out["image"], out["mask"]
        image_t = (
            image
            if isinstance(image, torch.Tensor)
            else torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1))
        )
        mask_t = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        if image_t.ndim == 2:
            image_t = image_t.unsqueeze(0)
        if self.transforms is not None:
            self._check_transformed(index, image_t, mask_t)
        if self.device_scaling:  # uint8 or [0, 1] float32; the engine scales and standardises on the device
            # 8-bit masks stay uint8 too (8x fewer bytes through the loader); the step makes them int64
            return image_t, mask_t if mask_t.dtype == torch.uint8 else mask_t.long()
        image_t = (image_t.float() - self.mean) / self.std
        return image_t, mask_t.long()

    def _check_unit_range(self, index: int, stored: np.ndarray, image: np.ndarray) -> None:
        """A SegkitError for an image outside [0, 1] (``scaling: dtype`` keeps floats as they are and
        signed integers below 0) about to go through steps that clip it there: its values would be
        cut in silence, in the augmented half of the samples only."""
        if self.scaling != "dtype" or stored.dtype.kind == "u":
            return  # scaled into [0, 1] already
        steps = clipping_steps(self.transforms)
        if steps and image.size and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
            raise SegkitError(
                f"image {self.image_path(index)} holds values from {float(image.min()):g} to {float(image.max()):g} after "
                f"scaling: dtype, and the transforms' {', '.join(steps)} clip images to [0, 1]; list data.train_transforms "
                "without them (the default pipeline has brightness_contrast), or scale the images into [0, 1] "
                "(scaling: percentile, or rescale the files)"
            )

    def _check_transformed(self, index: int, image: torch.Tensor, mask: torch.Tensor) -> None:
        """What the transforms returned still pairs up: a mask of the image's size holding labels."""
        where = self.mask_source(index)
        if mask.shape != image.shape[-2:]:
            raise SegkitError(f"after the transforms, the mask of {where} is {tuple(mask.shape)} but its image "
                              f"{tuple(image.shape[-2:])}; every transform must move image and mask alike")
        if mask.is_floating_point():
            raise SegkitError(f"after the transforms, the mask of {where} is {mask.dtype}; masks hold integer labels, "
                              "so a transform must not interpolate or convert them")
        if self.num_classes is not None and mask.numel():
            if mask.dtype == torch.uint16:  # 16-bit labels (above 255): torch has no max/min for uint16
                mask = mask.to(torch.int32)
            top, bottom = int(mask.max()), int(mask.min())
            bad = None
            if bottom < 0:
                bad = bottom
            elif top >= self.num_classes:
                # The largest value may be ignore_index while a fill value sits between it and the classes.
                rest = int(mask.masked_fill(mask == self.ignore_index, 0).max()) if top == self.ignore_index else top
                bad = rest if rest >= self.num_classes else None
            if bad is not None:
                raise SegkitError(f"after the transforms, the mask of {where} holds {bad}, outside [0, {self.num_classes}) and "
                                  f"not ignore_index {self.ignore_index}: a transform filled new pixels with it (its fill_mask, or "
                                  "an ignore_index an 8-bit mask cannot hold); use ignore_index or a class for fill_mask")

    def __len__(self) -> int:
        raise NotImplementedError

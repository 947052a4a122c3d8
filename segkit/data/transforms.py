"""Albumentations pipelines built from plain config: augment image and mask together.

A pipeline spec is a list of steps; a step is a name (``"hflip"``) or a dict with ``name`` and
options (``{"name": "rotate", "limit": 30}``). The spec may also be a dict ``{"train": [...],
"val": [...]}`` from which ``train=`` picks. ``None`` gives the defaults:

- train (``default_spec(train=True, size=S)``): random resized crop to S (scale 0.5-1; left out
  when no size is given), horizontal and vertical flips, rotation up to 30 degrees, elastic
  deformation (the U-Net paper's key augmentation for microscopy), brightness/contrast;
- val: none. segkit's models pad any input to a multiple of their deepest stride themselves and
  crop the logits back; validation, ``segkit evaluate`` and ``segkit predict`` feed images through
  one pipeline (``segkit.engine.inputs``) and score masks at the ground truth's own resolution.

Names (``list_transforms()``): ``random_resized_crop``, ``random_crop``, ``center_crop``,
``resize``, ``smallest_max_size`` (the shorter side to ``max_size``, keeping the aspect ratio), ``pad``, ``hflip``, ``vflip``, ``rotate90``, ``rotate``, ``affine``, ``elastic``,
``brightness_contrast``, ``gauss_noise``, ``gaussian_blur``. Options are those of the
albumentations class (``TRANSFORMS[name]``), plus ``size`` (an int or [h, w]) for the crops,
``resize`` and ``pad``, and ``divisor`` for ``pad``. segkit's defaults differ from albumentations'
where it matters for segmentation: geometric steps fill new mask pixels with ``ignore_index``
(not background), ``pad`` pads bottom/right, elastic uses alpha=300, sigma=12 (median displacements of
about 2 px on 512x512 images, 5 px on 50x50: albumentations scales them with the image), and
masks always use nearest-neighbour interpolation (setting anything else is an error). Every
pipeline ends with ``ToTensorV2``.

Images enter as float32 (H, W, C) in [0, 1] (the dataset scales 8- and 16-bit data first, see
``segkit.data.io``), so brightness/contrast behave the same for every bit depth; mean/std
standardisation happens after the pipeline, in the dataset.

Determinism: ``build_transforms(..., seed=s)`` gives the same augmentations for the same sequence
of calls. segkit seeds one generator shared by every step: albumentations 2.0.8's own
``Compose(seed=)`` gives each step a generator with the same seed, so e.g. hflip and vflip with
equal ``p`` always fire together. Inside DataLoader workers the dataset reseeds the pipeline from
the worker's torch seed (``reseed_for_worker``), so workers do not repeat each other and a seeded
loader is reproducible.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segkit.errors import SegkitError

# albumentations asks PyPI for a newer version on import unless told not to; segkit never goes online.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["TRANSFORMS", "build_transforms", "default_spec", "list_transforms", "reseed_for_worker", "seed_transforms"]

# segkit name -> albumentations class name
TRANSFORMS: dict[str, str] = {
    "random_resized_crop": "RandomResizedCrop",
    "random_crop": "RandomCrop",
    "center_crop": "CenterCrop",
    "resize": "Resize",
    "smallest_max_size": "SmallestMaxSize",
    "pad": "PadIfNeeded",
    "hflip": "HorizontalFlip",
    "vflip": "VerticalFlip",
    "rotate90": "RandomRotate90",
    "rotate": "Rotate",
    "affine": "Affine",
    "elastic": "ElasticTransform",
    "brightness_contrast": "RandomBrightnessContrast",
    "gauss_noise": "GaussNoise",
    "gaussian_blur": "GaussianBlur",
}

# segkit's defaults on top of albumentations' (fill_mask is added for every class that has it).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "random_resized_crop": {"scale": (0.5, 1.0)},
    # An image smaller than the crop is padded (its mask with ignore_index), not an error mid-epoch.
    "random_crop": {"pad_if_needed": True},
    "center_crop": {"pad_if_needed": True},
    "pad": {"position": "top_left", "min_height": None, "min_width": None},
    "rotate": {"limit": 30, "p": 0.5},
    "elastic": {"alpha": 300.0, "sigma": 12.0, "p": 0.3},
    "brightness_contrast": {"p": 0.5},
}


_NEAREST_EXACT = 6  # cv2.INTER_NEAREST_EXACT (OpenCV is not imported to build a spec)
_NEAREST = (0, _NEAREST_EXACT)
_RESIZING = ("random_resized_crop", "resize", "smallest_max_size")  # steps that resample at another scale


def list_transforms() -> list[str]:
    """The step names a spec may use."""
    return sorted(TRANSFORMS)


def default_spec(train: bool, size: int | Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The default pipeline as a spec (see the module docstring)."""
    if not train:
        return []
    spec: list[dict[str, Any]] = []
    if size is not None:
        spec.append({"name": "random_resized_crop", "size": size})
    spec += [
        {"name": "hflip", "p": 0.5},
        {"name": "vflip", "p": 0.5},
        {"name": "rotate"},
        {"name": "elastic"},
        {"name": "brightness_contrast"},
    ]
    return spec


def _hw(size: Any, where: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    if (
        isinstance(size, Sequence)
        and not isinstance(size, str)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) for s in size)
    ):
        return int(size[0]), int(size[1])
    raise SegkitError(f"{where}: size is {size!r}; give an int or [height, width]")


def _step(step: Any, index: int, ignore_index: int) -> Any:
    import albumentations as A

    if isinstance(step, str):
        name, options = step, {}
    elif isinstance(step, Mapping) and "name" in step:
        name, options = step["name"], {k: v for k, v in step.items() if k != "name"}
    else:
        raise SegkitError(
            f"transform step {index} is {step!r}; write a step as a name or a dict with 'name' and options, "
            "e.g. {'name': 'rotate', 'limit': 30}"
        )
    if not isinstance(name, str):
        raise SegkitError(f"transform step {index} has name {name!r}; a name is one of {', '.join(list_transforms())}")
    where = f"transform step {index} ({name!r})"
    if name not in TRANSFORMS:
        raise SegkitError(f"unknown transform {name!r} in step {index}; valid names: {', '.join(list_transforms())}")
    cls = getattr(A, TRANSFORMS[name])
    accepted = set(inspect.signature(cls).parameters)
    kwargs: dict[str, Any] = dict(_DEFAULTS.get(name, {}))
    if "fill_mask" in accepted:
        kwargs["fill_mask"] = ignore_index
    options = dict(options)
    sized = ("random_crop", "center_crop", "resize")
    if name in sized and "size" in options and {"height", "width"} & set(options):
        raise SegkitError(f"{where} gives size and {'/'.join(sorted({'height', 'width'} & set(options)))}; give size (an int or "
                          "[height, width]) alone")
    if name in sized and "size" not in options and not {"height", "width"} <= set(options):
        raise SegkitError(f"{where} needs size; e.g. {{'name': {name!r}, 'size': 256}}")
    if "size" in options and name in ("random_resized_crop", "random_crop", "center_crop", "resize", "pad"):
        h, w = _hw(options.pop("size"), where)
        if name == "random_resized_crop":
            kwargs["size"] = (h, w)
        elif name == "pad":
            kwargs["min_height"], kwargs["min_width"] = h, w
        else:
            kwargs["height"], kwargs["width"] = h, w
    if name == "pad" and "divisor" in options:
        kwargs["pad_height_divisor"] = kwargs["pad_width_divisor"] = options.pop("divisor")
    unknown = sorted(set(options) - accepted)
    if unknown:
        extra = ["size"] if name in ("random_resized_crop", "random_crop", "center_crop", "resize", "pad") else []
        extra += ["divisor"] if name == "pad" else []
        raise SegkitError(
            f"{where} has no option {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(accepted | set(extra)))}"
        )
    if options.get("mask_interpolation", 0) not in _NEAREST:
        raise SegkitError(
            f"{where} sets mask_interpolation; masks must use nearest interpolation (0, or 6: exact), remove the option"
        )
    if options.get("area_for_downscale") == "image_mask":
        raise SegkitError(f"{where} sets area_for_downscale: image_mask, which averages mask labels; use 'image' or leave it out")
    if name in _RESIZING and "mask_interpolation" in accepted:
        # OpenCV's INTER_NEAREST takes each output pixel's top-left source pixel: a mask downscaled by
        # 4 sat 2 source pixels up-left of its bilinear image. The exact (centre) rule keeps them aligned;
        # an image resampled by INTER_NEAREST itself keeps its mask on the same rule.
        kwargs["mask_interpolation"] = 0 if options.get("interpolation") == 0 else _NEAREST_EXACT
    kwargs.update(options)
    if name == "pad" and kwargs.get("min_height") is None and kwargs.get("pad_height_divisor") is None:
        raise SegkitError(f"{where} needs size or divisor; e.g. {{'name': 'pad', 'divisor': 32}}")
    if name == "random_resized_crop" and "size" not in kwargs:
        raise SegkitError(f"{where} needs size; e.g. {{'name': 'random_resized_crop', 'size': 256}}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        first = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3]) if first else type(err).__name__
        raise SegkitError(f"{where} has invalid options ({detail}); fix them in the transforms config") from err


def seed_transforms(pipeline: Any, seed: int | None) -> None:
    """Seed a Compose with one generator shared by all its steps (None: fresh entropy).

    Seeding in a DataLoader worker (e.g. per item) also tells ``reseed_for_worker`` to keep out.
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    pipeline._segkit_seed = seed
    pipeline._segkit_pid = os.getpid()


def reseed_for_worker(pipeline: Any) -> None:
    """Inside a DataLoader worker, seed ``pipeline`` once, from the worker's torch seed.

    Forked workers would otherwise all continue the parent's generator and repeat each other's
    augmentations. The worker's torch seed comes from the loader's generator, so a seeded loader
    gives the same augmentations run after run; a pipeline built with a seed mixes it in. A
    pipeline already seeded in this process (by this function, or by ``seed_transforms`` per
    item) is left alone.
    """
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is None or not hasattr(pipeline, "set_random_state"):
        return
    if getattr(pipeline, "_segkit_pid", None) == os.getpid():
        return
    base = getattr(pipeline, "_segkit_seed", None)
    entropy = [info.seed % 2**63] if base is None else [base, info.seed % 2**63]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
    pipeline._segkit_pid = os.getpid()


# albumentations clips float images to [0, 1] in these steps (checked on albumentations 2.0.8).
_CLIPPING = ("brightness_contrast", "gauss_noise", "gaussian_blur")


def clipping_steps(pipeline: Any) -> list[str]:
    """The step names of ``pipeline`` (an albumentations ``Compose``, or None) that clip a float image
    to [0, 1]: harmless on images segkit scaled there, destructive on ones that keep their own units."""
    import albumentations as A

    classes = {getattr(A, TRANSFORMS[name]): name for name in _CLIPPING}
    return [classes[type(step)] for step in getattr(pipeline, "transforms", None) or () if type(step) in classes]


def moves_pixels_only(pipeline: Any) -> bool:
    """Whether ``pipeline`` (None, or an albumentations ``Compose``) only flips, rotates by 90
    degrees, crops or pads: steps that give the same pixels on uint8 as on float images, so an
    8-bit image may go through them as stored (interpolating and intensity steps need float)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    if pipeline is None:
        return True
    lossless = (A.HorizontalFlip, A.VerticalFlip, A.RandomRotate90, A.RandomCrop, A.CenterCrop, A.PadIfNeeded, ToTensorV2)
    steps = getattr(pipeline, "transforms", None)
    # A padding fill is in [0, 1] units; on a uint8 image 0.5 would be 0.5 of 255: only a zero fill is the same both ways.
    return steps is not None and all(type(step) in lossless and not np.any(np.asarray(getattr(step, "fill", 0) or 0)) for step in steps)


def build_transforms(
    spec: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    train: bool,
    size: int | Sequence[int] | None = None,
    seed: int | None = None,
    ignore_index: int = 255,
) -> Any:
    """An ``albumentations.Compose`` for ``(image, mask)`` pairs, ending in ``ToTensorV2``.

    ``spec``: list of steps, ``{"train": [...], "val": [...]}``, or None for ``default_spec``.
    ``size`` feeds the default train crop. ``seed`` makes the sequence of augmentations
    reproducible. Call it as ``pipeline(image=hwc_float32, mask=hw_uint)``.
    """
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    if spec is None:
        spec = default_spec(train, size)
    elif isinstance(spec, Mapping) and "name" not in spec:
        key = "train" if train else "val"
        unknown = sorted(set(spec) - {"train", "val"})
        if unknown:
            raise SegkitError(f"transforms has key(s) {', '.join(map(repr, unknown))}; use 'train' and 'val' lists")
        spec = spec.get(key) if spec.get(key) is not None else default_spec(train, size)
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise SegkitError(
            f"transforms must be a list of steps, got {spec!r}; e.g. ['hflip', {{'name': 'rotate', 'limit': 30}}]"
        )
    steps = [_step(step, i, ignore_index) for i, step in enumerate(spec)]
    pipeline = A.Compose([*steps, ToTensorV2()])
    seed_transforms(pipeline, seed)
    return pipeline

"""Image classification data: ImageFolder directories, the papers' augmentations, ten-crop.

Items are ``(image, label)``: image float32 ``(C, H, W)`` (``(10, C, h, w)`` with ten-crop
evaluation), label int64 scalar. Every dataset here takes an index or an ``(index, seed)`` pair,
the items of :class:`~segkit.engine.distributed.SeededSampler`: with a seed, the random crop and
flip of that item are drawn from ``torch.Generator().manual_seed(seed)``, so a sample's
augmentation depends only on (run seed, epoch, index) and training resumes bit-identically.

Augmentations (:class:`ClassificationTransform`), as the papers describe them:

- ``pad_crop`` (He et al. 2016, CIFAR): pad ``padding`` zero pixels on each side, take a random
  ``size`` crop, flip horizontally with probability 0.5;
- ``random_resized_crop`` (the ImageNet recipe of torchvision's reference, after Szegedy et al.):
  a crop of 8%-100% of the area and aspect ratio 3/4-4/3, resized to ``size``, then the flip;
- evaluation: resize the shorter side to ``resize_size`` (if set), then one centre crop or ten
  crops (:func:`ten_crop`: the four corners and the centre, and the same of the flipped image; the
  VGG/ResNet papers' "10-crop testing");

then ``(x / 255 - mean) / std`` per channel. Pixels stay uint8 until that last step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from segkit.data.base import _numbers, _per_channel
from segkit.errors import SegkitError

__all__ = ["ClassificationDataset", "ClassificationTransform", "ImageFolderDataset", "channel_stats", "ten_crop"]

MODES = ("pad_crop", "random_resized_crop", "none")


def ten_crop(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """The ten crops of ``images`` ``(..., C, H, W)`` -> ``(..., 10, C, h, w)``.

    Order as torchvision's ``ten_crop``: top-left, top-right, bottom-left, bottom-right, centre of
    the image, then the same five of its horizontal flip. The centre crop starts at
    ``round((H - h) / 2)``, as torchvision's ``center_crop``.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    height, width = images.shape[-2], images.shape[-1]
    if h > height or w > width:
        raise SegkitError(f"a ten-crop of {h}x{w} does not fit in a {height}x{width} image; lower data.crop_size or raise data.resize_size.")
    top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))

    def five(x: Tensor) -> list[Tensor]:
        return [x[..., :h, :w], x[..., :h, width - w :], x[..., height - h :, :w], x[..., height - h :, width - w :],
                x[..., top : top + h, left : left + w]]

    return torch.stack(five(images) + five(images.flip(-1)), dim=-4)


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``images`` ``(N, C, H, W)`` on the [0, 1] scale.

    Exact, from a 256-bin histogram per channel (no float copy of the whole set).
    """
    mean, std = [], []
    levels = np.arange(256, dtype=np.float64) / 255.0
    array = images.numpy()
    for c in range(array.shape[1]):
        counts = np.bincount(array[:, c].ravel(), minlength=256).astype(np.float64)
        m = float((counts * levels).sum() / counts.sum())
        mean.append(m)
        std.append(float(math.sqrt(max((counts * (levels - m) ** 2).sum() / counts.sum(), 1e-12))))
    return mean, std


class ClassificationTransform:
    """uint8 ``(C, H, W)`` -> float32 ``(C, size, size)`` (``(10, C, size, size)`` with ``ten_crop``).

    Args:
        train: random augmentation (``mode``) if True, else the deterministic evaluation crop.
        mode: ``"pad_crop"``, ``"random_resized_crop"`` or ``"none"`` (training only; "none" takes the
            evaluation's resize and centre crop).
        size: crop size; None: no crop (the image's own size; pad_crop then crops back to it).
        mean, std: per-channel standardisation on the [0, 1] scale.
        resize_size: evaluation: the shorter side is resized to this first (None: not resized).
        padding: pad_crop's zero padding on each side.
        hflip: random horizontal flips in training.
        ten_crop: evaluation gives the ten crops (see :func:`ten_crop`).
        scale, ratio: random_resized_crop's ranges of area fraction and aspect ratio.
    """

    def __init__(self, train: bool, mode: str = "none", size: int | None = None, *, mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0, resize_size: int | None = None, padding: int = 4, hflip: bool = True,
                 ten_crop: bool = False, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        if mode not in MODES:
            raise SegkitError(f"data.augment {mode!r} is not one of {', '.join(MODES)}.")
        if train and mode == "random_resized_crop" and size is None:
            raise SegkitError("random_resized_crop needs a crop size; set data.crop_size (e.g. 224).")
        self.train, self.mode, self.size = train, mode, size
        _numbers(mean, "data.options.mean"), _numbers(std, "data.options.std")  # checked now, not at the first image
        self.mean_values, self.std_values = mean, std
        self.resize_size, self.padding, self.hflip, self.ten_crop = resize_size, padding, hflip, ten_crop
        self.scale, self.ratio = scale, ratio
        self._stats: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        image = self._train_geometry(image, generator) if self.train else self._eval_geometry(image)
        channels = image.shape[-3]
        if channels not in self._stats:
            self._stats[channels] = (_per_channel(self.mean_values, channels, "data.options.mean"),
                                     _per_channel(self.std_values, channels, "data.options.std"))
        mean, std = self._stats[channels]
        return (image.float() / 255.0 - mean) / std

    def _train_geometry(self, image: Tensor, g: torch.Generator | None) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        if self.mode == "pad_crop":
            h, w = image.shape[-2:]
            size = (h, w) if self.size is None else (self.size, self.size)
            p = self.padding
            padded = torch.nn.functional.pad(image, (p, p, p, p))
            if size[0] > padded.shape[-2] or size[1] > padded.shape[-1]:
                raise SegkitError(f"data.crop_size {size[0]} is larger than the padded {h}x{w} images; lower it or raise data.crop_padding.")
            top = int(torch.randint(0, padded.shape[-2] - size[0] + 1, (1,), generator=g))
            left = int(torch.randint(0, padded.shape[-1] - size[1] + 1, (1,), generator=g))
            image = padded[..., top : top + size[0], left : left + size[1]]
        elif self.mode == "random_resized_crop":
            top, left, h, w = self._resized_crop_box(image.shape[-2], image.shape[-1], g)
            image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)  # type: ignore[list-item]
        else:  # "none": the evaluation's resize and centre crop, no random geometry
            image = self._center(image)
        if self.hflip and float(torch.rand(1, generator=g)) < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def _resized_crop_box(self, height: int, width: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params with our generator: (top, left, h, w)."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g))
            aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return top, left, h, w
        # Fallback: the central crop of the whole image at the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _eval_geometry(self, image: Tensor) -> Tensor:
        if self.ten_crop:
            image = self._resize(image)
            return ten_crop(image, self.size if self.size is not None else tuple(image.shape[-2:]))  # type: ignore[arg-type]
        return self._center(image)

    def _resize(self, image: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        return F.resize(image, [self.resize_size], antialias=True) if self.resize_size is not None else image

    def _center(self, image: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        image = self._resize(image)
        if self.size is not None and tuple(image.shape[-2:]) != (self.size, self.size):
            height, width = image.shape[-2:]
            if height < self.size or width < self.size:  # torchvision's center_crop would pad it with zeros
                raise SegkitError(f"a centre crop of {self.size}x{self.size} does not fit in a {height}x{width} image"
                                  f"{' after resizing' if self.resize_size is not None else ''}; lower data.crop_size or raise "
                                  "data.resize_size (evaluation resizes the shorter side to it, then crops).")
            image = F.center_crop(image, [self.size, self.size])
        return image


class ClassificationDataset(Dataset):
    """Base class: subclasses set ``classes`` and ``in_channels`` and implement ``load(index)``.

    ``dataset[i]`` or ``dataset[(i, seed)]`` -> ``(transform(image) float32, label int64)``;
    without a transform the image is scaled to [0, 1].
    """

    classes: list[str]
    in_channels: int
    transform: ClassificationTransform | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> tuple[Tensor, int]:
        """(uint8 image ``(C, H, W)``, label) of sample ``index``."""
        raise NotImplementedError

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = self.load(index)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        tensor = self.transform(image, generator) if self.transform is not None else image.float() / 255.0
        return tensor, torch.tensor(label, dtype=torch.int64)


def _eight_bit(img: Any, path: str, mode: str) -> np.ndarray:
    """``img`` as 8-bit ``mode`` pixels. Pillow's ``convert`` clips 16-bit grey to 0..255 (a 16-bit
    image came out almost all white): such pixels are scaled by 255/65535 instead; 32-bit integer
    and float images have no known range, so they are refused."""
    wide = np.asarray(img) if img.mode.startswith("I") else None
    grey = None
    if img.mode == "I" and wide is not None and wide.size and 0 <= wide.min() and wide.max() <= 255:
        grey = wide.astype(np.uint8)  # 32-bit integers holding 8-bit values: as Pillow's convert gave them
    # 16-bit grey ("I;16"; older Pillows read 16-bit PNGs as 32-bit "I" holding 0..65535), scaled by its
    # range as torchvision's to_dtype(..., scale=True) scales uint16 to uint8
    elif wide is not None and (img.mode.startswith("I;16") or (wide.size and 0 <= wide.min() and wide.max() <= 65535)):
        grey = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded: 65535 -> 255, 257 -> 1
    if grey is not None:
        return np.repeat(grey[:, :, None], 3, axis=2) if mode == "RGB" else grey
    if img.mode in ("I", "F"):
        raise SegkitError(f"image {path} holds 32-bit {'integer' if img.mode == 'I' else 'float'} pixels, whose range "
                          "classification cannot know; convert it to 8 or 16 bits.")
    return np.asarray(img.convert(mode))


class ImageFolderDataset(ClassificationDataset):
    """``root/split/<class>/<image>`` (torchvision's ImageFolder layout; the class folders sorted give the labels).

    Images are read with PIL and converted to 8-bit RGB (``in_channels=3``) or grey (1); 16-bit grey
    images are scaled to 8 bits by their range (255/65535), 32-bit ones refused.
    """

    def __init__(self, root: str | os.PathLike[str], split: str | None = None, in_channels: int = 3,
                 transform: ClassificationTransform | None = None, classes: Sequence[str] | None = None) -> None:
        from torchvision.datasets import ImageFolder

        if in_channels not in (1, 3):
            raise SegkitError(f"an ImageFolder dataset reads RGB or grey images; model.in_channels is {in_channels}, use 3 or 1.")
        self.root = Path(root).expanduser() / split if split else Path(root).expanduser()
        if not self.root.is_dir():
            raise SegkitError(f"image folder {self.root} does not exist; data.root must hold one folder per split "
                              f"({split or 'train'}/<class>/<image>), as torchvision's ImageFolder.")
        try:
            self.folder = ImageFolder(str(self.root), loader=str)  # paths only: reading happens in load()
        except (FileNotFoundError, RuntimeError) as err:
            raise SegkitError(f"image folder {self.root}: {err}; put the images in one sub-folder per class.") from None
        self.classes = list(self.folder.classes)
        if classes is not None and list(classes) != self.classes:
            raise SegkitError(f"the class folders of {self.root} ({', '.join(self.classes)}) differ from the training split's "
                              f"({', '.join(classes)}); give every split the same class folders.")
        self.in_channels = in_channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder.samples)

    def load(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.folder.samples[index]
        try:
            with Image.open(path) as img:
                array = _eight_bit(img, path, "RGB" if self.in_channels == 3 else "L")
        except (OSError, UnidentifiedImageError) as err:
            raise SegkitError(f"image {path} cannot be read ({type(err).__name__}); replace or remove the file.") from None
        tensor = torch.from_numpy(array.copy())
        return (tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor[None]).contiguous(), int(label)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.folder.samples]

"""Datasets: image/mask folders, COCO-style annotations, a built-in synthetic dataset, and
albumentations pipelines.

Items are ``(image, mask)``: image float32 ``(C, H, W)``, mask int64 ``(H, W)``.

    from segkit.data import FolderDataset, build_transforms, make_synthetic
    make_synthetic("data/synthetic", n=32, size=128, seed=0)
    train = FolderDataset("data/synthetic", "train", num_classes=3,
                          transforms=build_transforms(train=True, size=96, seed=0))
    image, mask = train[0]        # (1, 96, 96) float32, (96, 96) int64
    print(FolderDataset("data/synthetic", "val", num_classes=3).check_files().format())
"""

from typing import TYPE_CHECKING

from segkit._lazy import lazy_exports

# Most of these import torch (2-3 s); the readers below them (segkit.data.io, .masks, .layout) do
# not, and `segkit evaluate --pred --gt` uses only those, so the names load on first use (PEP 562).
_LAZY = {
    "SegmentationDataset": "segkit.data.base", "default_mean_std": "segkit.data.base",
    "CifarDataset": "segkit.data.cifar", "make_synthetic_cifar": "segkit.data.cifar",
    "ClassificationDataset": "segkit.data.classification", "ClassificationTransform": "segkit.data.classification",
    "ImageFolderDataset": "segkit.data.classification", "ten_crop": "segkit.data.classification",
    "CocoDataset": "segkit.data.coco",
    "DataReport": "segkit.data.folder", "FolderDataset": "segkit.data.folder", "check_folder": "segkit.data.folder",
    "list_splits": "segkit.data.layout",
    "MaskDecoder": "segkit.data.masks",
    "SYNTHETIC_CLASSES": "segkit.data.synthetic", "make_synthetic": "segkit.data.synthetic",
    "build_transforms": "segkit.data.transforms", "default_spec": "segkit.data.transforms",
    "list_transforms": "segkit.data.transforms",
}

if TYPE_CHECKING:
    from segkit.data.base import SegmentationDataset, default_mean_std
    from segkit.data.cifar import CifarDataset, make_synthetic_cifar
    from segkit.data.classification import ClassificationDataset, ClassificationTransform, ImageFolderDataset, ten_crop
    from segkit.data.coco import CocoDataset
    from segkit.data.folder import DataReport, FolderDataset, check_folder
    from segkit.data.layout import list_splits
    from segkit.data.masks import MaskDecoder
    from segkit.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
    from segkit.data.transforms import build_transforms, default_spec, list_transforms

__all__ = [
    "SYNTHETIC_CLASSES",
    "CifarDataset",
    "ClassificationDataset",
    "ClassificationTransform",
    "ImageFolderDataset",
    "make_synthetic_cifar",
    "ten_crop",
    "CocoDataset",
    "DataReport",
    "FolderDataset",
    "MaskDecoder",
    "SegmentationDataset",
    "build_transforms",
    "check_folder",
    "default_mean_std",
    "default_spec",
    "list_splits",
    "list_transforms",
    "make_synthetic",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

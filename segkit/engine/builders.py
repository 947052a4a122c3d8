"""From a validated config to the objects training needs: datasets, model, loss.

Kept apart from the loop so that evaluation and prediction build the same things the same way.
``task: classification`` configs are built by :mod:`segkit.engine.classify`; each function here
hands them over.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from segkit.config import synthetic_sizes
from segkit.engine.distributed import DistInfo, main_then_share
from segkit.errors import SegkitError

__all__ = ["SeededDataset", "build_datasets", "build_loss_fn", "build_model_from_config", "dataset_options",
           "resolve_normalisation", "transform_steps", "transforms_from_config"]


class SeededDataset(Dataset):
    """Wraps a segkit dataset so that item ``(index, seed)`` is augmented with that seed.

    With :class:`~segkit.engine.distributed.SeededSampler` every sample's augmentation is a
    function of (run seed, epoch, index), independent of worker count and of where a run resumed.

    ``weight_map``: a function of the augmented mask (:class:`segkit.losses.weight_map.UNetWeightMap`); items
    are then ``(image, mask, weight_map(mask))``, so the maps are computed in the DataLoader
    workers, in parallel with training, and travel with the batch to the loss.
    """

    def __init__(self, dataset: Any, weight_map: Callable[[Tensor], Tensor] | None = None) -> None:
        self.dataset = dataset
        self.weight_map = weight_map

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[Tensor, ...]:
        if isinstance(item, tuple):
            index, seed = item
            if self.dataset.transforms is not None:
                from segkit.data.transforms import seed_transforms

                seed_transforms(self.dataset.transforms, seed)
            sample = self.dataset[index]
        else:
            sample = self.dataset[item]
        if self.weight_map is None:
            return sample
        image, mask = sample
        return image, mask, self.weight_map(mask)

    def __getattr__(self, name: str) -> Any:  # in_channels, classes, image_path, ... of the wrapped set
        if name in ("dataset", "weight_map"):  # (before __init__ sets them, e.g. on unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _resolve(path: str | None, key: str) -> Path:
    if not path:
        raise SegkitError(f"config key '{key}' is empty; give the path it needs.")
    return Path(path).expanduser()


def transform_steps(cfg: DictConfig, train: bool) -> list[Any]:
    """The steps of ``data.train_transforms`` (or ``val_transforms``): ``auto`` (or null) is the
    default pipeline (:func:`segkit.data.default_spec`), a list is exactly those steps, ``[]`` none."""
    from segkit.data import default_spec

    spec = cfg.data.train_transforms if train else cfg.data.val_transforms
    if spec is None or (isinstance(spec, str) and spec == "auto"):
        return default_spec(train)
    return list(OmegaConf.to_container(spec, resolve=True))  # type: ignore[arg-type]


def transforms_from_config(cfg: DictConfig, train: bool) -> Any:
    """The augmentation pipeline ``data.train_transforms`` (or ``val_transforms``) describes, seeded by ``trainer.seed``."""
    from segkit.data import build_transforms

    try:
        return build_transforms(transform_steps(cfg, train), train=train, seed=cfg.trainer.seed, ignore_index=cfg.data.ignore_index)
    except SegkitError as err:  # "transform step 0 ..." says which step; the key says which list
        raise SegkitError(f"config key 'data.{'train' if train else 'val'}_transforms': {err}") from None


def dataset_options(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(common, options)`` for a segmentation dataset: the settings the config fixes elsewhere
    (``num_classes``, ``ignore_index``, ``classes``, ``in_channels``) and ``data.options`` as a plain dict."""
    options: dict[str, Any] = OmegaConf.to_container(cfg.data.options, resolve=True)  # type: ignore[assignment]
    common: dict[str, Any] = {"num_classes": cfg.model.num_classes, "ignore_index": cfg.data.ignore_index,
                              "in_channels": cfg.model.in_channels}  # grey images of an RGB model: repeated, as predict does
    if cfg.data.classes is not None:
        common["classes"] = list(cfg.data.classes)
    return common, options


def resolve_normalisation(cfg: DictConfig) -> None:
    """Write the mean/std that published ImageNet weights expect into ``cfg.data.options`` (in place).

    With ``model.encoder_weights`` (or the whole model's ``model.weights``, e.g. torchvision's
    ``coco_with_voc_labels_v1``, trained on ImageNet-standardised images) a weights name and no
    ``mean``/``std`` in ``data.options``, the data is standardised as those weights were trained:
    ImageNet's statistics, their channel averages for grey images (the first convolution is summed
    over RGB for them); for a timm encoder, the statistics timm lists for those weights. Written
    into the config so the run's ``config.yaml`` says it and evaluation
    and prediction standardise alike. Segmentation only: classification datasets keep their own
    documented defaults.
    """
    from segkit.data.base import default_mean_std
    from segkit.encoders.timm_encoder import is_timm_name, timm_mean_std
    from segkit.encoders.weights import is_weights_name

    if cfg.task != "segmentation":
        return
    found = None
    if is_timm_name(cfg.model.encoder) and cfg.model.get("weights") is None:
        # timm's weights each carry their own statistics (Inception's and CLIP's are not ImageNet's)
        found = timm_mean_std(cfg.model.encoder, cfg.model.encoder_weights, cfg.model.in_channels)
        if found is None:
            return
    elif not (is_weights_name(cfg.model.encoder_weights) or is_weights_name(cfg.model.get("weights"))):
        return
    mean, std = found or default_mean_std(cfg.model.in_channels)
    options = cfg.data.options
    if "mean" not in options:
        options.mean = list(mean)
    if "std" not in options:
        options.std = list(std)


def build_datasets(cfg: DictConfig, info: DistInfo | None = None) -> tuple[Any, Any]:
    """Training and validation sets the config names, wrapped for seeded augmentation.

    ``data.kind: synthetic`` writes the built-in dataset into ``data.root`` first if it is not
    there (rank 0 writes, the others wait). Classification datasets take ``(index, seed)`` items
    themselves (:func:`segkit.engine.classify.build_classification_datasets`).

    When the loss has a ``weight_map_ce`` term, the training items are ``(image, mask, weight_map)``
    (:class:`SeededDataset`): the U-Net weight map of each augmented mask, computed in the
    DataLoader workers instead of in the training process at every step.
    """
    if cfg.task == "classification":
        from segkit.engine.classify import build_classification_datasets

        return build_classification_datasets(cfg, info)
    data = cfg.data
    kind = data.kind
    common, options = dataset_options(cfg)
    if kind == "synthetic":
        from segkit.data import make_synthetic

        root = _resolve(data.root, "data.root")

        def write() -> None:
            from segkit.data.synthetic import record_synthetic, reuse_synthetic

            request = {"seed": data.synthetic.seed, **synthetic_sizes(cfg, n=48, size=128)}
            if not reuse_synthetic(root, (root / "images").is_dir(), request):
                make_synthetic(root, **request)
                record_synthetic(root, request)

        # Rank 0 writes, the others wait for it; if writing fails every rank raises (no rank hangs).
        main_then_share(write, info or DistInfo())
        kind = "folder"
    if kind == "folder":
        from segkit.data import FolderDataset

        root = _resolve(data.root, "data.root")
        _check_options(options, FolderDataset, {"root", "split", "transforms", *common})
        train = FolderDataset(root, data.train_split, transforms=transforms_from_config(cfg, True), **common, **options)
        val = FolderDataset(root, data.val_split, transforms=transforms_from_config(cfg, False), **common, **options)
    elif kind == "coco":
        train = coco_dataset(cfg, "train", transforms_from_config(cfg, True))
        val = coco_dataset(cfg, "val", transforms_from_config(cfg, False))
    else:
        raise SegkitError(f"data.kind {kind!r} is for task: classification; set task: classification, or use folder, coco or synthetic for segmentation.")
    return SeededDataset(train, weight_map=_weight_map_of(cfg)), SeededDataset(val)


def coco_dataset(cfg: DictConfig, split: str, transforms: Any = None) -> Any:
    """The config's COCO training or validation set (``split``: ``"train"`` or ``"val"``).

    Paths come from ``data.{split}_images`` and ``data.{split}_annotations`` (``~`` expanded), errors
    name those keys. ``data.options.skip_empty`` leaves out images without annotations from the
    training set only: validation scores every image, as torchvision's reference does.
    """
    from segkit.data import CocoDataset

    data = cfg.data
    common, options = dataset_options(cfg)
    _check_options(options, CocoDataset, {"image_dir", "annotation_file", "transforms", "ignore_index", "in_channels"})
    if split != "train":
        options.pop("skip_empty", None)
    images_key, annotations_key = f"data.{split}_images", f"data.{split}_annotations"
    images = _resolve(data[f"{split}_images"], images_key)
    if not images.is_dir():
        raise SegkitError(f"{images_key} {images} is not a folder; point it at the COCO images.")
    dataset = CocoDataset(images, _resolve(data[f"{split}_annotations"], annotations_key), transforms=transforms,
                          ignore_index=data.ignore_index, in_channels=cfg.model.in_channels, **options)
    if dataset.num_classes != cfg.model.num_classes:
        raise SegkitError(f"{annotations_key} gives {dataset.num_classes} classes (background included) but model.num_classes "
                          f"is {cfg.model.num_classes}; set model.num_classes={dataset.num_classes}.")
    names = common.get("classes")
    if names is not None and len(names) != dataset.num_classes:
        raise SegkitError(f"data.classes names {len(names)} classes but the COCO data has {dataset.num_classes} "
                          f"({', '.join(dataset.classes)}); name them all, background first, or leave data.classes out.")
    return dataset


def _weight_map_of(cfg: DictConfig) -> Callable[[Tensor], Tensor] | None:
    """The U-Net weight map the config's ``weight_map_ce`` loss terms need (None without such a term)."""
    from segkit.losses import WeightMapCrossEntropyLoss

    maps = {m.weight_map_fn() for m in _segmentation_loss(cfg).modules() if isinstance(m, WeightMapCrossEntropyLoss)}
    if len(maps) > 1:
        raise SegkitError("the loss has weight_map_ce terms with different w0/sigma/class_weights/background/ignore_index, "
                          "but each sample carries one weight map; give those terms the same options.")
    return maps.pop() if maps else None


def _check_options(options: dict[str, Any], dataset_class: type, taken: set[str]) -> None:
    """``data.options`` must be keyword options of the dataset class (not ones the config sets elsewhere)."""
    import difflib
    import inspect

    params = inspect.signature(dataset_class).parameters
    accepted = [name for name in params if name not in taken]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SegkitError(f"data.options.{key} is not an option of {dataset_class.__name__}; {hint}"
                              f"its options are {', '.join(accepted)}.")
        # The free-form options keep YAML's types: a quoted "false" would be a true string.
        default, value = params[key].default, options[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise SegkitError(f"data.options.{key} is {value!r}; give true or false (unquoted).")
        if isinstance(default, str) and not isinstance(value, str):
            raise SegkitError(f"data.options.{key} is {value!r}; give a string (the default is {default!r}).")


def build_model_from_config(cfg: DictConfig) -> nn.Module:
    """``segkit.create_model`` with the config's model section (``segkit.create_classifier`` for task: classification)."""
    from segkit.models import create_model

    if cfg.task == "classification":
        from segkit.engine.classify import build_classifier_from_config

        return build_classifier_from_config(cfg)
    m = cfg.model
    decoder_kwargs: dict[str, Any] = OmegaConf.to_container(m.decoder, resolve=True)  # type: ignore[assignment]
    kwargs: dict[str, Any] = {"num_classes": m.num_classes, "in_channels": m.in_channels, "upsampling": m.upsampling,
                              "encoder_weights": m.encoder_weights, "aux_classes": m.aux_classes, "weights": m.weights, **decoder_kwargs}
    if m.arch != "unet_original":
        kwargs["encoder"] = m.encoder
    return create_model(m.arch, **kwargs)


def build_loss_fn(cfg: DictConfig) -> nn.Module:
    """The weighted sum of loss terms in ``cfg.loss``, ignoring ``data.ignore_index`` (classification: cross-entropy, nothing ignored)."""
    if cfg.task == "classification":
        from segkit.engine.classify import build_classification_loss

        return build_classification_loss(cfg)
    loss = _segmentation_loss(cfg)
    _try_loss_terms(loss, cfg.model.num_classes, cfg.data.ignore_index)
    return loss


def _segmentation_loss(cfg: DictConfig) -> Any:
    """The CombinedLoss of ``cfg.loss``, ignoring ``data.ignore_index`` (not yet tried against the model)."""
    from segkit.losses import build_loss

    spec = OmegaConf.to_container(cfg.loss, resolve=True)
    for i, term in enumerate(spec):  # type: ignore[arg-type]
        if isinstance(term, dict) and term.get("name") == "bce":
            # BCE takes a 0/1 target shaped like the logits; segkit's datasets give (N, H, W) class indices.
            raise SegkitError(f"loss[{i}] is bce, which takes 0/1 targets shaped like the logits (the Python API's multilabel "
                              "use); segkit's datasets give class-index masks: use ce (binary masks: model.num_classes: 2 with "
                              "data.options.binary: true), or dice/focal/lovasz with mode: multiclass.")
        term.setdefault("ignore_index", cfg.data.ignore_index)  # type: ignore[union-attr]
    return build_loss(spec)  # type: ignore[arg-type]


def _try_loss_terms(loss: Any, num_classes: int, ignore_index: int) -> None:
    """Run each term once on a tiny batch of the model's shape, so an option that does not fit the
    model (binary Dice on 3 classes, 2 class weights for 3 classes) is a SegkitError now, naming
    the term, not a traceback at the first training step."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, num_classes, 8, 8, generator=generator)
    target = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
    target[0, 0, 0] = ignore_index
    extra = {"weight_map": torch.ones(2, 8, 8)}
    for i, (name, term) in enumerate(zip(loss.names, loss.losses)):
        accepted = {key: value for key, value in extra.items() if key in getattr(term, "extra_inputs", ())}
        try:
            with torch.no_grad():
                term(logits, target, **accepted)
        except (ValueError, RuntimeError, IndexError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SegkitError(f"loss[{i}] ({name}) does not fit a model of {num_classes} classes ({first}); fix its options "
                              "(e.g. mode: multiclass, one class weight per class).") from err

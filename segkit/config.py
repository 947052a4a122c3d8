"""Typed training configs: the schema, YAML loading, ``KEY=VALUE`` overrides and validation.

A config is a YAML file whose keys follow :class:`Config` (OmegaConf structured config). Unknown
or mistyped keys fail at once with a ``SegkitError`` that names the key and suggests the closest
valid one; so do values of the wrong type and choices outside their menus. Overrides on the
command line use dotted keys: ``trainer.epochs=5 model.encoder=resnet34``.

The resolved config (defaults filled in, overrides applied) is saved in every run directory as
``config.yaml``; ``segkit train`` on that file reproduces the run.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from segkit.errors import SegkitError

__all__ = ["Config", "config_from_dict", "escape_interpolations", "load_config", "save_config", "to_dict"]

# Menus of allowed values, checked after loading (OmegaConf has no Literal type).
TASKS = ("segmentation", "classification")
DATA_KINDS = ("folder", "coco", "synthetic", "imagefolder", "cifar")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("poly", "step", "multistep", "exponential", "inverse_time", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "bfloat16", "float16")
AUGMENTS = ("auto", "pad_crop", "random_resized_crop", "none")  # classification training augmentation
EVAL_CROPS = ("center", "ten_crop")  # classification evaluation


@dataclass
class ModelConfig:
    arch: str = "unet"  # fcn32s | fcn16s | fcn8s | fcn4s | fcn2s | unet | unet_original | deeplabv3 | deeplabv3plus | fcn_head | fpn, or a classifier name for task=classification
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None  # path to a torchvision-format checkpoint file, or imagenet / imagenet1k_v2 / ... (fetched once into torch's hub cache)
    # The whole model's weights (not with encoder_weights): a segkit best.pt, a torchvision segmentation model's file, or
    # torchvision's published weights by name, coco_with_voc_labels_v1 (deeplabv3 / fcn_head on resnet50 / resnet101)
    weights: Optional[str] = None
    num_classes: int = 2
    in_channels: int = 3
    # transposed | nearest | bed_of_nails | max_unpool | bilinear; null: the arch's default (transposed; bilinear for
    # deeplabv3, deeplabv3plus and fcn_head; fpn: nearest pyramid, bilinear semantic branch)
    upsampling: Optional[str] = None
    aux_classes: Optional[int] = None
    decoder: dict[str, Any] = field(default_factory=dict)  # extra decoder options, e.g. decoder_channels, output_stride, aux_head
    freeze_encoder: bool = False  # train the decoder/head only
    encoder_lr_mult: float = 1.0  # the encoder's learning rate = optimizer.lr * this


@dataclass
class SyntheticConfig:
    # None: the task's own defaults (segmentation: 48 images of 128x128; classification: 6000 of 16x16)
    n: Optional[int] = None
    size: Optional[int] = None
    seed: int = 0


def synthetic_sizes(cfg: DictConfig, **defaults: int) -> dict[str, int]:
    """The ``n`` and ``size`` of ``data.synthetic`` the config sets, over the task's ``defaults``."""
    section = cfg.data.synthetic
    return {**defaults, **{key: section[key] for key in ("n", "size") if section[key] is not None}}


@dataclass
class DataConfig:
    kind: str = "folder"
    root: str = "data"  # folder (or synthetic) dataset root; relative paths resolve against the working directory
    train_split: str = "train"
    val_split: str = "val"
    classes: Optional[list[str]] = None
    ignore_index: int = 255
    options: dict[str, Any] = field(default_factory=dict)  # extra dataset options (e.g. binary, color table, suffixes)
    train_annotations: Optional[str] = None  # COCO: annotation files and image folders
    val_annotations: Optional[str] = None
    train_images: Optional[str] = None
    val_images: Optional[str] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # auto (the default pipelines: flips, rotation, elastic, brightness/contrast for training; none
    # for validation), or a list of steps, each a name ("hflip") or {name: ..., options} (see
    # segkit.data.transforms). [] means no transforms at all.
    train_transforms: Any = "auto"
    val_transforms: Any = "auto"
    num_workers: int = 0
    # task: classification (see segkit.data.classification). auto: pad_crop for cifar/synthetic
    # (pad crop_padding, random crop, flip; the ResNet paper's CIFAR scheme), random_resized_crop
    # for imagefolder (scale 0.08-1, aspect 3/4-4/3, flip; the ImageNet scheme). Mean/std go in
    # data.options {mean, std}; default: the training images' own per-channel statistics for cifar,
    # ImageNet's for imagefolder.
    augment: str = "auto"
    crop_size: Optional[int] = None  # None: 224 for imagefolder, the image size for cifar
    resize_size: Optional[int] = None  # evaluation: shorter side resized to this, then cropped; None: crop_size / 0.875 for imagefolder, no resize for cifar
    crop_padding: int = 4  # pad_crop: zero pixels added on each side before the random crop
    hflip: bool = True  # random horizontal flips in training


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on norm layers and biases
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99  # RMSprop smoothing
    fused: Optional[bool] = None  # None: torch's fused kernel where it has one (sgd, adam, adamw, adagrad); False: torch's default


@dataclass
class ScheduleConfig:
    name: str = "poly"
    power: float = 0.9  # poly
    step_size: int = 1000  # step: iterations between decays
    milestones: list[int] = field(default_factory=list)  # multistep: iterations
    gamma: float = 0.1  # step / multistep / exponential factor
    decay: float = 1e-3  # inverse_time: lr = base / (1 + decay * t)
    min_lr: float = 0.0  # cosine floor
    warmup_iters: int = 0
    warmup_factor: float = 0.001  # lr multiplier at iteration 0 of the warm-up


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 8
    val_batch_size: int = 0  # 0: same as batch_size
    amp: bool = True  # used on CUDA only
    amp_dtype: str = "auto"  # auto: bfloat16 where supported, else float16 with a grad scaler
    channels_last: bool = True  # used on CUDA only
    grad_accum: int = 1
    clip_grad_norm: Optional[float] = None
    compile: bool = False
    val_interval: int = 1  # validate every N epochs (and after the last)
    seed: int = 0
    sync_bn: bool = False
    device: str = "auto"
    log_interval: int = 10
    # last.pt at most every this many seconds (0: after every epoch), and always at the end, on SIGINT/SIGTERM and --max-steps
    checkpoint_interval: float = 300.0
    aux_weight: float = 0.3  # weight of auxiliary losses (image-level head, GoogLeNet/Inception aux heads)
    # model.decoder.deep_supervision: one weight per side output, finest first (the decoder level at
    # stride 2, then 4, ...), the main loss weighing 1; None: halving per level, 0.5, 0.25, 0.125, ...
    deep_supervision_weights: Optional[list[float]] = None
    eval_crops: str = "center"  # classification validation: center (one crop) | ten_crop (corners + center, and their flips, averaged)


@dataclass
class OutputConfig:
    plots: bool = True
    num_vis: int = 4  # validation predictions drawn in the plot
    tensorboard: bool = False


@dataclass
class Config:
    task: str = "segmentation"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "ce", "weight": 1.0}])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as err:
        parent, _, key = str(err.full_key).rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        valid = list(node.keys()) if isinstance(node, DictConfig) else []
        by_lower = {str(v).lower(): v for v in valid}  # NUM_CLASSES -> num_classes too
        close = [by_lower[c] for c in difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)]
        if close:
            suggestion = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
        elif valid:
            suggestion = f"valid keys here: {', '.join(valid)}."
        else:
            suggestion = "see configs/quickstart.yaml for the valid keys."
        raise SegkitError(f"{source}: unknown config key '{err.full_key}'; {suggestion}") from None
    except ValidationError as err:
        key = err.full_key if err.full_key not in (None, "", "None") else err.key
        if isinstance(key, (int, str)) and str(key).isdigit():  # an entry of a list, named by its index alone
            key = _list_entry(other, int(key)) or key
        if key in (None, "", "None") and (mismatch := _container_mismatch(base, other, scalars=True)):
            raise SegkitError(f"{source}: config key '{mismatch[0]}' is a {mismatch[1]} but must be a {mismatch[2]} of keys "
                              f"(e.g. {mismatch[0].rpartition('.')[2]}: {{...}} in YAML).") from None
        where = f"config key '{key}'" if key not in (None, "", "None") else "a config section"
        raise SegkitError(f"{source}: {where} has a value of the wrong type ({str(err).splitlines()[0]}).") from None
    except OmegaConfBaseException as err:
        raise SegkitError(f"{source}: invalid config ({str(err).splitlines()[0]}).") from None
    except TypeError as err:  # a list where a mapping belongs or the reverse, or a dotlist index (loss.0.name=dice)
        mismatch = _container_mismatch(base, other)
        if mismatch:
            raise SegkitError(f"{source}: config key '{mismatch[0]}' is a {mismatch[1]} but must be a {mismatch[2]}.") from None
        raise SegkitError(f"{source}: cannot merge the config ({err}); set a list whole, e.g. "
                          "'loss=[{name: dice, weight: 1.0}]', not one entry by index.") from None


def _list_entry(tree: Any, index: int, prefix: str = "") -> str | None:
    """``key[index]`` for the first list in ``tree`` (dotted keys) whose entry ``index`` is not a mapping."""
    if isinstance(tree, (list, ListConfig)):
        if len(tree) > index and not isinstance(tree[index], (dict, DictConfig)):
            return f"{prefix}[{index}]"
        return None
    if isinstance(tree, (dict, DictConfig)):
        for key in tree:
            found = _list_entry(tree[key], index, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    return None


def _container_mismatch(base: Any, other: Any, prefix: str = "", scalars: bool = False) -> tuple[str, str, str] | None:
    """The first key (dotted) where ``other`` gives a list for a mapping of ``base`` or the reverse
    (with ``scalars``, also a single value for a mapping): ``(key, what other gives, what base wants)``."""
    if not isinstance(other, (dict, DictConfig)) or not isinstance(base, DictConfig):
        return None
    for key in other:
        if key not in base:
            continue
        want = base._get_node(key)
        if want is None or OmegaConf.is_missing(base, key):
            continue
        given = other[key] if isinstance(other, dict) else other._get_node(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        given_kind = "list" if isinstance(given, (list, ListConfig)) else "mapping" if isinstance(given, (dict, DictConfig)) else None
        want_kind = "list" if isinstance(want, ListConfig) else "mapping" if isinstance(want, DictConfig) else None
        if given_kind == "mapping" and want_kind == "list" and all(str(k).isdigit() for k in given):
            return None  # a dotlist index (loss.0.name=dice): the caller's message says to set the list whole
        if given_kind and want_kind and given_kind != want_kind:
            return dotted, given_kind, want_kind
        if scalars and given_kind is None and want_kind == "mapping":
            return dotted, "single value", want_kind
        if given_kind == want_kind == "mapping":
            found = _container_mismatch(want, given, dotted, scalars)
            if found:
                return found
    return None


def _check_choice(cfg: DictConfig, key: str, choices: Sequence[str], source: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise SegkitError(f"{source}: config key '{key}' is {value!r}; choose one of {', '.join(choices)}.")


def _check_positive(cfg: DictConfig, key: str, source: str, allow_zero: bool = False, below: float | None = None) -> None:
    """``key`` > 0 (or >= 0), finite, and under ``below`` if given."""
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or (below is not None and value >= below):
        bounds = f"{'>= 0' if allow_zero else '> 0'}{f' and < {below:g}' if below is not None else ''}"
        raise SegkitError(f"{source}: config key '{key}' must be {bounds}; got {value}.")


def check_config(cfg: DictConfig, source: str) -> None:
    """Checks OmegaConf's types cannot express: menus and ranges."""
    _check_choice(cfg, "task", TASKS, source)
    _check_choice(cfg, "data.kind", DATA_KINDS, source)
    _check_choice(cfg, "optimizer.name", OPTIMIZERS, source)
    _check_choice(cfg, "schedule.name", SCHEDULES, source)
    _check_choice(cfg, "trainer.device", DEVICES, source)
    _check_choice(cfg, "trainer.amp_dtype", AMP_DTYPES, source)
    _check_choice(cfg, "data.augment", AUGMENTS, source)
    _check_choice(cfg, "trainer.eval_crops", EVAL_CROPS, source)
    for key in ("model.num_classes", "model.in_channels", "trainer.epochs", "trainer.batch_size", "trainer.grad_accum",
                "trainer.val_interval", "trainer.log_interval", "optimizer.lr", "schedule.step_size",
                "data.crop_size", "data.resize_size"):
        _check_positive(cfg, key, source)
    for key in ("trainer.val_batch_size", "data.num_workers", "optimizer.weight_decay", "schedule.warmup_iters", "model.encoder_lr_mult",
                "data.crop_padding", "trainer.aux_weight", "trainer.checkpoint_interval", "output.num_vis"):
        _check_positive(cfg, key, source, allow_zero=True)
    # A negative clip norm or decay factor would flip the gradient's or the learning rate's sign: ascent, not descent.
    for key in ("trainer.clip_grad_norm", "schedule.gamma", "schedule.warmup_factor", "optimizer.eps", "schedule.power"):
        _check_positive(cfg, key, source)
    for key in ("schedule.min_lr", "schedule.decay"):  # a negative floor or decay gives negative rates: ascent
        _check_positive(cfg, key, source, allow_zero=True)
    for key in ("optimizer.momentum", "optimizer.alpha"):  # averages of past gradients: a factor of 1 or more diverges
        _check_positive(cfg, key, source, allow_zero=True, below=1.0)
    if cfg.schedule.warmup_factor > 1:
        raise SegkitError(f"{source}: config key 'schedule.warmup_factor' is {cfg.schedule.warmup_factor}; the warm-up starts at "
                          "this fraction of the learning rate and rises to it, so it must be in (0, 1], e.g. 0.001.")
    if any(m < 1 for m in cfg.schedule.milestones):
        raise SegkitError(f"{source}: config key 'schedule.milestones' holds {list(cfg.schedule.milestones)}; milestones are "
                          "optimizer-step numbers >= 1.")
    if cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise SegkitError(f"{source}: config key 'optimizer.nesterov' is true with momentum 0; Nesterov momentum needs "
                          "optimizer.momentum > 0 (e.g. 0.9).")
    betas = OmegaConf.select(cfg, "optimizer.betas")
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise SegkitError(f"{source}: config key 'optimizer.betas' must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {list(betas)}.")
    if not 0 <= cfg.trainer.seed < 2**32:
        raise SegkitError(f"{source}: config key 'trainer.seed' is {cfg.trainer.seed}; give a whole number in [0, 2**32), e.g. 0.")
    if cfg.task == "segmentation":
        _check_segmentation_data(cfg, source)
    if cfg.task == "segmentation" and cfg.model.num_classes == 1:
        raise SegkitError(f"{source}: config key 'model.num_classes' is 1; segkit trains and scores binary segmentation as 2 classes "
                          "(background, foreground): set model.num_classes: 2 (and data.options.binary: true for 0/255 masks).")
    for key in ("data.train_transforms", "data.val_transforms"):
        value = OmegaConf.select(cfg, key)
        if not (value is None or value == "auto" or isinstance(value, ListConfig)):
            raise SegkitError(f"{source}: config key '{key}' is {value!r}; give 'auto' (the defaults), a list of steps, or [] for none.")
    _check_deep_supervision_weights(cfg, source)
    if not cfg.loss:
        raise SegkitError(f"{source}: config key 'loss' is empty; give at least one term, e.g. [{{name: ce, weight: 1.0}}].")
    for i, term in enumerate(cfg.loss):
        if not isinstance(term, DictConfig) or "name" not in term:
            raise SegkitError(f"{source}: config key 'loss[{i}]' needs a 'name' (e.g. ce, dice, focal).")


def _check_segmentation_data(cfg: DictConfig, source: str) -> None:
    """The classification-only data keys (which a segmentation run would silently ignore) and an
    ignore_index no mask pixel can hold."""
    defaults = DataConfig()
    for key in ("augment", "crop_size", "resize_size", "crop_padding", "hflip"):
        if cfg.data.get(key) != getattr(defaults, key):
            raise SegkitError(f"{source}: config key 'data.{key}' is for task: classification, and segmentation ignores it; "
                              "segmentation augments with data.train_transforms, a list of steps (e.g. [{name: random_crop, "
                              "size: 256}, hflip]): remove the key and give the steps there.")
    n = cfg.data.synthetic.n
    if cfg.data.kind == "synthetic" and n is not None and n < 2:
        raise SegkitError(f"{source}: config key 'data.synthetic.n' is {n}; the built-in data needs at least 2 images (a quarter, "
                          "at least one, validate), e.g. 48.")
    if cfg.data.ignore_index < 0:
        raise SegkitError(f"{source}: config key 'data.ignore_index' is {cfg.data.ignore_index}; masks hold labels >= 0, so no pixel "
                          "can carry it (and augmentation fills new mask pixels with it): use the value your masks use for "
                          "unlabelled pixels, 255 by default.")


def _check_deep_supervision_weights(cfg: DictConfig, source: str) -> None:
    """Signs here; the count, one per side output, is checked against the model by the loss."""
    weights = OmegaConf.select(cfg, "trainer.deep_supervision_weights")
    if weights is None:
        return
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise SegkitError(f"{source}: config key 'trainer.deep_supervision_weights' must hold finite weights >= 0 (one per side output, "
                          f"finest first); got {list(weights)}.")
    decoder = OmegaConf.select(cfg, "model.decoder")
    if not (isinstance(decoder, DictConfig) and decoder.get("deep_supervision") is True):
        # Set without side outputs it would silently do nothing.
        raise SegkitError(f"{source}: config key 'trainer.deep_supervision_weights' is set but model.decoder.deep_supervision is not true; "
                          "set model.decoder.deep_supervision=true (arch unet) or remove the weights.")


def config_from_dict(data: dict[str, Any] | DictConfig, overrides: Sequence[str] = (), source: str = "config") -> DictConfig:
    """Schema defaults <- ``data`` <- ``overrides`` (``KEY=VALUE`` strings), validated."""
    cfg = _merge(OmegaConf.structured(Config), data, source)
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise SegkitError(f"override {bad[0]!r} is not of the form KEY=VALUE (e.g. trainer.epochs=5).")
    if overrides:
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "command line")
    try:
        OmegaConf.to_container(cfg, resolve=True)  # ${...} resolve here, in a copy (escaped \${...} stay text): a missing key is named
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        given = {o.split("=", 1)[0] for o in overrides}
        raise SegkitError(f"{'command line' if key in given else source}: config key '{key}' cannot be resolved ({str(err).splitlines()[0]}); fix the ${{...}} "
                          "reference it holds, or set the environment variable it reads.") from None
    try:
        check_config(cfg, source)
    except SegkitError as err:
        # A value set on the command line is the command line's mistake, not the file's.
        message, named = str(err), re.search(r"config key '([^']+)'", str(err))
        given = {o.split("=", 1)[0] for o in overrides}
        if message.startswith(f"{source}: ") and (any(f"'{key}'" in message for key in given)
                                                   or (named is not None and named.group(1) in _override_paths(overrides))):
            raise SegkitError("command line" + message[len(source):]) from None
        raise
    return cfg


def _override_paths(overrides: Sequence[str]) -> set[str]:
    """Every key the ``KEY=VALUE`` overrides set, inside the values too: ``loss=[{nam: dice}]`` sets
    ``loss``, ``loss[0]`` and ``loss[0].nam``; ``trainer={epochs: 1}`` sets ``trainer.epochs``, not ``trainer.seed``."""
    paths: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        paths.add(prefix)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{prefix}[{index}]")

    walk(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False), "")
    return paths


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Read and validate the YAML config at ``path`` with ``KEY=VALUE`` ``overrides`` applied."""
    path = Path(path)
    if path.is_dir():
        raise SegkitError(f"config file {path} is a directory; pass a YAML file such as configs/quickstart.yaml.")
    if not path.is_file():
        raise SegkitError(f"config file {path} does not exist; pass a YAML file such as configs/quickstart.yaml.")
    try:
        data = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        mark = getattr(err, "problem_mark", None)  # where the parser stopped, 0-based
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SegkitError(f"config file {path} is not valid YAML{where} ({problem}).") from None
    if not isinstance(data, DictConfig):
        raise SegkitError(f"config file {path} must hold a mapping of keys (model:, data:, trainer:, ...), not a list.")
    return config_from_dict(data, overrides, source=str(path))


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain Python containers (for checkpoints and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML to ``path`` (a run's ``config.yaml``; ``load_config`` reads it back)."""
    # Resolved: a ${oc.env:...} must give the value this run used, not whatever the variable holds later.
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(escape_interpolations(OmegaConf.to_container(cfg, resolve=True)))))


def escape_interpolations(value: Any) -> Any:
    """A resolved config (plain containers) with every "${" escaped, so that OmegaConf reads it back as
    the same text: what still reads "${" after resolving was text (an escaped \\${...}, or an
    environment variable's value), not a reference. For ``config.yaml`` and the configs in checkpoints."""
    if isinstance(value, dict):
        return {k: escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_interpolations(v) for v in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value

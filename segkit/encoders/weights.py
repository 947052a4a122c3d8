"""Reading torchvision-format checkpoint files into segkit backbones, and published weights by name.

The files torchvision publishes (``resnet50-0676ba61.pth``, ``vgg16-397923af.pth``, ...) are plain
state dicts; segkit's backbones use the same parameter names, so they load without conversion.

``weights`` is a local path, or a name (:func:`resolve_weights`): ``"imagenet"`` (torchvision's
default ImageNet weights for that architecture) or one of torchvision's variants
(``"imagenet1k_v1"``, ``"imagenet1k_v2"``, ...). Names are looked up in torchvision's own weight
enums (``torchvision.models.get_model_weights``: URL, file name, published accuracy), and the file
lives in torch's hub cache, ``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch`` by default), where
torchvision itself keeps it. It is downloaded (with torch's progress bar and the hash check that the
file name carries) only when it is not there; a second use never touches the network. Offline, a
missing file is a ``SegkitError`` naming the URL and the exact path to copy it to.

Loading is strict in what matters and forgiving in what is routine:

* every tensor of the architecture must be found in the file, and every tensor of the file must
  belong to the architecture, else a ``SegkitError`` names the file and the first offenders;
* a 3-channel first convolution adapts to any ``in_channels`` (see :func:`adapt_first_conv`);
* a classification head of another size than the checkpoint's keeps its fresh initialisation,
  with a log line saying so (fine-tuning on new classes);
* an encoder silently drops the classifier head it does not have;
* a ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are
  unwrapped.

Files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, never executed.

Whole segmentation models (``create_model(..., weights=...)``) come through the same mechanism:
torchvision's published segmentation models by name (``"coco_with_voc_labels_v1"`` for
``deeplabv3`` and ``fcn_head`` on ``resnet50``/``resnet101``: :func:`resolve_model_weights`), a
torchvision whole-model file, or a segkit run checkpoint (:func:`read_model_checkpoint`); the key
conversion and loading rules are :mod:`segkit.archs`'s.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
from torch import Tensor, nn

from segkit.errors import SegkitError

__all__ = [
    "PublishedWeights",
    "adapt_first_conv",
    "fetch_weights",
    "is_weights_name",
    "load_state",
    "load_weights",
    "published_model_weights",
    "published_weights",
    "read_checkpoint",
    "read_model_checkpoint",
    "resolve_model_weights",
    "resolve_weights",
    "weights_architectures",
]

logger = logging.getLogger("segkit")

_SHOW = 5  # how many offending tensor names an error message lists


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict of tensors from ``path`` (torchvision format, or segkit's ``{"model": ...}``)."""
    return read_checkpoint_and_meta(path)[0]


def read_checkpoint_and_meta(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state dict, the file's other entries)``: a segkit checkpoint's config, ``transform_input``
    and so on beside its ``model``; ``{}`` for a plain state dict (torchvision's files)."""
    path = Path(path)
    try:
        obj = _load_object(path)
        meta = {k: v for k, v in obj.items() if k not in ("model", "state_dict")} if isinstance(obj, Mapping) and any(
            isinstance(obj.get(w), Mapping) for w in ("model", "state_dict")) else {}
        return _state_dict_of(obj, path), meta
    except SegkitError as err:
        if path.parent != hub_checkpoints():
            raise
        # A download cut short (or a copy gone wrong) in the cache: say how to replace it.
        raise SegkitError(f"{str(err).rstrip('.')}; it is a cached download: delete {path} and fetch it again "
                          f"(segkit weights fetch NAME, or any use of the weights name online).") from err


def read_model_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict | None]:
    """``(state dict, config or None)`` of ``path``: a segkit run checkpoint's model and config, or a plain state dict."""
    path = Path(path)
    obj = _load_object(path)
    config = obj.get("config") if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) else None
    return _state_dict_of(obj, path), (dict(config) if config is not None else None)


def _load_object(path: Path) -> object:
    if not path.exists():
        raise SegkitError(f"weights file {path} does not exist; pass the path of a checkpoint file you have, or a published "
                          "name such as weights='imagenet' (downloaded once into torch's hub cache).")
    if not path.is_file():
        raise SegkitError(f"weights path {path} is not a file; pass the checkpoint file itself, e.g. resnet50-0676ba61.pth.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise SegkitError(f"weights file {path} is not a readable PyTorch checkpoint (it does not unpickle); check that the download or copy is complete.") from err
        raise SegkitError(
            f"weights file {path} holds a Python object ({found.group(1)}) that only unsafe unpickling could load; "
            f"re-save it as a plain state dict (torch.save(model.state_dict(), ...))."
        ) from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise SegkitError(f"weights file {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); check that the download or copy is complete.") from err
    return obj


def _state_dict_of(obj: object, path: Path) -> dict[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise SegkitError(f"weights file {path} does not hold a state dict (a mapping of names to tensors); save one with torch.save(model.state_dict(), ...).")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise SegkitError(f"weights file {path} has an entry {key!r} that is not a named tensor; save a plain state dict instead.")
        state[key.removeprefix("module.")] = value
    return state


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a first-convolution weight ``(O, I, k, k)`` to ``in_channels`` inputs, as smp does.

    One channel: the sum over the checkpoint's channels (a grey image repeated over RGB gives the
    same response). Otherwise the checkpoint's channels are repeated cyclically and scaled by
    ``I / in_channels`` so the expected activation size is kept.
    """
    old = weight.shape[1]
    if in_channels == old:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % old
    return weight[:, index] * (old / in_channels)


def _starts(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    first_conv: str,
    head_prefixes: Iterable[str] = (),
    ignore_prefixes: Iterable[str] = (),
    optional_prefixes: Iterable[str] = (),
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` in place, with the rules of the module doc;
    return the file's entries beside the weights (:func:`read_checkpoint_and_meta`).

    ``first_conv`` is the state-dict prefix of the image convolution (``"conv1"``,
    ``"features.0"``); ``head_prefixes`` those of classification layers whose size may differ from
    the checkpoint's; ``ignore_prefixes`` those checkpoint entries the model is known not to have;
    ``optional_prefixes`` those model entries the file may lack (see :func:`load_state`).
    """
    state, meta = read_checkpoint_and_meta(path)
    load_state(model, state, path, first_conv=first_conv, head_prefixes=head_prefixes, ignore_prefixes=ignore_prefixes,
               optional_prefixes=optional_prefixes)
    return meta


def load_state(
    model: nn.Module,
    source: dict[str, Tensor],
    path: str | os.PathLike[str],
    *,
    first_conv: str,
    head_prefixes: Iterable[str] = (),
    ignore_prefixes: Iterable[str] = (),
    optional_prefixes: Iterable[str] = (),
) -> None:
    """:func:`load_weights` on a state dict already read from ``path`` (named in messages).

    ``optional_prefixes``: model entries the file may lack (an auxiliary head a published file
    has none of): they keep their fresh initialisation, logged.
    """
    source = dict(source)
    head_prefixes, ignore_prefixes, optional_prefixes = tuple(head_prefixes), tuple(ignore_prefixes), tuple(optional_prefixes)
    target = model.state_dict()
    conv_key = f"{first_conv}.weight"
    if conv_key in source and conv_key in target and source[conv_key].dim() == 4:
        source[conv_key] = adapt_first_conv(source[conv_key], target[conv_key].shape[1])

    # Old checkpoints predate BatchNorm's step counter; BatchNorm itself fills it in.
    absent = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    missing = [k for k in absent if not _starts(k, optional_prefixes)]
    fresh = sorted({k.rsplit(".", 1)[0] for k in absent if _starts(k, optional_prefixes)})
    unexpected = [k for k in source if k not in target and not _starts(k, ignore_prefixes)]
    reinit, mismatched, to_load = [], [], {}
    for key, value in source.items():
        if key not in target:
            continue
        if value.shape == target[key].shape:
            to_load[key] = value
        elif _starts(key, head_prefixes):
            reinit.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} in the file vs {tuple(target[key].shape)} in the model")

    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_first(mismatched)}")
    if problems:
        raise SegkitError(
            f"weights file {path} does not fit {type(model).__name__}: {'; '.join(problems)}; "
            f"check that the file is the checkpoint of this architecture."
        )
    model.load_state_dict(to_load, strict=False)
    if fresh:
        logger.info("segkit: %s has no %s; they keep their fresh initialisation.", path, ", ".join(fresh))
    if reinit:
        layers = sorted({k.rsplit(".", 1)[0] for k in reinit})
        logger.info("segkit: %s: classification layer(s) %s have another number of classes than %s; they keep their fresh initialisation.", type(model).__name__, ", ".join(layers), path)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{shown} (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else shown


# ---------------------------------------------------------------------------------------------
# Published weights by name.

# segkit architectures whose torchvision builder of the same name publishes weights that fit them
# parameter for parameter.
_PUBLISHED = frozenset((
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "googlenet", "inception_v3",
))
# Architectures segkit has for which nothing is published, and why (said in the error).
_UNPUBLISHED = {
    "alexnet": "segkit's alexnet has the paper's original layer sizes (62,378,344 parameters); torchvision publishes "
               "weights only for its 'one weird trick' variant, which has other layer shapes",
    "lenet5": "LeNet-5 has no published weights",
}


def _why_unpublished(arch: str) -> str:
    if arch in _UNPUBLISHED:
        return _UNPUBLISHED[arch]
    base = re.fullmatch(r"(resnet\d+)_([ac])", arch)
    if base:
        return (f"{arch} has shortcut option {base.group(2).upper()}; torchvision's ImageNet ResNets use option B "
                f"(use {base.group(1)}, or train {arch} yourself)")
    if arch.startswith(("plain", "cifar_")):
        return f"{arch} is one of the papers' experimental nets and has no published weights"
    return f"no published weights are known for {arch}"


@dataclass(frozen=True)
class PublishedWeights:
    """One variant of an architecture's published weights (from torchvision's enum)."""

    arch: str
    variant: str  # lower case, e.g. "imagenet1k_v2"
    default: bool  # what the name "imagenet" picks
    url: str
    acc1: float | None  # ImageNet-1K top-1 as torchvision publishes it
    path: Path  # where the file lives in torch's hub cache
    miou: float | None = None  # segmentation models: mIoU on COCO val2017 with VOC's labels, as torchvision publishes it

    @property
    def cached(self) -> bool:
        return self.path.is_file()


def hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where torch (and torchvision) keep downloaded weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_architectures() -> list[str]:
    """Architectures with published weights, sorted."""
    return sorted(_PUBLISHED)


def published_model_names() -> list[str]:
    """torchvision's segmentation models whose published files segkit loads whole (``deeplabv3_resnet50``, ...), sorted."""
    return sorted(_PUBLISHED_MODELS.values())


def published_weights(arch: str) -> list[PublishedWeights]:
    """Every published variant for ``arch`` (a SegkitError saying why when there is none).

    ``arch`` is a segkit architecture (:func:`weights_architectures`) or one of torchvision's
    published segmentation models (``deeplabv3_resnet50``, ``fcn_resnet101``, ...; see
    :func:`published_model_weights`).
    """
    from torchvision.models import get_model_weights

    if arch not in _PUBLISHED and arch not in _PUBLISHED_MODELS.values():
        raise SegkitError(f"{_why_unpublished(arch)}; pass no weights (weights=None; encoder_weights in create_model and "
                          "configs) or the path of a checkpoint file.")
    enum = get_model_weights(arch)
    found = []
    for weights in enum:
        metrics = weights.meta.get("_metrics", {})
        acc1 = metrics.get("ImageNet-1K", {}).get("acc@1")
        miou = metrics.get("COCO-val2017-VOC-labels", {}).get("miou")
        found.append(PublishedWeights(arch, weights.name.lower(), weights == enum.DEFAULT, weights.url, acc1,
                                      hub_checkpoints() / weights.url.rsplit("/", 1)[-1], miou))
    return found


# (segkit arch, encoder) -> torchvision's segmentation model whose published file is that whole model
# (built with output_stride=8; the files carry torchvision's auxiliary FCN head: aux_head="fcn").
_PUBLISHED_MODELS = {
    ("deeplabv3", "resnet50"): "deeplabv3_resnet50",
    ("deeplabv3", "resnet101"): "deeplabv3_resnet101",
    ("fcn_head", "resnet50"): "fcn_resnet50",
    ("fcn_head", "resnet101"): "fcn_resnet101",
}


def published_model_weights(arch: str, encoder: str | None) -> list[PublishedWeights]:
    """torchvision's published whole-model weights for segkit's ``arch`` on ``encoder`` (a SegkitError naming those that have some)."""
    builder = _PUBLISHED_MODELS.get((arch, str(encoder)))
    if builder is None:
        known = ", ".join(f"{a} on {e}" for a, e in _PUBLISHED_MODELS)
        raise SegkitError(f"no published weights are known for {arch} on {encoder}; torchvision publishes {known} "
                          f"(weights='coco_with_voc_labels_v1'); otherwise pass the path of a checkpoint file.")
    return published_weights(builder)


def resolve_model_weights(arch: str, encoder: str | None, weights: str | os.PathLike[str] | None) -> Path | None:
    """Whole-model ``weights`` as a local file: None stays None, a path a path, a name (``"coco_with_voc_labels_v1"``,
    any case) the cached file of torchvision's published model, downloaded once as :func:`fetch_weights` does."""
    if weights is None:
        return None
    if not is_weights_name(_not_empty(weights)):
        return Path(weights)
    variants = published_model_weights(arch, encoder)
    wanted = str(weights).lower()
    for found in variants:
        if found.variant == wanted:
            return fetch_weights(found)
    names = ", ".join(w.variant for w in variants)
    raise SegkitError(f"{arch} on {encoder} has no published weights {str(weights)!r}; its names are {names} (or pass the path of a checkpoint file).")


def is_weights_name(spec: object) -> bool:
    """A weights name (a string with no folder, no file suffix, no such file), as opposed to a path."""
    if not isinstance(spec, str):
        return False
    return not (os.sep in spec or "/" in spec or Path(spec).suffix or Path(spec).exists())


def lookup_published(arch: str, name: str) -> PublishedWeights:
    """The variant ``name`` (``"imagenet"`` or e.g. ``"imagenet1k_v2"``, any case) of ``arch``'s published weights."""
    variants = published_weights(arch)
    wanted = name.lower()
    for weights in variants:
        if weights.variant == wanted or (wanted == "imagenet" and weights.default):
            return weights
    names = ", ".join(["imagenet", *(w.variant for w in variants)])
    raise SegkitError(f"{arch} has no published weights {name!r}; its names are {names} (or pass the path of a checkpoint file).")


def fetch_weights(weights: PublishedWeights, progress: bool = True) -> Path:
    """The cached file of ``weights``, downloaded first (hash-checked, atomically) if it is not there."""
    import urllib.error

    import torch.hub

    if weights.cached:
        return weights.path
    weights.path.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(weights.path.name)  # torchvision's file names carry a sha256 prefix
    try:
        # download_url_to_file is what torch.hub.load_state_dict_from_url uses: a temporary file
        # moved into place only once complete and hash-checked, so an interrupted download leaves nothing.
        torch.hub.download_url_to_file(weights.url, str(weights.path), found.group(1) if found else None, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SegkitError(
            f"could not download the {weights.variant} weights of {weights.arch} from {weights.url} ({err}); without internet, "
            f"copy that file to {weights.path} (segkit weights fetch {weights.arch}{'' if weights.default else ' --variant ' + weights.variant} "
            f"prepares it on a machine that is online)."
        ) from err
    except RuntimeError as err:  # the hash check
        raise SegkitError(f"the download of {weights.url} is corrupt ({err}); try again, or copy the file to {weights.path}.") from err
    return weights.path


def resolve_weights(arch: str, weights: str | os.PathLike[str] | None) -> Path | None:
    """``weights`` as a local file: None stays None, a path stays a path, a name becomes its cached file.

    Names (``"imagenet"``, ``"imagenet1k_v1"``, ...) resolve through torchvision's weight enums and
    download into torch's hub cache on first use (see the module docstring).
    """
    if weights is None:
        return None
    if not is_weights_name(_not_empty(weights)):
        return Path(weights)
    return fetch_weights(lookup_published(arch, weights))


def _not_empty(weights: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``weights`` unless it is blank (``Path("")`` would be the current folder)."""
    if not str(weights).strip():
        raise SegkitError("weights is an empty string (model.weights or model.encoder_weights in a config); pass a "
                          "checkpoint file's path, a published name such as "
                          "'imagenet', or leave it unset (null in a config) for random weights.")
    return weights

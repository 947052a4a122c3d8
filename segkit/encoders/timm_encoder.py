"""Encoders from timm: ``create_encoder("tu-NAME")`` for any timm model that has ``features_only``.

The ``tu-`` prefix is smp's, so a config written for smp's ``Unet("tu-convnext_atto")`` names the
same backbone here. timm is an optional dependency (``pip install segkit[timm]``): it is imported
only when a ``tu-`` name is asked for.

What comes from timm, and what segkit adds:

* the backbone is ``timm.create_model(NAME, features_only=True, in_chans=in_channels)``; its
  ``feature_info`` gives ``out_channels`` and ``reductions``, which need not be the classic
  ``(2, 4, 8, 16, 32)`` (ConvNeXt and Swin start at stride 4; the decoders adapt, see
  :mod:`segkit.decoders.levels`). timm adapts the first convolution to any ``in_channels``, for
  random and pretrained weights alike. Channels-last (NHWC) outputs, as Swin's, are permuted to
  ``(N, C, H, W)``.
* switches for max-location unpooling: timm records none, so segkit takes those of a 2x2 max over
  each step's input (the previous feature map, or the image), as it does for every strided
  convolution of its own backbones; see :meth:`TimmEncoder.forward_stages`.
* ``weights``: ``None`` (random), ``"imagenet"`` (the default pretrained tag of the model, or the
  tag in the name, ``tu-resnet18.a1_in1k``), a timm pretrained tag (``"a1_in1k"``, or in full
  ``"resnet18.a1_in1k"``), or a local ``.pth`` / ``.safetensors`` file holding a state dict of the
  timm model (loaded by timm through ``pretrained_cfg_overlay=dict(file=...)``). Tags load through
  timm's own mechanism, from the Hugging Face cache (``$HF_HOME/hub``), downloading only when
  missing and online; with ``HF_HUB_OFFLINE=1`` only the cache is used, as in timm.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import Encoder, switches_2x2
from segkit.errors import SegkitError

__all__ = ["TIMM_PREFIX", "TimmEncoder", "create_timm_encoder", "import_timm", "is_timm_name", "list_timm_encoders"]

TIMM_PREFIX = "tu-"
_INSTALL = "pip install segkit[timm]"
_LIST = "segkit list --timm PATTERN"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pth.tar")


def is_timm_name(name: object) -> bool:
    """True for encoder names that ask for a timm backbone (``"tu-..."``)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def import_timm() -> Any:
    """The ``timm`` module, or a SegkitError that says how to install it."""
    try:
        import timm
    except ImportError as err:
        raise SegkitError(f"'tu-' encoders come from timm, which is not installed: {_INSTALL}.") from err
    return timm


class TimmEncoder(Encoder):
    """A timm ``features_only`` model behind segkit's :class:`Encoder` contract.

    ``forward(x)`` ``(N, C, H, W)`` -> list of ``(N, out_channels[i], H / reductions[i], W / reductions[i])``.
    ``name`` is the timm model name (with its pretrained tag, if any).
    """

    def __init__(self, model: nn.Module, name: str, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels = tuple(int(c) for c in model.feature_info.channels())
        self.reductions = tuple(int(r) for r in model.feature_info.reduction())
        # Smaller inputs would leave the deepest level without a single pixel; models with valid
        # convolutions (Inception-v3: 75) say their own minimum.
        listed = getattr(model, "pretrained_cfg", {}).get("min_input_size") or (0, 0, 0)
        self.min_input_size = max(max(self.reductions), *(int(v) for v in listed[1:]))
        self.channels_last = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
        self._in_channels = in_channels
        self.first_conv = _find_first_conv(self, model)
        if self.first_conv and self.get_parameter(f"{self.first_conv}.weight").shape[1] != in_channels:
            self.first_conv = ""  # not the image's convolution (TResNet's follows a space-to-depth stem)
        # Known without a forward pass (see segkit.decoders.switch_channels): some timm models
        # (Swin, NesT, LeViT) take only the image size they were built for, not a probe's.
        self.switch_channels = self._switch_channels()

    @property
    def in_channels(self) -> int:
        """Channels of the image the encoder takes (the first convolution's, where it can be found)."""
        return super().in_channels if self.first_conv else self._in_channels

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        """Features as timm computes them; with ``record_switches``, one switch tensor per x2 step.

        ``switches[k]`` holds the argmax positions of a 2x2 max over the map at stride ``2**k`` (the
        image for ``k = 0``, unless the model has a stride-1 feature map as VGG's; else the feature
        map at that stride), for ``k = 0 .. log2(max reduction) - 1``.
        Where no feature map sits at a stride (ConvNeXt has none at 2), the map there is a 2x2 max
        pool of the one above it, so a decoder can still unpool that step. With the classic strides
        (2, 4, ..., 32) this is one switch tensor per feature map, as for segkit's own encoders.
        """
        try:
            features = list(self.model(x))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError) as err:  # timm's own checks of the input size, or a map shrunk to nothing
            if self._input_mismatch(x):
                raise  # another dtype or device than the weights': torch's own message says so
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise SegkitError(f"timm's {self.name} cannot take a {x.shape[-2]}x{x.shape[-1]} input ({first}; a segkit model "
                              "first pads the image to a multiple of 32); feed images of the size it was built for "
                              "(Swin, NesT, LeViT: 224x224), or larger images to other models.") from err
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if not record_switches:
            return features, []
        return features, self._switches(x, features)

    def _input_mismatch(self, x: Tensor) -> bool:
        """Whether ``x`` is on another device, or of another floating dtype outside autocast, than the weights."""
        weight = next(self.model.parameters(), None)
        if weight is None:
            return False
        other_dtype = x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type)
        return x.device != weight.device or other_dtype

    def _switch_channels(self) -> tuple[int, ...]:
        """Channels of each switch tensor :meth:`_switches` records: those of the map it pools."""
        by_stride = dict(zip(self.reductions, self.out_channels))
        channels: list[int] = []
        source, stride = by_stride.get(1, self._in_channels), 1  # VGG-style models have a stride-1 map
        while stride < max(self.reductions):
            channels.append(source)
            source = by_stride.get(2 * stride, source)
            stride *= 2
        return tuple(channels)

    @torch.no_grad()
    def _switches(self, x: Tensor, features: list[Tensor]) -> list[Tensor]:
        by_stride = dict(zip(self.reductions, features))  # the last map at each stride
        switches: list[Tensor] = []
        source, stride = by_stride.get(1, x), 1
        while stride < max(self.reductions):
            level = by_stride.get(2 * stride)
            indices = switches_2x2(source)
            if level is not None:
                # A layer that rounds down (a 4x4 / stride-4 patchify on 70 pixels gives 17) leaves a
                # smaller map than the 2x2 ceil-mode pool: the cells it dropped have no switches.
                indices = indices[..., : level.shape[-2], : level.shape[-1]]
                source = level
            else:
                source = F.max_pool2d(source, 2, 2, ceil_mode=True)
            switches.append(indices)
            stride *= 2
        return switches


def _find_first_conv(encoder: nn.Module, model: nn.Module) -> str:
    """State-dict path (within ``encoder``) of the convolution that sees the image, or "" if unknown.

    timm names it in ``pretrained_cfg["first_conv"]`` for the full model; a ``features_only``
    wrapper may have flattened the first dot of the path to an underscore (``stem.0`` -> ``stem_0``).
    """
    names = getattr(model, "pretrained_cfg", {}).get("first_conv")
    name = names[0] if isinstance(names, (list, tuple)) and names else names
    if not isinstance(name, str):
        return ""
    head, _, rest = name.partition(".")
    candidates = [name, f"{head}_{rest}" if rest else name, f"model.{name}"]
    for candidate in candidates:
        try:
            module = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(getattr(module, "weight", None), Tensor) and module.weight.dim() == 4:
            return f"model.{candidate}"
    return ""


def _is_file(weights: str | os.PathLike[str]) -> bool:
    text = os.fspath(weights)
    return isinstance(weights, os.PathLike) or text.endswith(_WEIGHT_SUFFIXES) or os.sep in text or os.path.exists(text)


def _pretrained_tags(timm: Any, arch: str) -> list[str]:
    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]


def _weights_source(timm: Any, arch: str, tag: str | None, weights: object) -> tuple[str, dict[str, Any] | None]:
    """``(timm model name with tag, pretrained_cfg_overlay)`` for ``weights`` (not None)."""
    if weights is True or weights == "imagenet":
        if not tag and not _pretrained_tags(timm, arch):
            raise SegkitError(f"timm publishes no pretrained weights for {arch}; use encoder_weights=None or a local .pth/.safetensors file.")
        return (f"{arch}.{tag}" if tag else arch), None
    if isinstance(weights, (str, os.PathLike)) and _is_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SegkitError(f"encoder weights file {os.fspath(weights)!r} does not exist; pass an existing .pth/.safetensors state dict of timm's {arch}, or a pretrained tag.")
        return (f"{arch}.{tag}" if tag else arch), {"file": str(path.resolve())}
    if not isinstance(weights, str) or not weights:
        raise SegkitError(f"encoder_weights for tu-{arch} must be None, 'imagenet', a timm pretrained tag or a file path; got {weights!r}.")
    prefix, dot, wanted = weights.rpartition(".")
    if dot and prefix != arch:
        raise SegkitError(f"encoder_weights {weights!r} are timm's {prefix} weights, but the encoder is tu-{arch}; use a tag of {arch} (segkit list --timm '{arch}' shows the model).")
    if tag and wanted != tag:
        raise SegkitError(f"the encoder name tu-{arch}.{tag} already names the pretrained tag {tag!r} but encoder_weights asks for {wanted!r}; give the tag in one place.")
    tags = _pretrained_tags(timm, arch)
    if wanted not in tags:
        known = ", ".join(tags) if tags else "none: timm publishes no weights for it"
        raise SegkitError(f"timm has no pretrained tag {wanted!r} for {arch}; its tags: {known}.")
    return f"{arch}.{wanted}", None


def _unavailable(timm: Any, model_name: str) -> str:
    """The fix for pretrained weights that are neither cached nor downloadable (one sentence's end)."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    try:
        from huggingface_hub import constants  # its settings, as read from HF_HOME / HF_HUB_OFFLINE

        cache, offline = constants.HF_HUB_CACHE, bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:
        cache, offline = "$HF_HOME/hub", False
    offline_note = " (HF_HUB_OFFLINE is set)" if offline else ""
    if hub_id:
        where = f"the Hugging Face cache {cache} (repository {hub_id})"
    else:
        where = f"torch's hub cache {Path(torch.hub.get_dir()) / 'checkpoints'} ({getattr(cfg, 'url', '')})"
    return (
        f"timm weights {model_name} are not in {where} and could not be downloaded{offline_note}: "
        "run once online to fetch them, place the files in that cache, or pass a local .pth/.safetensors file as weights."
    )


def _is_download_error(err: BaseException) -> bool:
    if isinstance(err, (OSError, ConnectionError)):
        return True  # FileNotFoundError, URLError, LocalEntryNotFoundError, OfflineModeIsEnabled, ...
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:
        return False
    return isinstance(err, (hub_errors.EntryNotFoundError, hub_errors.HfHubHTTPError))


def create_timm_encoder(
    name: str,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | bool | None = None,
    **kwargs: Any,
) -> TimmEncoder:
    """Build the timm backbone ``name`` (``"tu-resnet18"``, ``"tu-convnext_atto.d2_in1k"``, ...).

    ``weights``: see the module docstring. Extra keyword arguments go to ``timm.create_model``
    (e.g. ``drop_path_rate=0.1``, ``out_indices=(1, 2, 3)``, ``output_stride=16``).
    """
    timm = import_timm()
    model_name = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
    arch, _, tag = model_name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise SegkitError(f"timm has no model {arch!r} (encoder {name!r}); {hint}{_LIST} lists the names.")
    if tag and tag not in _pretrained_tags(timm, arch):
        raise SegkitError(f"timm has no pretrained tag {tag!r} for {arch} (encoder {name!r}); its tags: {', '.join(_pretrained_tags(timm, arch)) or 'none'}.")
    pretrained = weights is not None and weights is not False
    overlay: dict[str, Any] | None = None
    if pretrained:
        model_name, overlay = _weights_source(timm, arch, tag or None, weights)
    options: dict[str, Any] = {"features_only": True, "in_chans": in_channels, "pretrained": pretrained, **kwargs}
    if overlay is not None:
        options["pretrained_cfg_overlay"] = overlay
    try:
        if overlay is None:
            model = timm.create_model(model_name, **options)
        else:
            model = _create_checking_file(timm, model_name, options, overlay["file"], arch)
    except SegkitError:
        raise
    except Exception as err:  # timm reports every failure its own way: name the model and the fix
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}"
        if pretrained and overlay is not None:
            raise SegkitError(f"timm could not load {overlay['file']} into {arch} ({detail}); pass a state dict of timm's {arch} (.pth or .safetensors).") from err
        if pretrained and _is_download_error(err):
            raise SegkitError(_unavailable(timm, model_name)) from err
        if pretrained:
            raise SegkitError(f"timm could not load the {model_name} weights ({detail}); check the tag with timm.list_pretrained('{arch}.*').") from err
        if kwargs.get("output_stride") not in (None, 32):
            raise SegkitError(f"timm could not build {arch} with output_stride={kwargs['output_stride']} ({detail}): it cannot "
                              "trade stride for dilation; use output_stride=32 (a DeepLab model option) or another model.") from err
        raise SegkitError(f"timm could not build {arch} with features_only=True ({detail}); choose another model ({_LIST} lists them).") from err
    return TimmEncoder(model, model_name, in_channels)


def _create_checking_file(timm: Any, model_name: str, options: dict[str, Any], file: str, arch: str) -> nn.Module:
    """``timm.create_model`` with a local weights file, refusing a file that leaves weights unloaded.

    timm loads ``features_only`` weights non-strictly (the classifier head is not kept), so a file
    of another model loads what happens to match and leaves the rest random, silently. The model is
    built twice from one seed, with and without the file: a weight tensor equal to its random
    initialisation was not in the file. A file with tensors the model lacks (a deeper sibling:
    timm's resnet34 for resnet18) is another model's too: timm only logs its "Unexpected keys".
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    unexpected = _UnexpectedKeys()
    builder_log = logging.getLogger("timm.models._builder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        builder_log.addHandler(unexpected)
        propagate, builder_log.propagate = builder_log.propagate, False  # judged below, not printed
        try:
            model = timm.create_model(model_name, **options)
        finally:
            builder_log.removeHandler(unexpected)
            builder_log.propagate = propagate
        torch.manual_seed(seed)
        fresh = timm.create_model(model_name, **{**{k: v for k, v in options.items() if k != "pretrained_cfg_overlay"}, "pretrained": False})
    initial = fresh.state_dict()
    weights = {k: v for k, v in model.state_dict().items() if v.dim() >= 2}
    missing = [k for k, v in weights.items() if k in initial and torch.equal(v, initial[k])]
    if missing:
        raise SegkitError(f"{file} holds no values for {len(missing)} of the {len(weights)} weight tensors of timm's {arch} "
                          f"(e.g. {missing[0]}), which would stay random; pass a state dict of timm's {arch} (.pth or .safetensors).")
    if unexpected.keys:
        # The layers features_only drops (EfficientNet's conv_head and bn2, a classifier) are timm's
        # own model's: only tensors the whole model lacks make the file another model's.
        whole = _whole_model_keys(timm, model_name, options)
        foreign = [key for key in unexpected.keys.split(", ") if key not in whole]
        if foreign:
            raise SegkitError(f"{file} holds tensors that timm's {arch} does not have ({', '.join(foreign)[:120]}...): it is "
                              f"another model's state dict; pass one of timm's {arch} (.pth or .safetensors).")
    return model


def _whole_model_keys(timm: Any, model_name: str, options: dict[str, Any]) -> set[str]:
    """The state-dict keys of timm's whole ``model_name`` (classifier included) with ``options``'
    architecture settings, built on the meta device (no memory, no weights)."""
    kept = {k: v for k, v in options.items() if k not in ("features_only", "out_indices", "pretrained", "pretrained_cfg_overlay")}
    with torch.device("meta"):
        return set(timm.create_model(model_name, pretrained=False, **kept).state_dict())


class _UnexpectedKeys(logging.Handler):
    """Catches timm's "Unexpected keys (...)" log line while it loads a weights file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Unexpected keys"):
            self.keys = message[message.find("(") + 1:].split(")")[0]


def timm_mean_std(name: str, weights: object, in_channels: int) -> tuple[list[float], list[float]] | None:
    """The mean/std timm's pretrained weights ``weights`` of ``name`` were trained with (``in_channels``
    values: their channel average for other counts than 3), or None for a file or no weights."""
    if weights is None or weights is False or (isinstance(weights, (str, os.PathLike)) and _is_file(weights)):
        return None
    timm = import_timm()
    arch, _, tag = name[len(TIMM_PREFIX):].partition(".")
    model_name, _ = _weights_source(timm, arch, tag or None, weights)
    cfg = timm.models.get_pretrained_cfg(model_name)
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if not mean or not std:
        return None
    if in_channels != len(mean):
        mean, std = [sum(mean) / len(mean)] * in_channels, [sum(std) / len(std)] * in_channels
    return [float(m) for m in mean], [float(s) for s in std]


def list_timm_encoders(pattern: str = "", pretrained: bool = False) -> list[str]:
    """timm model names matching ``pattern`` (fnmatch wildcards, e.g. ``"convnext*"``), sorted.

    Each is usable as ``tu-NAME``: every model timm 1.0.31 lists builds with ``features_only``
    (all 1371 were checked); with an older timm a model that cannot is a ``SegkitError`` when
    built. ``pretrained=True``: only models with published weights, as ``NAME.TAG``.
    """
    return list(import_timm().list_models(pattern or "", pretrained=pretrained))

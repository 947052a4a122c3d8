"""Encoder backbones: VGG, ResNet (options A/B/C, plain, CIFAR), GoogLeNet, Inception-v3, LeNet-5, AlexNet.

``create_encoder(name, in_channels=3, weights=None)`` builds the feature extractor of a backbone
(see :class:`segkit.encoders.base.Encoder` for the contract). The classifiers of the same names are
built by :func:`segkit.create_classifier`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from segkit.encoders import classic, googlenet, inception, resnet, vgg  # noqa: F401  (each registers its names)
from segkit.encoders.base import CLASSIFIERS, ENCODERS, Encoder, register_classifier, register_encoder
from segkit.encoders.resnet import OUTPUT_STRIDES, check_output_stride
from segkit.encoders.timm_encoder import create_timm_encoder  # imports timm only when called
from segkit.encoders.weights import adapt_first_conv, load_weights, read_checkpoint, resolve_weights
from segkit.errors import SegkitError, positive_int

__all__ = [
    "Encoder",
    "OUTPUT_STRIDES",
    "adapt_first_conv",
    "create_encoder",
    "list_classifiers",
    "list_encoders",
    "load_weights",
    "read_checkpoint",
    "resolve_weights",
    "register_classifier",
    "register_encoder",
]


def list_encoders() -> list[str]:
    """Names ``create_encoder`` accepts, sorted."""
    return sorted(ENCODERS)


def list_classifiers() -> list[str]:
    """Names ``create_classifier`` accepts, sorted."""
    return sorted(CLASSIFIERS)


def lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    """``registry[name]``, or a SegkitError that suggests the closest names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(sorted(registry))}."
    raise SegkitError(f"unknown {what} {name!r}; {hint}")


def check_in_channels(in_channels: int) -> int:
    """``in_channels`` as a plain int, or a SegkitError."""
    return positive_int(in_channels, f"in_channels must be a positive integer (the image's channel count); got {in_channels!r}.")


def build_with_options(factory: Any, what: str, **options: Any) -> Any:
    """``factory(**options)``, with a keyword it does not take named in a SegkitError (not a TypeError)."""
    try:
        return factory(**options)
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if match is None:
            raise
        raise SegkitError(f"{what} has no option {match.group(1)!r}; see its factory's keywords (e.g. zero_init_residual for "
                          "the ResNets), or leave it out.") from None


def check_transform_input(model: nn.Module, transform_input: object, name: str) -> None:
    """SegkitError unless ``transform_input`` is None, or True/False on a model that has the switch
    (GoogLeNet, Inception-v3): a string such as ``"false"`` would read as on, and on other models the
    option would be dropped without a word."""
    if transform_input is None:
        return
    if not isinstance(transform_input, bool):
        raise SegkitError(f"transform_input must be True or False (or left out for the default); got {transform_input!r}.")
    if not hasattr(model, "transform_input"):
        raise SegkitError(f"{name} has no transform_input (only googlenet and inception_v3, whose TensorFlow-ported "
                          "weights expect inputs in [-1, 1], have it); leave it out.")


def finish_pretrained(model: nn.Module, weights: str | os.PathLike[str] | None, transform_input: bool | None,
                      meta: Mapping[str, Any] | None = None) -> None:
    """After loading ``weights``: turn on the input transform the Inception checkpoints expect.

    torchvision's GoogLeNet and Inception-v3 weights were ported from TensorFlow and expect inputs
    scaled to [-1, 1]; torchvision enables ``transform_input`` whenever it loads them so that
    ImageNet-normalised images work. segkit does the same for 3-channel models unless told otherwise.
    A segkit checkpoint (``meta``: its entries beside the weights) gives back the model it saved:
    the ``transform_input`` it trained with (a net trained from scratch had it off), or for files
    older than that entry, on if its run started from weights.
    """
    if hasattr(model, "transform_input"):
        if transform_input is None:
            transform_input = weights is not None and model.in_channels == 3
            if meta and "transform_input" in meta:
                transform_input = bool(meta["transform_input"])
            elif meta and isinstance(meta.get("config"), Mapping):
                saved = meta["config"].get("model") or {}
                transform_input = transform_input and any(saved.get(k) is not None for k in ("weights", "encoder_weights"))
        model.transform_input = bool(transform_input)


def create_encoder(
    name: str,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build encoder ``name`` for ``in_channels``-channel images, optionally from a checkpoint file.

    ``weights`` is the path of a torchvision-format checkpoint (a classifier's: its head is dropped),
    or a published weights name, ``"imagenet"`` or a torchvision variant such as ``"imagenet1k_v2"``
    (fetched into torch's hub cache on first use: :func:`segkit.encoders.weights.resolve_weights`).
    Extra keyword arguments go to the family's constructor (e.g. ``zero_init_residual=True``).
    ``"tu-NAME"`` builds timm's NAME instead (:mod:`segkit.encoders.timm_encoder`: timm's own weights).

    ``output_stride`` (32, 16 or 8): the deepest stride. Below 32 the last stages dilate their
    convolutions instead of downsampling (:mod:`segkit.encoders.resnet`; timm's own
    ``output_stride`` for ``tu-`` names), and ``reductions`` says the true strides, e.g.
    ``(2, 4, 8, 16, 16)``. The ResNets (every depth and shortcut option, the plain nets) and timm
    encoders take it; the others are a ``SegkitError``.
    """
    output_stride = check_output_stride(kwargs.pop("output_stride", 32))
    if isinstance(name, str) and name.startswith("tu-"):
        in_channels = check_in_channels(in_channels)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        return create_timm_encoder(name, in_channels=in_channels, weights=weights, **kwargs)
    factory = lookup(ENCODERS, name, "encoder")
    in_channels = check_in_channels(in_channels)
    if output_stride != 32:
        if output_stride not in getattr(factory, "output_strides", ()):
            raise SegkitError(
                f"encoder {name!r} cannot trade stride for dilation (output_stride={output_stride}); use a ResNet "
                f"(resnet18/34/50/101/152, their _a/_c variants, plain18/34) or a timm encoder (tu-NAME), or output_stride=32."
            )
        kwargs["output_stride"] = output_stride
    transform_input = kwargs.pop("transform_input", None)
    encoder = build_with_options(factory, f"encoder {name!r}", in_channels=in_channels, **kwargs)
    check_transform_input(encoder, transform_input, f"encoder {name!r}")
    weights = resolve_weights(name, weights)
    if weights is not None:
        load_weights(encoder, weights, first_conv=encoder.first_conv, ignore_prefixes=encoder.checkpoint_ignore)
    elif in_channels != 3:
        reset_first_conv(encoder)
    finish_pretrained(encoder, weights, transform_input)
    return encoder


def reset_first_conv(encoder: Encoder) -> None:
    """PyTorch's default initialisation for the image convolution of a from-scratch, non-RGB encoder.

    torchvision's He (fan_out) init gives a 7x7 stem the same small weights (std 0.025) whatever the
    number of input channels; for RGB that is the recipe ImageNet training was tuned with. smp
    re-initialises the first convolution of a non-RGB encoder without weights with PyTorch's default
    (``U(+-1/sqrt(fan_in))``: std 0.082 for a grey 7x7 stem), and segkit does the same: with Adam
    each step moves a weight by about the learning rate, so the 3x smaller weights of a grey stem
    changed about 3x faster relative to their size; on the quickstart data one seed in three then
    never learnt to tell the two cell types apart (mIoU 0.50 against 0.93-0.94;
    ``scripts/benchmark.py accuracy``).
    """
    encoder.get_submodule(encoder.first_conv).reset_parameters()

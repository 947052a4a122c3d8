"""The model registry: ``create_classifier`` (and, with the decoders, ``create_model``)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from segkit.encoders import CLASSIFIERS, check_in_channels, finish_pretrained, load_weights, lookup
from segkit.errors import SegkitError

__all__ = ["create_classifier"]


def create_classifier(
    name: str,
    num_classes: int | None = None,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build image classifier ``name``: ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``.

    ``num_classes`` defaults to the dataset the architecture was made for: 1000 (ImageNet) for
    the ImageNet nets, 10 for the CIFAR ResNets and LeNet-5.

    With auxiliary heads (GoogLeNet, Inception-v3) a model in training mode returns
    ``(logits, aux_logits...)``; in eval mode only the main logits. ``weights`` is the path of a
    torchvision-format checkpoint; a head of another ``num_classes`` keeps its fresh
    initialisation (logged), a 3-channel first convolution adapts to ``in_channels``.
    """
    factory = lookup(CLASSIFIERS, name, "classifier")
    check_in_channels(in_channels)
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise SegkitError(f"num_classes must be a positive integer; got {num_classes!r}.")
        kwargs["num_classes"] = num_classes
    transform_input = kwargs.pop("transform_input", None)
    model = factory(in_channels=in_channels, **kwargs)
    if weights is not None:
        load_weights(model, weights, first_conv=model.first_conv, head_prefixes=model.head_prefixes)
    finish_pretrained(model, weights, transform_input)
    return model

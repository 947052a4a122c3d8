"""The encoder contract shared by every backbone, and the name registries.

An :class:`Encoder` maps an image batch ``(N, C, H, W)`` to a list of feature maps from shallow to
deep, one per stage, in the manner of timm's ``features_only`` models and smp's encoders:

* ``out_channels[i]`` is the channel count of feature ``i`` and ``reductions[i]`` its stride with
  respect to the input (``(2, 4, 8, 16, 32)`` for the ImageNet backbones);
* for an input whose sides are multiples of 32, feature ``i`` is exactly ``H / reductions[i]`` by
  ``W / reductions[i]``. Other sizes are accepted: each layer then rounds as it always does (max-pools
  of VGG round down, strided convolutions and ceil-mode pools round up), and the decoders pad or
  resize to match. Inputs smaller than ``min_input_size`` raise a ``SegkitError``.

Max-location unpooling (SegNet) needs the *switches* of the pooling that produced each feature map.
``forward_with_switches`` returns them beside the features: ``switches[i]`` holds the flat argmax
positions (as ``F.max_pool2d(..., return_indices=True)`` gives them) of the pooling that took the
previous level (the input image for ``i = 0``) down to level ``i``, so
``F.max_unpool2d(values, switches[i], 2, output_size=previous_level_size)`` puts values back where
the maxima were. Where a stage downsamples by a strided convolution rather than a max-pool (ResNet,
the stems of the Inception nets), the encoder records the switches of a 2x2 max over that stage's
input instead: the positions the decoder gets are those of the strongest activation in each 2x2
cell, which is the information max-unpooling is meant to carry, and the mode then works with every
encoder. Switch recording costs one extra pooling per stage and happens only when asked for.

Overlapping pools (the 3x3 / stride-2 max-pools of the ResNet stem, GoogLeNet and Inception-v3)
can find one input position as the maximum of two neighbouring windows, so a switch tensor may name
a position twice in an ``(n, c)`` plane. The switches stay exactly what ``F.max_pool2d`` returns
(each still locates its own window's maximum); :func:`segkit.decoders.max_unpool` removes the
repeats before scattering, keeping the first window in raster order
(:func:`segkit.decoders.upsample.unique_switches`), because a scatter with two writes to one
element keeps an arbitrary one on CUDA and made max-unpooling models nondeterministic.
``F.max_unpool2d`` on these switches is still valid but keeps an unspecified value where they repeat.

Stated in strides, ``switches[k]`` belongs to the x2 step from stride ``2**k`` to ``2**(k + 1)``;
for levels at strides 2, 4, ..., 32 that is one per level as above. Encoders whose levels skip a
stride (timm's ConvNeXt starts at 4) give one per x2 step all the same, so that the decoders can
unpool every step (:mod:`segkit.decoders.levels`, :mod:`segkit.encoders.timm_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from segkit.errors import SegkitError

__all__ = [
    "Classifier",
    "Encoder",
    "CLASSIFIERS",
    "ENCODERS",
    "register_classifier",
    "kaiming_init",
    "register_encoder",
    "switches_2x2",
]


class Encoder(nn.Module):
    """Base class of every segkit encoder (backbone without its classification head).

    Subclasses set ``out_channels`` and ``reductions`` and implement :meth:`forward_stages`.
    Class attributes used when loading torchvision checkpoint files:

    * ``first_conv``: state-dict prefix of the convolution that sees the image (adapted when
      ``in_channels`` differs from the checkpoint's);
    * ``checkpoint_ignore``: state-dict prefixes of the classifier's head, present in a classifier
      checkpoint but absent from the encoder, dropped silently on load.
    """

    out_channels: tuple[int, ...] = ()
    reductions: tuple[int, ...] = ()
    min_input_size: int = 32
    first_conv: str = ""
    checkpoint_ignore: tuple[str, ...] = ()

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        """Run every stage. Returns ``(features, switches)``; ``switches`` is empty unless asked for."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(N, C, H, W)`` -> list of ``(N, out_channels[i], H / reductions[i], W / reductions[i])``."""
        check_input(self, x, self.min_input_size)
        return self.forward_stages(x, record_switches=False)[0]

    def forward_with_switches(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Features as :meth:`forward`, plus one int64 switch tensor per feature map (see module doc)."""
        check_input(self, x, self.min_input_size)
        return self.forward_stages(x, record_switches=True)

    @property
    def in_channels(self) -> int:
        """Channels of the image the encoder takes (read from its first convolution)."""
        return _conv_in_channels(self, self.first_conv)


class Classifier(nn.Module):
    """Base class of every segkit image classifier; state-dict keys are torchvision's.

    ``forward`` maps ``(N, C, H, W)`` to logits ``(N, num_classes)`` (plus auxiliary logits in
    training mode for nets that have auxiliary heads). Class attributes used by checkpoint loading:
    ``first_conv`` as for :class:`Encoder`; ``head_prefixes``: state-dict prefixes of the layers
    whose size follows ``num_classes`` (kept freshly initialised when the checkpoint's differ).
    """

    first_conv: str = ""
    head_prefixes: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        """Channels of the image the classifier takes (read from its first convolution)."""
        return _conv_in_channels(self, self.first_conv)


def check_input(model: Encoder | Classifier, x: Tensor, min_size: int, exact: bool = False) -> None:
    """Raise a ``SegkitError`` for a batch ``model`` (an encoder or classifier) cannot take: not 4-D,
    wrong channels, too small.

    ``exact``: the net takes only ``min_size`` x ``min_size`` images (LeNet-5).
    """
    name = type(model).__name__
    if x.dim() != 4:
        raise SegkitError(f"{name} takes a batch (N, C, H, W); got a tensor of shape {tuple(x.shape)}.")
    if x.shape[1] != model.in_channels:
        raise SegkitError(
            f"{name} was built for {model.in_channels} input channels but the batch has {x.shape[1]}; "
            f"create it with in_channels={x.shape[1]}."
        )
    h, w = x.shape[-2:]
    if exact and (h, w) != (min_size, min_size):
        raise SegkitError(f"{name} takes {min_size}x{min_size} images; got {h}x{w}: resize or pad the input.")
    if min(h, w) < min_size:
        raise SegkitError(f"{name} needs images of at least {min_size}x{min_size} pixels; got {h}x{w}: resize or pad the input.")


def _conv_in_channels(module: nn.Module, name: str) -> int:
    return int(module.get_submodule(name).weight.shape[1])


def switches_2x2(x: Tensor) -> Tensor:
    """Switches of a 2x2 / stride-2 max over ``x`` ``(N, C, H, W)`` -> int64 ``(N, C, ceil(H/2), ceil(W/2))``.

    Ceil mode, so the switch map has the size a 3x3 / stride-2 / padding-1 convolution gives.
    """
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, return_indices=True)[1]


# name -> factory. Encoder factories take (in_channels=3, **kwargs) and return an Encoder;
# classifier factories take (num_classes=1000, in_channels=3, **kwargs) and return an nn.Module
# whose state-dict keys are torchvision's. Each family module registers its names on import.
ENCODERS: dict[str, Callable[..., Encoder]] = {}
CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {}

F_ = TypeVar("F_", bound=Callable[..., nn.Module])


def register_encoder(name: str) -> Callable[[F_], F_]:
    """Decorator: make ``create_encoder(name)`` call the decorated factory."""

    def wrap(fn: F_) -> F_:
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        ENCODERS[name] = fn
        return fn

    return wrap


def register_classifier(name: str) -> Callable[[F_], F_]:
    """Decorator: make ``create_classifier(name)`` call the decorated factory."""

    def wrap(fn: F_) -> F_:
        if name in CLASSIFIERS:
            raise ValueError(f"classifier {name!r} registered twice")
        CLASSIFIERS[name] = fn
        return fn

    return wrap


def kaiming_init(module: nn.Module) -> None:
    """He initialisation (fan-out, ReLU) for convolutions, unit/zero for norms, N(0, 0.01) for linears.

    The scheme of He et al. 2015 as torchvision's ResNet and VGG use it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


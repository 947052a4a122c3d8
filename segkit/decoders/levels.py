"""Where an encoder's levels sit on the ladder of x2 steps the decoders climb back down.

A decoder upsamples by 2 at a time, from the encoder's deepest stride ``2**K`` to the image. Step
``k`` (``k = 0 .. K-1``) joins stride ``2**k`` and stride ``2**(k + 1)``; an encoder level may or
may not sit at each stride:

* the classic backbones have one level per stride ``2, 4, 8, 16, 32``, so step ``k`` ends at level
  ``k - 1`` and the last step (to the image) has no skip;
* ConvNeXt- and Swin-style backbones start at stride 4: the steps to strides 2 and 1 have no level
  (smp's ``Unet`` upsamples them without a skip, and so does segkit's);
* VGG-style timm backbones also return a stride-1 map, which becomes the last step's skip;
* a backbone whose deepest level is at stride 16 or 64 has 4 or 6 steps.

Switches (max-location unpooling) are indexed by step: ``switches[k]`` holds the positions of the
2x2 pooling from stride ``2**k`` to ``2**(k + 1)`` (for the classic backbones that is one per level,
as :mod:`segkit.encoders.base` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

from torch import Tensor

from segkit.errors import SegkitError

__all__ = ["check_reductions", "default_reductions", "level_at_stride", "step_sizes"]


def default_reductions(levels: int) -> tuple[int, ...]:
    """The classic backbones' strides for ``levels`` feature maps: ``(2, 4, ..., 2**levels)``."""
    return tuple(2 ** (i + 1) for i in range(levels))


def check_reductions(reductions: Sequence[int], levels: int, decoder: str) -> int:
    """Number of x2 steps ``K`` (deepest stride ``2**K``) of an encoder with these ``reductions``.

    A ``SegkitError`` names ``decoder`` and why when the strides cannot be climbed one x2 step at a
    time: a count that differs from the feature maps', a stride that is no power of two, or strides
    that do not increase (e.g. a plain ViT's ``(16, 16, 16)``).
    """
    reductions = tuple(reductions)
    if len(reductions) != levels:
        raise SegkitError(f"the {decoder} decoder got {levels} encoder channel counts but {len(reductions)} reductions {reductions}; pass one reduction per feature map.")
    powers = all(isinstance(r, int) and r >= 1 and r & (r - 1) == 0 for r in reductions)
    increasing = all(a < b for a, b in zip(reductions, reductions[1:]))
    if not levels or not powers or not increasing or max(reductions) < 2:
        raise SegkitError(
            f"the {decoder} decoder climbs back one x2 step at a time and needs encoder features at increasing "
            f"power-of-two strides (e.g. 2, 4, 8, 16, 32); this encoder's are {reductions}: choose another encoder."
        )
    return max(reductions).bit_length() - 1


def level_at_stride(reductions: Sequence[int], steps: int) -> List[int]:
    """``[level index or -1 for k in 0 .. steps-1]``: the feature map at stride ``2**k``, if any."""
    index = {r: i for i, r in enumerate(reductions)}
    return [index.get(2**k, -1) for k in range(steps)]


def step_sizes(features: List[Tensor], level_at: List[int], size: List[int]) -> List[List[int]]:
    """``[H, W]`` at strides ``1, 2, ..., 2**(K-1)``: the image's ``size``, then each level's own size,
    or for a stride without a level half the one above it (rounded up, as strided layers round).
    """
    sizes: List[List[int]] = [size]
    for k in range(1, len(level_at)):
        level = level_at[k]
        if level >= 0:
            sizes.append([features[level].shape[-2], features[level].shape[-1]])
        else:
            above = sizes[k - 1]
            sizes.append([(above[0] + 1) // 2, (above[1] + 1) // 2])
    return sizes

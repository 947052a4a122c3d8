"""FCN-32s / 16s / 8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", 2015),
and the same skip architecture carried on to strides 4 and 2 (FCN-4s / 2s).

The backbone's classifier turned fully convolutional, then class scores upsampled back to the image:

* **Head.** For VGG the classifier's fc6/fc7 become a 7x7 and a 1x1 convolution of ``fc_channels``
  (4096) channels, each followed by ReLU and dropout, as in the paper; ``create_model`` loads them
  from the VGG checkpoint's ``classifier.0`` / ``classifier.3`` (reshaped) when ``encoder_weights``
  is given. fc6 is padded ("same") instead of the paper's 100-pixel padding of conv1 and crops:
  segkit pads the image to a multiple of 32 instead, so every map is aligned without offsets.
  ResNet, GoogLeNet and Inception-v3 end in global pooling and one fully connected layer; turned
  convolutional, that layer *is* the 1x1 class-score convolution (what Long et al. did with
  GoogLeNet), so their head is empty (``fc_channels=None``) unless asked for.
* **Scores.** 1x1 convolutions to ``num_classes``: ``score_fr`` on the head, and for the skip
  levels ``score_pool4`` (stride 16) and ``score_pool3`` (stride 8). All zero-initialised as in the
  paper, so a fresh net predicts 0 everywhere and each added skip starts as a no-op.
* **Upsampling and fusion.** ``fcn32s``: scores upsampled 32x at once. ``fcn16s``: 2x, fuse the
  stride-16 scores, 16x. ``fcn8s``: 2x, fuse stride 16, 2x, fuse stride 8, 8x. The paper stops
  at 8s (on PASCAL VOC's large objects the finer skips gained little); ``fcn4s`` and ``fcn2s``
  continue the same way with 1x1 zero-initialised scores of the stride-4 and stride-2 features
  (``score_pool2``, ``score_pool1``), then 4x / 2x. On small objects the stride-8 scores are the
  limit: on the HeLa nuclei of ``scripts/benchmark.py accuracy`` fcn8s reaches 0.88 mIoU, fcn4s
  0.92 and fcn2s 0.92, for the same 11.17 M parameters on ResNet-18. Fusion
  ``"add"`` (the paper) sums the two score maps; ``"concat"`` concatenates them and applies a 1x1
  convolution initialised to ``[I, I]`` (the sum), so both start as the paper's net.

Upsampling modes: ``"transposed"`` is the paper's learnable deconvolution initialised to bilinear
interpolation (kernel ``2s``, stride ``s``); ``"bilinear"`` is that interpolation fixed, not
learnt (as the paper's last, stride-8 upsampling of FCN-8s), resized to the target size;
``"nearest"`` and ``"bed_of_nails"`` upsample the score maps by ``s`` at once, without weights; ``"max_unpool"`` undoes the encoder's poolings one
level at a time with its switches (each step projects to the switches' channel count by 1x1
convolution, or keeps its channels and reuses the switches cyclically where they are narrower than
the class scores, as the image's are; a last 1x1 convolution maps back to the classes). Bed-of-nails and unpooling leave
most pixels at zero (or at the projection's bias): FCN has no convolutions after its upsampling to
fill them, which is the point of comparing the modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor, nn

from segkit.decoders.init import init_conv_bn_relu, init_projection
from segkit.decoders.levels import check_reductions, default_reductions, level_at_stride, step_sizes
from segkit.decoders.upsample import MODES, Upsample, check_choice
from segkit.errors import SegkitError

__all__ = ["FCNDecoder", "FCN_STRIDES", "SKIP_FUSIONS"]

FCN_STRIDES = (32, 16, 8, 4, 2)
SKIP_FUSIONS = ("add", "concat")


def _and(values: Sequence[int]) -> str:
    """``[8, 16, 32]`` -> ``"8, 16 and 32"``."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ScoreUpsample(nn.Module):
    """Upsample class scores from stride ``2 ** source`` to stride ``2 ** target`` (``0`` = the image).

    ``source`` and ``target`` count x2 steps (see :mod:`segkit.decoders.levels`); max-unpooling
    takes one step at a time with ``switches[k]`` for the step from stride ``2 ** k`` up. See the
    module docstring for what each mode does.
    """

    def __init__(self, mode: str, num_classes: int, source: int, target: int, switch_channels: Sequence[int] | None) -> None:
        super().__init__()
        self.target = target
        self.unpool = mode == "max_unpool"
        steps: list[nn.Module] = []
        self.levels: List[int] = []
        if self.unpool:
            if switch_channels is None:
                raise SegkitError("the max_unpool FCN decoder needs the channel count of each of the encoder's switch tensors.")
            channels = num_classes
            for step in range(source - 1, target - 1, -1):  # undo the pooling of step 2**step -> 2**(step + 1)
                # Switches narrower than the class scores (the image's 1-3 channels at the last
                # step) would squeeze the scores through them: keep the channels, reuse the switches.
                reuse = switch_channels[step] < num_classes
                width = channels if reuse else switch_channels[step]
                steps.append(Upsample(mode, channels, width, reuse_switches=reuse))
                self.levels.append(step)
                channels = width
            self.classes = nn.Conv2d(channels, num_classes, 1)
            init_projection(self.classes)
        else:
            scale = 2 ** (source - target)
            steps.append(Upsample(mode, num_classes, num_classes, scale, bilinear_init=mode == "transposed"))
            self.levels.append(source)
            self.classes = nn.Identity()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor, switches: Optional[List[Tensor]], sizes: List[List[int]]) -> Tensor:
        """``sizes[k]`` is the ``[H, W]`` at stride ``2 ** k`` (``sizes[0]`` the image's)."""
        for i, step in enumerate(self.steps):
            level = self.levels[i]
            indices: Optional[Tensor] = None
            if switches is not None and self.unpool:
                indices = switches[level]
            x = step(x, indices, sizes[level if self.unpool else self.target])
        return self.classes(x)


class SkipFusion(nn.Module):
    """Upsample scores one x2 step (stride ``2 ** (step + 1) -> 2 ** step``) and fuse the scores of
    encoder level ``level``, the feature map at stride ``2 ** step``."""

    def __init__(
        self, mode: str, num_classes: int, level: int, step: int, skip_channels: int, fusion: str, switch_channels: Sequence[int] | None
    ) -> None:
        super().__init__()
        self.level = level
        self.up = ScoreUpsample(mode, num_classes, step + 1, step, switch_channels)
        self.score = _zero_conv(skip_channels, num_classes)
        self.concat = fusion == "concat"
        self.fuse: nn.Module = nn.Identity()
        if self.concat:
            self.fuse = nn.Conv2d(2 * num_classes, num_classes, 1)
            with torch.no_grad():
                eye = torch.eye(num_classes)[:, :, None, None]
                self.fuse.weight.copy_(torch.cat([eye, eye], dim=1))
                self.fuse.bias.zero_()

    def forward(self, x: Tensor, features: List[Tensor], switches: Optional[List[Tensor]], sizes: List[List[int]]) -> Tensor:
        x = self.up(x, switches, sizes)
        skip = self.score(features[self.level])
        if self.concat:
            return self.fuse(torch.cat([x, skip], dim=1))
        return x + skip


class FCNDecoder(nn.Module):
    """FCN-``stride``s decoder: encoder features -> class logits ``(N, num_classes, H, W)``.

    Args:
        encoder_channels: the encoder's ``out_channels`` (e.g. five levels, strides 2..32).
        num_classes: output channels.
        stride: 32, 16, 8, 4 or 2 (fcn32s ... fcn2s).
        upsampling: one of ``MODES``.
        skip_fusion: ``"add"`` (the paper) or ``"concat"``.
        fc_channels: width of the VGG-style fc6 (7x7) / fc7 (1x1) head, or None for no head.
        dropout: dropout probability after fc6 and fc7.
        switch_channels: the encoder's switch channel counts (``"max_unpool"`` only).
        reductions: the encoder's ``reductions`` (default ``(2, 4, ..., 2**levels)``). FCN-``N``s
            needs the deepest level at stride 32 and levels at every stride from ``N`` to 32.

    ``forward(features, switches=None, size=None)`` as :class:`segkit.decoders.UnetDecoder`.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        stride: int = 32,
        upsampling: str = "transposed",
        skip_fusion: str = "add",
        fc_channels: int | None = None,
        dropout: float = 0.5,
        switch_channels: Sequence[int] | None = None,
        reductions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice(upsampling, MODES, "upsampling mode")
        check_choice(skip_fusion, SKIP_FUSIONS, "skip_fusion")
        if stride not in FCN_STRIDES:
            raise SegkitError(f"FCN stride must be one of {', '.join(map(str, FCN_STRIDES))}; got {stride!r}.")
        if fc_channels is not None and (not isinstance(fc_channels, int) or isinstance(fc_channels, bool) or fc_channels < 1):
            raise SegkitError(f"fc_channels must be a positive integer or None; got {fc_channels!r}.")
        if not 0.0 <= dropout < 1.0:
            raise SegkitError(f"dropout must be in [0, 1); got {dropout!r}.")
        levels = len(encoder_channels)
        reductions = tuple(reductions) if reductions is not None else default_reductions(levels)
        steps = check_reductions(reductions, levels, f"FCN-{stride}s")
        needed = [s for s in FCN_STRIDES if s >= stride]
        if reductions[-1] != 32 or any(s not in reductions for s in needed):
            # the FCNs this encoder can feed: every stride from 32 down to theirs present
            fits = [f"fcn{s}s" for s in FCN_STRIDES if reductions[-1] == 32 and all(t in reductions for t in FCN_STRIDES if t >= s)]
            choice = f"choose {'/'.join(fits)} or another encoder" if fits else "choose an encoder whose deepest stride is 32"
            raise SegkitError(
                f"fcn{stride}s needs encoder features at strides {_and(sorted(needed))} (32 the deepest); "
                f"this encoder's are {reductions}: {choice}, or use unet."
            )
        if upsampling == "max_unpool" and (switch_channels is None or len(switch_channels) != steps):
            raise SegkitError(f"the max_unpool FCN decoder needs the channel count of each of the encoder's {steps} switch tensors.")
        self.level_at = level_at_stride(reductions, steps)
        self.first_reduction = reductions[0]
        self.upsampling = upsampling
        self.out_channels = num_classes
        self.head: nn.Module = nn.Identity()
        head_channels = encoder_channels[-1]
        if fc_channels is not None:
            self.head = nn.Sequential(
                nn.Conv2d(head_channels, fc_channels, 7, padding=3),  # fc6
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(fc_channels, fc_channels, 1),  # fc7
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
            for fc in (self.head[0], self.head[3]):  # until a VGG checkpoint fills them: He, as any conv before a ReLU
                init_conv_bn_relu(fc)
            head_channels = fc_channels
        self.score = _zero_conv(head_channels, num_classes)  # score_fr
        # The skips, deepest first: stride 16 (pool4) for 16s, then stride 8 (pool3) for 8s, and
        # on to 4 and 2 for 4s / 2s, as x2 steps.
        skip_steps = [s.bit_length() - 1 for s in FCN_STRIDES[1:] if s >= stride]
        self.fusions = nn.ModuleList(
            SkipFusion(upsampling, num_classes, self.level_at[k], k, encoder_channels[self.level_at[k]], skip_fusion, switch_channels)
            for k in skip_steps
        )
        last = skip_steps[-1] if skip_steps else steps
        self.upsample = ScoreUpsample(upsampling, num_classes, last, 0, switch_channels)

    def forward(self, features: List[Tensor], switches: Optional[List[Tensor]] = None, size: Optional[List[int]] = None) -> Tensor:
        if size is None:
            size = [self.first_reduction * features[0].shape[-2], self.first_reduction * features[0].shape[-1]]
        sizes = step_sizes(features, self.level_at, size)
        x = self.score(self.head(features[-1]))
        for fusion in self.fusions:
            x = fusion(x, features, switches, sizes)
        return self.upsample(x, switches, sizes)

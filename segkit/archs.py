"""The architectures of issue 14 in the model registry, and whole-model weights.

* ``deeplabv3``, ``deeplabv3plus`` (Chen et al. 2017 / 2018) on a dilated encoder
  (``output_stride`` 8 / 16 by default, as smp and the papers), ``fcn_head`` (torchvision's
  simplified FCN on a dilated ResNet), ``fpn`` (Lin et al. 2017 with Kirillov et al.'s semantic
  branch, as smp): decoders in :mod:`segkit.decoders.deeplab` and :mod:`segkit.decoders.fpn`.
* ``aux_head="fcn"`` (the DeepLab family): torchvision's auxiliary FCN head on the encoder's
  second-deepest level (layer3 of a ResNet); in training mode the model also returns its logits,
  resized bilinearly to the image, for the loss (``trainer.aux_weight``; torchvision's recipe
  uses 0.5): :class:`AuxLogitsModel`.
* ``create_model(..., weights=...)``: a torchvision whole-model file (``deeplabv3_resnet50_coco-cd0a2569.pth``,
  ``fcn_resnet50_coco-1167a1af.pth``, ...: keys converted by :func:`from_torchvision`), a name of
  torchvision's published weights (``"coco_with_voc_labels_v1"``, resolved by
  :func:`segkit.encoders.weights.resolve_model_weights`), or a segkit run checkpoint (``best.pt``).
"""

from __future__ import annotations

import logging
import os
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from segkit.decoders.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder, FCNHead, FCNHeadDecoder
from segkit.decoders.fpn import FPNDecoder
from segkit.decoders.upsample import bilinear_upsample
from segkit.encoders import Encoder, create_encoder, list_encoders
from segkit.encoders.resnet import check_output_stride
from segkit.encoders.weights import load_state, read_model_checkpoint, resolve_model_weights
from segkit.errors import SegkitError
from segkit.heads import ClassificationHead
from segkit.models import SegmentationModel, register_model

__all__ = ["AUX_HEADS", "AuxLogitsModel", "from_torchvision", "load_model_weights"]

logger = logging.getLogger("segkit")

AUX_HEADS = ("fcn",)
Weights = Union[str, "os.PathLike[str]", None]


class AuxLogitsModel(SegmentationModel):
    """A :class:`SegmentationModel` with torchvision's auxiliary FCN head (``aux_classifier``).

    The head reads the encoder's second-deepest level. In training mode ``forward`` returns
    ``(logits, aux_logits)`` (``(logits, class_logits, aux_logits)`` with an image-level head too),
    the auxiliary logits ``(N, num_classes, H, W)`` resized bilinearly to the image as torchvision
    does; in eval mode (evaluate, predict, export) the output is as without the head.
    """

    def __init__(self, encoder: Encoder, decoder: nn.Module, head: nn.Module, aux_head: nn.Module | None, aux_classifier: nn.Module,
                 pad_to_stride: bool = True) -> None:
        super().__init__(encoder, decoder, head, aux_head, pad_to_stride=pad_to_stride)
        self.aux_classifier = aux_classifier

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]:
        if self.training and not torch.jit.is_scripting():
            return self.forward_aux(x)
        logits, deepest = self.forward_features(x)
        if self.aux_head is None:
            return logits
        return logits, self.aux_head(deepest)

    def forward_aux(self, x: Tensor) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]:
        """``(logits, aux_logits)`` or ``(logits, class_logits, aux_logits)``, whatever the mode."""
        h, w = x.shape[-2], x.shape[-1]
        x, features, switches = self._encode(x)
        size = [x.shape[-2], x.shape[-1]]
        logits = self.head(self.decoder(features, switches, size))[..., :h, :w]
        aux = bilinear_upsample(self.aux_classifier(features[-2]), 1, size)[..., :h, :w]
        if self.aux_head is None:
            return logits, aux
        return logits, self.aux_head(features[-1]), aux


def _encoder(arch: str, name: str | None, in_channels: int, weights: Weights, output_stride: int = 32) -> Encoder:
    if not isinstance(name, str):
        raise SegkitError(f"{arch} needs an encoder: pass encoder=NAME, one of {', '.join(list_encoders())}.")
    output_stride = check_output_stride(output_stride)
    enc = create_encoder(name, in_channels=in_channels, weights=weights, output_stride=output_stride)
    if max(enc.reductions) != output_stride:
        # Only DeepLab takes output_stride; the other archs need the classic deepest stride, 32.
        fix = f"or output_stride={max(enc.reductions)}" if arch.startswith("deeplab") else "(this arch needs a deepest stride of 32)"
        raise SegkitError(f"{arch} asked encoder {name} for output_stride={output_stride} but its deepest stride is {max(enc.reductions)} "
                          f"(strides {enc.reductions}); choose another encoder {fix}.")
    return enc


def _model(arch: str, enc: Encoder, decoder: nn.Module, num_classes: int, aux_classes: int | None, aux_head: str | None,
           pad_to_stride: bool = True) -> nn.Module:
    image_level = ClassificationHead(enc.out_channels[-1], aux_classes) if aux_classes is not None else None
    if aux_head is None:
        return SegmentationModel(enc, decoder, nn.Identity(), image_level, pad_to_stride=pad_to_stride)
    if aux_head not in AUX_HEADS:
        raise SegkitError(f"aux_head must be None or 'fcn' (torchvision's auxiliary FCN head); got {aux_head!r}.")
    if len(enc.out_channels) < 2:
        raise SegkitError(f"aux_head='fcn' reads the encoder's second-deepest level; encoder of {arch} has one level: leave aux_head out.")
    return AuxLogitsModel(enc, decoder, nn.Identity(), image_level, FCNHead(enc.out_channels[-2], num_classes), pad_to_stride)


@register_model("deeplabv3")
def _deeplabv3(encoder: str | None, num_classes: int, in_channels: int, upsampling: str, encoder_weights: Weights,
               aux_classes: int | None, output_stride: int = 8, atrous_rates: Tuple[int, ...] | None = None, aspp_channels: int = 256,
               aspp_conv: bool = True, separable: bool = False, dropout: float = 0.5, aux_head: str | None = None) -> nn.Module:
    """deeplabv3: Chen et al. 2017 (torchvision's DeepLabHead, smp's DeepLabV3); see segkit.decoders.deeplab."""
    enc = _encoder("deeplabv3", encoder, in_channels, encoder_weights, output_stride)
    decoder = DeepLabV3Decoder(enc.out_channels, num_classes, output_stride, upsampling, atrous_rates, aspp_channels,
                               bool(aspp_conv), bool(separable), dropout)
    # bilinear (torchvision's, the default) resizes the logits to the image: any size as it is, no padding
    return _model("deeplabv3", enc, decoder, num_classes, aux_classes, aux_head, pad_to_stride=upsampling != "bilinear")


@register_model("deeplabv3plus")
def _deeplabv3plus(encoder: str | None, num_classes: int, in_channels: int, upsampling: str, encoder_weights: Weights,
                   aux_classes: int | None, output_stride: int = 16, atrous_rates: Tuple[int, ...] | None = None,
                   aspp_channels: int = 256, aspp_conv: bool = False, separable: bool = False, dropout: float = 0.5,
                   low_level_channels: int = 48, refine_convs: int = 2, aux_head: str | None = None,
                   final_upsampling: str | None = None) -> nn.Module:
    """deeplabv3plus: Chen et al. 2018; ``separable=True, refine_convs=1, aspp_conv=True`` is smp's DeepLabV3Plus."""
    enc = _encoder("deeplabv3plus", encoder, in_channels, encoder_weights, output_stride)
    decoder = DeepLabV3PlusDecoder(enc.out_channels, enc.reductions, num_classes, output_stride, upsampling, atrous_rates,
                                   aspp_channels, bool(aspp_conv), bool(separable), dropout, low_level_channels, refine_convs,
                                   final_upsampling)
    return _model("deeplabv3plus", enc, decoder, num_classes, aux_classes, aux_head)


@register_model("fcn_head")
def _fcn_head(encoder: str | None, num_classes: int, in_channels: int, upsampling: str, encoder_weights: Weights,
              aux_classes: int | None, output_stride: int = 8, dropout: float = 0.1, aux_head: str | None = None) -> nn.Module:
    """fcn_head: torchvision's FCN (fcn_resnet50/101): a 3x3 conv-BN-ReLU head on a dilated encoder."""
    enc = _encoder("fcn_head", encoder, in_channels, encoder_weights, output_stride)
    decoder = FCNHeadDecoder(enc.out_channels, num_classes, output_stride, upsampling, dropout)
    return _model("fcn_head", enc, decoder, num_classes, aux_classes, aux_head, pad_to_stride=upsampling != "bilinear")


@register_model("fpn")
def _fpn(encoder: str | None, num_classes: int, in_channels: int, upsampling: str | None, encoder_weights: Weights,
         aux_classes: int | None, pyramid_channels: int = 256, segmentation_channels: int = 128, merge: str = "add",
         dropout: float = 0.2, final_upsampling: str = "bilinear") -> nn.Module:
    """fpn: Lin et al. 2017 / Kirillov et al. 2019 as smp's FPN; see segkit.decoders.fpn."""
    enc = _encoder("fpn", encoder, in_channels, encoder_weights)
    decoder = FPNDecoder(enc.out_channels, enc.reductions, num_classes, upsampling, final_upsampling, pyramid_channels,
                         segmentation_channels, merge, dropout)
    return _model("fpn", enc, decoder, num_classes, aux_classes, None)


# torchvision's segmentation models (``backbone``, ``classifier``, ``aux_classifier``) -> segkit's names.
_DEEPLAB_KEYS = {"classifier.0.": "decoder.aspp.", "classifier.1.": "decoder.aspp_conv.0.", "classifier.2.": "decoder.aspp_conv.1.",
                 "classifier.4.": "decoder.classifier."}
_FCN_KEYS = {"classifier.0.": "decoder.head.block.0.", "classifier.1.": "decoder.head.block.1.", "classifier.4.": "decoder.head.classifier."}
_COMMON_KEYS = {"backbone.": "encoder.", "aux_classifier.0.": "aux_classifier.block.0.", "aux_classifier.1.": "aux_classifier.block.1.",
                "aux_classifier.4.": "aux_classifier.classifier."}


def from_torchvision(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """A torchvision ``deeplabv3_*`` / ``fcn_*`` state dict with segkit's ``deeplabv3`` / ``fcn_head`` names.

    Keys no rule covers are kept as they are (and reported as unexpected when loading).
    """
    rules = {**_COMMON_KEYS, **(_FCN_KEYS if arch == "fcn_head" else _DEEPLAB_KEYS)}
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        for old, new in rules.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = value
    return converted


def load_model_weights(model: nn.Module, arch: str, encoder: str | None, weights: Weights) -> None:
    """Load whole-model ``weights`` into ``model`` (built as ``arch`` on ``encoder``) in place.

    ``weights``: a name of torchvision's published weights, a torchvision whole-model file, or a
    segkit run checkpoint / state dict. The rules of :func:`segkit.encoders.weights.load_weights`
    hold: every tensor must fit (the error names the file and the first offenders); a 3-channel
    first convolution adapts to ``in_channels``; classifiers of another ``num_classes`` keep their
    fresh initialisation (logged), so a published model fine-tunes on new classes; an auxiliary
    head the file has and the model does not is dropped, one the model has and the file does not
    starts fresh (both logged).
    """
    path = resolve_model_weights(arch, encoder, weights)
    assert path is not None
    state, config = read_model_checkpoint(path)
    if any(key.startswith("backbone.") for key in state):
        state = from_torchvision(state, arch)
    target = model.state_dict()
    dropped = sorted({k.split(".", 1)[0] for k in state if k.startswith(("aux_classifier.", "aux_head.", "side_heads.")) and k not in target})
    if dropped:
        logger.info("segkit: %s has %s, which this model does not; left out.", path, ", ".join(dropped))
    # Layers whose shape follows num_classes: of another size in the file, they start fresh (fine-tuning).
    heads = ("decoder.classifier.", "decoder.head.classifier.", "aux_classifier.classifier.", "aux_head.", "head.", "side_heads.")
    auxiliary = ("aux_classifier.", "aux_head.", "side_heads.")  # training aids: dropped or fresh where file and model differ
    encoder_module = getattr(model, "encoder", None)
    try:
        load_state(model, state, path, first_conv=f"encoder.{encoder_module.first_conv}" if encoder_module is not None else "",
                   head_prefixes=heads, ignore_prefixes=auxiliary, optional_prefixes=auxiliary)
    except SegkitError as err:
        source = config.get("model", {}) if config else {}
        if source.get("arch") and (source.get("arch"), source.get("encoder")) != (arch, encoder):
            raise SegkitError(f"weights file {path} is a segkit checkpoint of {source.get('arch')} on {source.get('encoder')}, not of "
                              f"{arch} on {encoder}; build that model, or pass another file.") from err
        raise

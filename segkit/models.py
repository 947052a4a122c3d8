"""The model registry: ``create_model`` (segmentation) and ``create_classifier`` (image classification).

``create_model(arch, encoder=..., num_classes=...)`` wires an encoder (:mod:`segkit.encoders`), a
decoder (:mod:`segkit.decoders`) and a head (:mod:`segkit.heads`) into a :class:`SegmentationModel`.

Input sizes. Encoder archs take images of any size: the image is zero-padded on the bottom and
right to a multiple of 32, the deepest stride (and at least to the encoder's minimum input size,
so small images work too), every encoder level is then exactly ``H / r``, every decoder step lines
up with its skip without resizing, and the logits are cropped back to ``(N, num_classes, H, W)``.
Padding rather than resizing keeps the pixels as they are (no interpolation of the image or of the
logits); the cost is at most 31 rows and columns of extra computation. ``unet_original`` keeps the
paper's valid convolutions (output 184 pixels smaller) unless built with ``padding="same"``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from segkit.decoders import MODES, FCNDecoder, UNetOriginal, UnetDecoder, switch_channels
from segkit.decoders.fcn import FCN_STRIDES
from segkit.decoders.upsample import check_choice, fit_to
from segkit.encoders import (
    CLASSIFIERS,
    Encoder,
    build_with_options,
    check_in_channels,
    check_transform_input,
    create_encoder,
    finish_pretrained,
    list_encoders,
    load_weights,
    lookup,
    read_checkpoint,
    resolve_weights,
)
from segkit.errors import SegkitError, positive_int
from segkit.heads import ClassificationHead, SegmentationHead

__all__ = ["MODELS", "SegmentationModel", "create_classifier", "create_model", "list_models", "register_model"]

logger = logging.getLogger("segkit")


def create_classifier(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build image classifier ``name``: ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``.

    ``num_classes`` and ``in_channels`` default to the data the architecture was made for:
    1000 classes of RGB images for the ImageNet nets, 10 classes for the CIFAR ResNets, 10 classes
    of grey 32x32 images for LeNet-5.

    With auxiliary heads (GoogLeNet, Inception-v3) a model in training mode returns
    ``(logits, aux_logits...)``; in eval mode only the main logits. ``weights`` is the path of a
    torchvision-format checkpoint or a published weights name (``"imagenet"``, ``"imagenet1k_v1"``,
    ...; see :func:`segkit.encoders.weights.resolve_weights`); a head of another ``num_classes``
    keeps its fresh initialisation (logged), a 3-channel first convolution adapts to ``in_channels``.
    """
    factory = lookup(CLASSIFIERS, name, "classifier")
    if in_channels is not None:
        kwargs["in_channels"] = check_in_channels(in_channels)
    if num_classes is not None:
        kwargs["num_classes"] = _check_count("num_classes", num_classes)
    transform_input = kwargs.pop("transform_input", None)
    model = build_with_options(factory, f"classifier {name!r}", **kwargs)
    check_transform_input(model, transform_input, f"classifier {name!r}")
    weights = resolve_weights(name, weights)
    meta = None
    if weights is not None:
        meta = load_weights(model, weights, first_conv=model.first_conv, head_prefixes=model.head_prefixes,
                            ignore_prefixes=getattr(model, "checkpoint_ignore", ()),
                            optional_prefixes=getattr(model, "optional_prefixes", ()))
    finish_pretrained(model, weights, transform_input, meta)
    return model


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head: ``(N, C, H, W)`` -> logits ``(N, num_classes, H, W)``.

    The image is zero-padded on the bottom/right to a multiple of the encoder's deepest stride (and
    at least to the encoder's minimum input size) and the logits cropped back (see the module
    docstring); with ``pad_to_stride=False`` (a decoder that resizes its logits to the image, as
    DeepLab's bilinear one does) only to the minimum size. With an ``aux_head`` the forward returns
    ``(logits, class_logits)``, the class logits ``(N, aux_classes)`` from the head on the
    encoder's deepest features.

    With ``side_heads`` (deep supervision; the decoder must have ``forward_levels``, as
    :class:`segkit.decoders.UnetDecoder` does) a model in training mode appends one more element, a
    *list* of side logits: ``(logits, sides)`` or ``(logits, class_logits, sides)``. ``sides[k]``
    comes from the decoder level at stride ``2 ** (k + 1)`` (finest first, the order of
    ``trainer.deep_supervision_weights``), cropped to the ``ceil(H / stride)`` rows and columns that
    cover the image. The list, never a tensor, is what marks them: a tensor after the logits is an
    image-level head (2-D) or auxiliary logits at the mask's size. In eval mode (evaluate, predict,
    export) the side heads are skipped and the output is as without them.
    """

    def __init__(self, encoder: Encoder, decoder: nn.Module, head: nn.Module, aux_head: nn.Module | None = None,
                 side_heads: nn.ModuleList | None = None, pad_to_stride: bool = True) -> None:
        super().__init__()
        if side_heads is not None and not hasattr(decoder, "forward_levels"):
            raise ValueError(f"side heads need a decoder with forward_levels; {type(decoder).__name__} has none")
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.aux_head = aux_head
        self.side_heads = side_heads
        # A decoder that resizes its logits to the image (bilinear DeepLab, torchvision's FCN head) takes
        # any size as it is, as torchvision's models do: padding would change their logits (the image
        # pooling averages the padded zeros too). The others line every level up by padding.
        self.multiple = max(encoder.reductions) if pad_to_stride else 1
        self.min_size = -(-encoder.min_input_size // self.multiple) * self.multiple
        self.use_switches = getattr(decoder, "upsampling", None) == "max_unpool"

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor], Tuple[Tensor, List[Tensor]], Tuple[Tensor, Tensor, List[Tensor]]]:
        # Side logits only where a loss can use them: in training. torch.jit.is_scripting() is a
        # compile-time constant, so a TorchScript export does not even compile this branch and keeps
        # the single-tensor output whatever mode it is later put in.
        if self.side_heads is not None and self.training and not torch.jit.is_scripting():
            logits, deepest, sides = self.forward_deep_supervision(x)
            if self.aux_head is None:
                return logits, sides
            return logits, self.aux_head(deepest), sides
        logits, deepest = self.forward_features(x)
        if self.aux_head is None:
            return logits
        return logits, self.aux_head(deepest)

    def _encode(self, x: Tensor) -> Tuple[Tensor, List[Tensor], Optional[List[Tensor]]]:
        """``(padded image, encoder features, switches or None)``."""
        h, w = x.shape[-2], x.shape[-1]
        x = fit_to(x, [max(h + (-h) % self.multiple, self.min_size), max(w + (-w) % self.multiple, self.min_size)])
        switches: Optional[List[Tensor]] = None
        if self.use_switches:
            features, switches = self.encoder.forward_with_switches(x)
        else:
            features = self.encoder(x)
        return x, features, switches

    def forward_features(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(logits, deepest encoder features)``."""
        h, w = x.shape[-2], x.shape[-1]
        x, features, switches = self._encode(x)
        logits = self.head(self.decoder(features, switches, [x.shape[-2], x.shape[-1]]))
        return logits[..., :h, :w], features[-1]

    def forward_deep_supervision(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """``(logits, deepest encoder features, side logits)``, the side logits finest first (see the class docstring)."""
        if self.side_heads is None:
            raise ValueError("this model has no side heads (build it with deep_supervision=True)")
        h, w = x.shape[-2], x.shape[-1]
        x, features, switches = self._encode(x)
        levels = self.decoder.forward_levels(features, switches, [x.shape[-2], x.shape[-1]])
        logits = self.head(levels[-1])[..., :h, :w]
        sides: List[Tensor] = []
        for head, level in zip(self.side_heads, levels[-2::-1]):  # the levels below the main head's, finest first
            side = head(level)
            sh, sw = x.shape[-2] // side.shape[-2], x.shape[-1] // side.shape[-1]
            # Keep the rows and columns that see the image; the padding's are cropped as the main logits' are.
            sides.append(side[..., : -(-h // sh), : -(-w // sw)])
        return logits, features[-1], sides


# arch name -> factory(encoder, num_classes, in_channels, upsampling, encoder_weights, aux_classes, **options)
MODELS: dict[str, Callable[..., nn.Module]] = {}
# create_model's upsampling=None: "transposed", unless the arch's papers say otherwise (fpn: None, its decoder's own mix).
DEFAULT_UPSAMPLING: dict[str, str | None] = {"deeplabv3": "bilinear", "deeplabv3plus": "bilinear", "fcn_head": "bilinear", "fpn": None}
_COMMON = ("encoder", "num_classes", "in_channels", "upsampling", "encoder_weights", "aux_classes")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``create_model(name)`` call the decorated factory."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Arch names ``create_model`` accepts, sorted."""
    return sorted(MODELS)


def _check_count(name: str, value: object) -> int:
    return positive_int(value, f"{name} must be a positive integer; got {value!r}.")


def create_model(
    arch: str,
    encoder: str | None = None,
    num_classes: int = 1,
    in_channels: int = 3,
    upsampling: str | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    aux_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **decoder_kwargs: Any,
) -> nn.Module:
    """Build segmentation model ``arch``: ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``.

    Args:
        arch: ``fcn32s``, ``fcn16s``, ``fcn8s`` (and ``fcn4s``, ``fcn2s``), ``unet`` (any encoder), ``unet_original``;
            ``deeplabv3``, ``deeplabv3plus``, ``fcn_head``, ``fpn`` (:mod:`segkit.archs`).
        encoder: encoder name (``segkit.list_encoders()``); ``unet_original`` takes none.
        num_classes: channels of the logits.
        in_channels: channels of the image.
        upsampling: ``"transposed"`` | ``"nearest"`` | ``"bed_of_nails"`` | ``"max_unpool"`` | ``"bilinear"``;
            None: the arch's default (transposed; bilinear for DeepLab and fcn_head; for fpn the
            papers' nearest pyramid and bilinear branch).
        encoder_weights: path of a torchvision checkpoint for the encoder (for FCN on VGG it also
            fills fc6/fc7), a published weights name (``"imagenet"``, ``"imagenet1k_v2"``, ...), or None.
        aux_classes: with ``K``, the model returns ``(logits, class_logits (N, K))``.
        weights: the whole model's weights, loaded after building it: a segkit run checkpoint
            (``best.pt``), a torchvision segmentation model's file, or torchvision's published
            weights by name (``"coco_with_voc_labels_v1"``: deeplabv3 / fcn_head on resnet50 / 101;
            :func:`segkit.archs.load_model_weights`). Not together with ``encoder_weights``.
        decoder_kwargs: the arch's options: FCN ``skip_fusion`` ("add" | "concat"),
            ``fc_channels`` ("auto": 4096 on VGG, none otherwise), ``dropout``; U-Net
            ``decoder_channels`` (one per x2 step, deepest first; default smp's (256, 128, 64, 32, 16),
            fewer or more for an encoder whose deepest stride is 16 or 64), ``head_kernel_size``
            (3, smp's head; 1 for the paper's 1x1), ``deep_supervision`` (a 1x1 side head on every
            other decoder level; see :class:`SegmentationModel`);
            unet_original ``padding`` ("valid" | "same").

    Layers that do not come from a checkpoint start as :mod:`segkit.decoders.init` and
    :mod:`segkit.heads` describe: encoders as torchvision initialises them, decoder
    conv-BN-ReLU layers He (fan_in, ReLU) with BatchNorm 1/0, up-convs as interpolation, heads Xavier.
    """
    check_choice(arch, list_models(), "model architecture")
    in_channels = check_in_channels(in_channels)
    num_classes = _check_count("num_classes", num_classes)
    if aux_classes is not None:
        aux_classes = _check_count("aux_classes", aux_classes)
    if upsampling is None:
        upsampling = DEFAULT_UPSAMPLING.get(arch, "transposed")
    if upsampling is not None:
        check_choice(upsampling, MODES, "upsampling mode")
    if weights is not None and encoder_weights is not None:
        raise SegkitError("give weights (the whole model) or encoder_weights (the encoder only), not both; the whole model's weights replace the encoder's.")
    factory = MODELS[arch]
    options = [p for p in inspect.signature(factory).parameters if p not in _COMMON]
    if "deep_supervision" in decoder_kwargs and "deep_supervision" not in options:
        if decoder_kwargs["deep_supervision"] is False:
            del decoder_kwargs["deep_supervision"]  # asking for none asks nothing of any arch (a shared config may say so)
        else:
            having = [name for name in list_models() if "deep_supervision" in inspect.signature(MODELS[name]).parameters]
            raise SegkitError(f"deep_supervision is an option of arch {', '.join(having)} only, not of {arch}; use that arch or leave deep_supervision out.")
    unknown = sorted(set(decoder_kwargs) - set(options))
    if unknown:
        import difflib

        # A misspelt common argument (num_clases) lands here too: suggest it as well as the arch's own options.
        known = [*options, *inspect.signature(create_model).parameters]
        close = difflib.get_close_matches(unknown[0], [k for k in known if k != "decoder_kwargs"], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SegkitError(f"{arch} has no option {', '.join(map(repr, unknown))}; {hint}its options are {', '.join(options) or 'none'}.")
    model = factory(
        encoder=encoder,
        num_classes=num_classes,
        in_channels=in_channels,
        upsampling=upsampling,
        encoder_weights=encoder_weights,
        aux_classes=aux_classes,
        **decoder_kwargs,
    )
    if weights is not None:
        from segkit.archs import load_model_weights

        load_model_weights(model, arch, encoder, weights)
    return model


def _build_encoder(arch: str, name: str | None, in_channels: int, weights: str | os.PathLike[str] | None) -> Encoder:
    if not isinstance(name, str):
        raise SegkitError(f"{arch} needs an encoder: pass encoder=NAME, one of {', '.join(list_encoders())}.")
    return create_encoder(name, in_channels=in_channels, weights=weights)


def _aux_head(channels: int, aux_classes: int | None) -> nn.Module | None:
    return ClassificationHead(channels, aux_classes) if aux_classes is not None else None


_VGG_FC = 4096  # width of VGG's fc6/fc7


def _fcn_factory(stride: int) -> Callable[..., nn.Module]:
    def build(
        encoder: str | None,
        num_classes: int,
        in_channels: int,
        upsampling: str,
        encoder_weights: str | os.PathLike[str] | None,
        aux_classes: int | None,
        skip_fusion: str = "add",
        fc_channels: int | str | None = "auto",
        dropout: float = 0.5,
    ) -> nn.Module:
        enc = _build_encoder(f"fcn{stride}s", encoder, in_channels, encoder_weights)
        vgg = str(encoder).startswith("vgg")
        if fc_channels == "auto":
            fc_channels = _VGG_FC if vgg else None
        decoder = FCNDecoder(
            enc.out_channels,
            num_classes,
            stride=stride,
            upsampling=upsampling,
            skip_fusion=skip_fusion,
            fc_channels=fc_channels,  # type: ignore[arg-type]
            dropout=dropout,
            switch_channels=switch_channels(enc) if upsampling == "max_unpool" else None,
            reductions=enc.reductions,
        )
        if vgg and encoder_weights is not None and fc_channels is not None:
            _load_vgg_fc(decoder, resolve_weights(str(encoder), encoder_weights))  # the file the encoder was read from
        return SegmentationModel(enc, decoder, nn.Identity(), _aux_head(enc.out_channels[-1], aux_classes))

    build.__doc__ = f"fcn{stride}s: Long et al. 2015 on any encoder (see segkit.decoders.fcn)."
    return build


def _load_vgg_fc(decoder: FCNDecoder, path: str | os.PathLike[str]) -> None:
    """fc6/fc7 of a VGG classifier checkpoint (``classifier.0``, ``classifier.3``) into the FCN head, reshaped to convolutions."""
    state = read_checkpoint(path)
    convs = {"classifier.0": decoder.head[0], "classifier.3": decoder.head[3]}
    for prefix, conv in convs.items():
        weight, bias = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
        if weight is None or bias is None or weight.numel() != conv.weight.numel() or bias.shape != conv.bias.shape:
            logger.info("segkit: %s has no %s of the FCN head's size %s; fc6/fc7 keep their fresh initialisation.", path, prefix, tuple(conv.weight.shape))
            return
    with torch.no_grad():
        for prefix, conv in convs.items():
            conv.weight.copy_(state[f"{prefix}.weight"].reshape(conv.weight.shape))
            conv.bias.copy_(state[f"{prefix}.bias"])


for _stride in FCN_STRIDES:
    register_model(f"fcn{_stride}s")(_fcn_factory(_stride))


@register_model("unet")
def _unet(
    encoder: str | None,
    num_classes: int,
    in_channels: int,
    upsampling: str,
    encoder_weights: str | os.PathLike[str] | None,
    aux_classes: int | None,
    decoder_channels: tuple[int, ...] | None = None,
    head_kernel_size: int = 3,
    deep_supervision: bool = False,
) -> nn.Module:
    """unet: U-Net decoder on any encoder (see segkit.decoders.unet), 3x3 head (1: the paper's 1x1).

    ``decoder_channels`` default: one width per x2 step, smp's ``(256, 128, 64, 32, 16)`` for the
    usual deepest stride 32 (see :func:`segkit.decoders.unet.default_decoder_channels`).
    ``deep_supervision``: a 1x1 head (Xavier, as the segmentation head) on each decoder level but
    the last, whose logits the model returns in training mode (see :class:`SegmentationModel`).
    """
    if not isinstance(deep_supervision, bool):
        raise SegkitError(f"deep_supervision must be true or false; got {deep_supervision!r}.")
    enc = _build_encoder("unet", encoder, in_channels, encoder_weights)
    decoder = UnetDecoder(
        enc.out_channels,
        decoder_channels,
        upsampling=upsampling,
        switch_channels=switch_channels(enc) if upsampling == "max_unpool" else None,
        reductions=enc.reductions,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=head_kernel_size)
    side_heads = None
    if deep_supervision:
        if len(decoder.level_channels) < 2:
            raise SegkitError(f"deep_supervision needs a decoder level besides the last; encoder {encoder} gives the U-Net a single one, so leave deep_supervision out.")
        # 1x1 as in nnU-Net's deep supervision: a linear read-out, so the side loss shapes the level's features.
        side_heads = nn.ModuleList(SegmentationHead(c, num_classes, kernel_size=1) for c in decoder.level_channels[-2::-1])
    return SegmentationModel(enc, decoder, head, _aux_head(enc.out_channels[-1], aux_classes), side_heads)


@register_model("unet_original")
def _unet_original(
    encoder: str | None,
    num_classes: int,
    in_channels: int,
    upsampling: str,
    encoder_weights: str | os.PathLike[str] | None,
    aux_classes: int | None,
    padding: str = "valid",
) -> nn.Module:
    """unet_original: Ronneberger et al. 2015 as Figure 1 (see segkit.decoders.unet_original)."""
    if encoder is not None or encoder_weights is not None:
        raise SegkitError("unet_original is the paper's own network and takes no encoder or encoder_weights; leave them out, or use arch 'unet' with an encoder.")
    return UNetOriginal(in_channels, num_classes, padding=padding, upsampling=upsampling, aux_classes=aux_classes)


from segkit import archs  # noqa: E402,F401  (registers deeplabv3, deeplabv3plus, fcn_head, fpn; imports this module)

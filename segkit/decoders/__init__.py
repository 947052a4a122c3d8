"""Decoders: FCN-32s/16s/8s, U-Net on any encoder, the original U-Net, DeepLabV3/V3+, FPN, and the upsampling modes.

Models are built by :func:`segkit.create_model`; the pieces are here for use in your own code::

    from segkit.decoders import Upsample, max_unpool, bed_of_nails, nearest_upsample
    up = Upsample("max_unpool", in_channels=256, out_channels=128)   # 1x1 projection, then unpool
    y = up(x, indices=switches[3], output_size=[h, w])
"""

from segkit.decoders.deeplab import ASPP, DeepLabV3Decoder, DeepLabV3PlusDecoder, FCNHead, FCNHeadDecoder
from segkit.decoders.fcn import FCNDecoder
from segkit.decoders.fpn import FPNDecoder
from segkit.decoders.unet import UnetBlock, UnetDecoder
from segkit.decoders.unet_original import UNetOriginal
from segkit.decoders.upsample import (
    MODES,
    Upsample,
    bed_of_nails,
    bilinear_kernel,
    bilinear_upsample,
    max_unpool,
    nearest_upsample,
    switch_channels,
)

__all__ = [
    "ASPP",
    "DeepLabV3Decoder",
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "FCNHead",
    "FCNHeadDecoder",
    "FPNDecoder",
    "MODES",
    "UNetOriginal",
    "UnetBlock",
    "UnetDecoder",
    "Upsample",
    "bed_of_nails",
    "bilinear_kernel",
    "bilinear_upsample",
    "max_unpool",
    "nearest_upsample",
    "switch_channels",
]

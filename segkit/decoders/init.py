"""Initialisation of decoder layers: part of each model's contract, not left to PyTorch's defaults.

PyTorch's default for ``nn.Conv2d`` (``kaiming_uniform_(a=sqrt(5))``) gives weights of variance
``1 / (3 fan_in)``: a third of what keeps activations alive through a ReLU. Stacked in a decoder
that starts from scratch while the encoder may be pretrained, that shrinks every signal on its way
to the head and slows the start of training; on small real datasets it cost a segkit U-Net a third
of its mIoU against segmentation-models-pytorch (smp), which initialises as below. What each kind
of layer gets, and why:

* convolution followed by BatchNorm and ReLU (:func:`init_conv_bn_relu`): He et al. 2015, uniform,
  ``fan_in`` mode, ReLU gain (variance ``2 / fan_in``), bias 0; BatchNorm weight 1, bias 0. The
  forward signal keeps its scale through the ReLU; smp's ``initialize_decoder`` is the same.
* a linear 1x1 projection with nothing after it but a concatenation or a sum
  (:func:`init_projection`): variance ``1 / fan_in`` (LeCun, no ReLU gain: nothing is rectified),
  bias 0, so the projected map has the scale of its input.
* a transposed convolution that upsamples by its stride (:func:`init_nearest_upconv`): every tap of
  a ``s x s`` / stride-``s`` kernel equal to the same channel-mixing matrix, initialised as a
  projection. The up-conv then starts as exactly "project with a 1x1 convolution, then nearest
  upsampling", a good upsampler, instead of noise that differs between the ``s**2`` positions of
  each output block. (FCN's ``2s``-kernel deconvolutions start as bilinear interpolation instead:
  :func:`segkit.decoders.upsample.bilinear_kernel`.)
* segmentation and classification heads: Xavier/Glorot uniform, bias 0 (see :mod:`segkit.heads`),
  as smp's ``initialize_head``; FCN's score layers are zero, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["init_conv_bn_relu", "init_nearest_upconv", "init_projection"]


def init_conv_bn_relu(conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None) -> None:
    """He (fan_in, ReLU) uniform weights and zero bias for ``conv``; ``norm`` weight 1, bias 0."""
    nn.init.kaiming_uniform_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm is not None:
        nn.init.ones_(norm.weight)
        nn.init.zeros_(norm.bias)


def init_projection(conv: nn.Conv2d) -> None:
    """Variance-preserving weights (``U(-a, a)``, ``a = sqrt(3 / fan_in)``) and zero bias for a linear 1x1 ``conv``."""
    nn.init.kaiming_uniform_(conv.weight, mode="fan_in", nonlinearity="linear")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_nearest_upconv(conv: nn.ConvTranspose2d) -> None:
    """Make ``conv`` (kernel = stride) equal to a 1x1 projection followed by nearest upsampling.

    The weight ``(in, out, s, s)`` holds one ``(in, out)`` matrix, drawn as :func:`init_projection`
    draws a 1x1 convolution's (fan_in = ``in``), repeated at every tap; the bias is zero.
    """
    if tuple(conv.kernel_size) != tuple(conv.stride) or any(p != 0 for p in conv.padding):
        raise ValueError("init_nearest_upconv needs kernel_size == stride and no padding")
    in_channels = conv.weight.shape[0]
    bound = math.sqrt(3.0 / in_channels)
    with torch.no_grad():
        mixing = torch.empty(conv.weight.shape[:2], dtype=conv.weight.dtype, device=conv.weight.device).uniform_(-bound, bound)
        conv.weight.copy_(mixing[:, :, None, None].expand_as(conv.weight))
        if conv.bias is not None:
            conv.bias.zero_()

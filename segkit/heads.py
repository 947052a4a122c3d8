"""Heads: per-pixel class scores, and image-level class scores beside them.

* :class:`SegmentationHead`: a convolution from decoder features to class logits, 3x3 by default
  (smp's head; on a narrow last decoder level a 1x1 head is a per-pixel linear map of very few
  features, and the 3x3 one measurably learns better: ``scripts/benchmark.py accuracy``), 1x1 where
  a paper says so (the original U-Net's last layer). FCN's score layers live in its decoder.
* :class:`ClassificationHead`: global average pooling, dropout, a fully connected layer: the
  image-level head of the ResNet/GoogLeNet family, used as the auxiliary head of
  ``create_model(..., aux_classes=K)`` on the encoder's deepest features.

Both start with Xavier/Glorot uniform weights and zero bias (smp's ``initialize_head``): logits of
unit-order scale whatever the width of the features, and no class favoured at the start.
"""

from __future__ import annotations

from torch import Tensor, nn

from segkit.errors import SegkitError

__all__ = ["ClassificationHead", "SegmentationHead"]


def _xavier(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class SegmentationHead(nn.Conv2d):
    """``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)`` by a ``kernel_size`` convolution.

    ``kernel_size`` is odd (padding keeps the size): 3 by default, 1 for the paper-exact 1x1 head.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 3) -> None:
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise SegkitError(f"head_kernel_size must be an odd positive integer (3: smp's head, 1: the paper's 1x1); got {kernel_size!r}.")
        super().__init__(in_channels, num_classes, kernel_size, padding=kernel_size // 2)
        _xavier(self)


class ClassificationHead(nn.Module):
    """``(N, in_channels, h, w)`` -> logits ``(N, num_classes)``: global average pool, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        _xavier(self.fc)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))

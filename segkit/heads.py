"""Heads: per-pixel class scores, and image-level class scores beside them.

* :class:`SegmentationHead`: a 1x1 convolution from decoder features to class logits, as the
  original U-Net's last layer (FCN's score layers live in its decoder).
* :class:`ClassificationHead`: global average pooling, dropout, a fully connected layer: the
  image-level head of the ResNet/GoogLeNet family, used as the auxiliary head of
  ``create_model(..., aux_classes=K)`` on the encoder's deepest features.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ClassificationHead", "SegmentationHead"]


class SegmentationHead(nn.Conv2d):
    """``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)`` by a ``kernel_size`` convolution."""

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 1) -> None:
        super().__init__(in_channels, num_classes, kernel_size, padding=kernel_size // 2)


class ClassificationHead(nn.Module):
    """``(N, in_channels, h, w)`` -> logits ``(N, num_classes)``: global average pool, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))

"""VGG nets of Simonyan & Zisserman 2015 ("Very Deep Convolutional Networks"), configurations A, B, D, E.

3x3 convolutions (stride 1, padding 1) with ReLU, 2x2 / stride-2 max-pools between five blocks,
and the 4096-4096-classes head; with batch norm after every convolution in the ``_bn`` twins.
The layout (``features`` and ``classifier`` sequences) is torchvision's, so its checkpoint files
(``vgg16-397923af.pth``, ``vgg16_bn-6c64b313.pth``, ...) load unchanged. VGG-16 has 138,357,544
parameters with its 1000-class head.

The encoder's features are the outputs of the five max-pools (pool1..pool5: reductions 2..32,
channels 64, 128, 256, 512, 512); FCN fuses pool3 and pool4 as in Long et al. 2015, and every
feature comes with the switches of its max-pool.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import Classifier, Encoder, check_input, kaiming_init, register_classifier, register_encoder

__all__ = ["VGG", "VGGEncoder", "CONFIGS"]

# Table 1 of the paper: channel widths, "M" for a max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}


def make_features(config: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """The convolutional part, as one ``nn.Sequential`` (torchvision's indices: ``features.N``)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        width = int(v)
        layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    return nn.Sequential(*layers)


class _VGGBody(nn.Module):
    first_conv = "features.0"

    def __init__(self, config: list[int | str], in_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.features = make_features(config, in_channels, batch_norm)
        # Each block runs from just after one pool through the next pool (inclusive).
        self._pool_positions = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        kaiming_init(self)

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        features: list[Tensor] = []
        switches: list[Tensor] = []
        start = 0
        for pool in self._pool_positions:
            for i in range(start, pool):
                x = self.features[i](x)
            if record_switches:
                x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
                switches.append(indices)
            else:
                x = self.features[pool](x)
            features.append(x)
            start = pool + 1
        return features, switches


class VGGEncoder(_VGGBody, Encoder):
    """VGG feature extractor: ``(N, C, H, W)`` -> the five pooled maps, reductions (2, 4, 8, 16, 32)."""

    checkpoint_ignore = ("classifier.",)

    def __init__(self, config: list[int | str], in_channels: int = 3, batch_norm: bool = False) -> None:
        super().__init__(config, in_channels, batch_norm)
        widths = [config[i - 1] for i, v in enumerate(config) if v == "M"]
        self.out_channels = tuple(int(w) for w in widths)
        self.reductions = (2, 4, 8, 16, 32)


class VGG(_VGGBody, Classifier):
    """VGG classifier: ``(N, C, H, W)`` -> logits ``(N, num_classes)``.

    Adaptive average pooling to 7x7 before the head (torchvision's), so any input of at least
    32x32 works; at 224x224 it is the identity and the net is the paper's.
    """

    head_prefixes = ("classifier.6.",)

    def __init__(self, config: list[int | str], num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False, dropout: float = 0.5) -> None:
        super().__init__(config, in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        kaiming_init(self.classifier)

    min_input_size = 32  # five 2x2 poolings

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.min_input_size)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _register(depth: int, batch_norm: bool) -> None:
    name = f"vgg{depth}{'_bn' if batch_norm else ''}"
    config = CONFIGS[DEPTHS[depth]]

    def encoder(in_channels: int = 3, **kwargs: Any) -> VGGEncoder:
        return VGGEncoder(config, in_channels=in_channels, batch_norm=batch_norm, **kwargs)

    def classifier(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGG:
        return VGG(config, num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm, **kwargs)

    encoder.__doc__ = classifier.__doc__ = f"{name}: configuration {DEPTHS[depth]}{' with batch norm' if batch_norm else ''}."
    register_encoder(name)(encoder)
    register_classifier(name)(classifier)


for _depth in DEPTHS:
    _register(_depth, batch_norm=False)
    _register(_depth, batch_norm=True)

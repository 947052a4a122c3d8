"""ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition").

* ImageNet nets ``resnet18/34`` (basic blocks) and ``resnet50/101/152`` (bottleneck blocks), laid
  out as torchvision's ``models/resnet.py`` (same module names, stride on the bottleneck's 3x3
  convolution as torchvision's "v1.5"), so torchvision's checkpoint files load unchanged.
* The paper's three shortcut options (Section 3.3, Table 3):
  A: identity, with zero-padded channels (and stride-2 subsampling) where the shape changes;
  no parameters. B (default, torchvision's): projection (1x1 conv + BN) only where the shape
  changes. C: projection on every block. Every ImageNet depth takes ``_a`` / ``_c`` suffixes.
* ``plain18``, ``plain34``: the same stacks with no shortcuts (the paper's plain baselines; same
  parameter count as option A).
* CIFAR-10 nets of Section 4.2: 3x3 conv, then 3 stages of ``n`` basic blocks with 16/32/64
  filters, global average pooling and a fully connected layer: 6n+2 layers, option A shortcuts
  (``cifar_resnet20/32/44/56/110/1202``) and their plain twins (``cifar_plain20/32/44/56/110``).
  Classifier-only: their stride-8 output is no segmentation encoder.

Dilated encoders (``output_stride=16`` or ``8``, Chen et al.'s atrous convolution for DeepLab): the
last one or two stages keep their input's resolution and dilate their 3x3 convolutions instead, as
torchvision's ``replace_stride_with_dilation=[False, False, True]`` / ``[False, True, True]`` does:
the first block of a dilated stage drops its stride (its shortcut projection too) and keeps the
previous dilation, the following blocks take the stage's dilation (2 at stride 16, then 4). No
weight changes shape, so torchvision's checkpoints load unchanged. torchvision refuses dilation
in basic blocks (ResNet-18/34); segkit dilates both of their 3x3 convolutions by the same rule.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.encoders.base import Classifier, Encoder, check_input, kaiming_init, register_classifier, register_encoder, switches_2x2
from segkit.errors import SegkitError

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "OUTPUT_STRIDES", "ResNet", "ResNetEncoder", "ZeroPadShortcut", "check_output_stride"]

SHORTCUTS = ("A", "B", "C", "none")


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and append zero channels up to ``out_channels``.

    ``(N, C_in, H, W)`` -> ``(N, C_out, ceil(H / stride), ceil(W / stride))``; no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one block, or None where it is the identity (or absent, for plain nets)."""
    same_shape = stride == 1 and in_channels == out_channels
    if option == "none" or (option in ("A", "B") and same_shape):
        return None
    if option == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: ``(N, C_in, H, W)`` -> ``(N, planes, H / stride, W / stride)``.

    ``dilation`` dilates both 3x3 convolutions (dilated encoders; see the module docstring).
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B", dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_channels, planes, stride)
        self.residual = shortcut != "none"

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:  # in place, as torchvision: BatchNorm's backward does not need its output
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and a shortcut.

    ``(N, C_in, H, W)`` -> ``(N, 4 * planes, H / stride, W / stride)``. ``dilation`` dilates the 3x3
    convolution, as torchvision's.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B", dilation: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride)
        self.residual = shortcut != "none"

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:  # in place, as torchvision
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def _make_layer(block: Block, in_channels: int, planes: int, blocks: int, stride: int, shortcut: str,
                dilation: int = 1, first_dilation: int = 1) -> nn.Sequential:
    """One stage: ``blocks`` blocks, the first with ``stride`` and ``first_dilation``, the rest with ``dilation``."""
    layers = [block(in_channels, planes, stride, shortcut, first_dilation)]
    layers += [block(planes * block.expansion, planes, 1, shortcut, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module, zero_init_residual: bool, shortcut: str) -> None:
    kaiming_init(module)
    if zero_init_residual:
        if shortcut == "none":
            raise SegkitError("zero_init_residual=True would silence every block of a plain net (no shortcuts); leave it False for plain nets.")
        # Each residual branch starts as zero, so each block starts as its shortcut (Goyal et al. 2017).
        for m in module.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn.weight)


def _check_shortcut(shortcut: str) -> None:
    if shortcut not in SHORTCUTS:
        raise SegkitError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {shortcut!r}.")


OUTPUT_STRIDES = (32, 16, 8)


def check_output_stride(output_stride: object) -> int:
    """``output_stride`` if it is 32, 16 or 8, else a SegkitError."""
    if output_stride not in OUTPUT_STRIDES or isinstance(output_stride, bool):
        raise SegkitError(f"output_stride must be 32 (no dilation), 16 or 8 (the last stages dilated); got {output_stride!r}.")
    return int(output_stride)  # type: ignore[call-overload]


class _ResNetBody(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and four stages; torchvision's module names.

    ``output_stride`` 16 or 8 dilates layer4, or layer3 and layer4, instead of striding them
    (torchvision's ``replace_stride_with_dilation``; see the module docstring).
    """

    first_conv = "conv1"

    def __init__(self, block: Block, layers: list[int], in_channels: int, shortcut: str, zero_init_residual: bool,
                 output_stride: int = 32) -> None:
        super().__init__()
        _check_shortcut(shortcut)
        output_stride = check_output_stride(output_stride)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        channels, stride_so_far, dilation = 64, 4, 1
        strided: list[bool] = []
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride, previous = (1 if i == 0 else 2), dilation
            if stride == 2 and stride_so_far * 2 > output_stride:  # dilate instead of striding
                dilation *= 2
                stride = 1
            stride_so_far *= stride
            if i > 0:
                strided.append(stride == 2)
            self.add_module(f"layer{i + 1}", _make_layer(block, channels, planes, blocks, stride, shortcut, dilation, previous))
            channels = planes * block.expansion
        self.feature_channels = (64, *(w * block.expansion for w in widths))
        # True strides of the five levels, and which of layer2-4 downsample (they record switches).
        self.feature_reductions = (2, 4, *(min(s, output_stride) for s in (8, 16, 32)))
        self.strided_stages = tuple(strided)
        _init_weights(self, zero_init_residual, shortcut)

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        features: list[Tensor] = []
        switches: list[Tensor] = []
        if record_switches:  # the stem convolution is strided: switches of a 2x2 max over the image
            switches.append(switches_2x2(x))
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        if record_switches:
            x, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
            switches.append(indices)
        else:
            x = self.maxpool(x)
        x = self.layer1(x)
        features.append(x)
        for layer, strided in zip((self.layer2, self.layer3, self.layer4), self.strided_stages):
            if record_switches and strided:  # strided convolution again (a dilated stage has no x2 step)
                switches.append(switches_2x2(x))
            x = layer(x)
            features.append(x)
        return features, switches


class ResNetEncoder(_ResNetBody, Encoder):
    """ResNet feature extractor: features at reductions (2, 4, 8, 16, 32).

    Channels (64, 64, 128, 256, 512) with basic blocks, (64, 256, 512, 1024, 2048) with
    bottlenecks. ``forward(x)`` ``(N, C, H, W)`` -> list of 5 maps. With ``output_stride`` 16 the
    reductions are (2, 4, 8, 16, 16), with 8 (2, 4, 8, 8, 8); switches are recorded for the stages
    that still downsample (4 and 3 of them).
    """

    checkpoint_ignore = ("fc.",)

    def __init__(self, block: Block, layers: list[int], in_channels: int = 3, shortcut: str = "B", zero_init_residual: bool = False,
                 output_stride: int = 32) -> None:
        super().__init__(block, layers, in_channels, shortcut, zero_init_residual, output_stride)
        self.out_channels = self.feature_channels
        self.reductions = self.feature_reductions


class ResNet(_ResNetBody, Classifier):
    """ResNet classifier: ``(N, C, H, W)`` -> logits ``(N, num_classes)`` (global average pool + fc)."""

    head_prefixes = ("fc.",)

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        shortcut: str = "B",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(block, layers, in_channels, shortcut, zero_init_residual)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # Built after the body's initialisation: keeps nn.Linear's default init, as torchvision does.
        self.fc = nn.Linear(self.feature_channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, 1)  # a batch of the channels it was built for (any size: the pooling is adaptive)
        x = self.forward_stages(x, record_switches=False)[0][-1]
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(Classifier):
    """The CIFAR-10 ResNet of He et al. 2016, Section 4.2: ``(N, C, 32, 32)`` -> ``(N, num_classes)``.

    3x3 conv (16), three stages of ``n`` basic blocks with 16, 32, 64 filters (the second and
    third start with stride 2), global average pooling, fully connected: 6n+2 weighted layers.
    """

    first_conv = "conv1"
    head_prefixes = ("fc.",)

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False) -> None:
        super().__init__()
        _check_shortcut(shortcut)
        if depth < 8 or (depth - 2) % 6:
            raise SegkitError(f"a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56, 110, ...); got depth {depth}.")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(BasicBlock, 16, 16, n, 1, shortcut)
        self.layer2 = _make_layer(BasicBlock, 16, 32, n, 2, shortcut)
        self.layer3 = _make_layer(BasicBlock, 32, 64, n, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self, zero_init_residual, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, 1)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# depth -> (block, blocks per stage), Table 1 of the paper.
IMAGENET_DEPTHS: dict[int, tuple[Block, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def _register_imagenet(name: str, depth: int, shortcut: str) -> None:
    block, layers = IMAGENET_DEPTHS[depth]

    def encoder(in_channels: int = 3, **kwargs: Any) -> ResNetEncoder:
        return ResNetEncoder(block, layers, in_channels=in_channels, shortcut=shortcut, **kwargs)

    def classifier(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
        return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, **kwargs)

    encoder.__doc__ = classifier.__doc__ = f"{name}: {depth}-layer ResNet, shortcut option {shortcut}."
    encoder.output_strides = OUTPUT_STRIDES  # type: ignore[attr-defined]  (create_encoder's output_stride)
    register_encoder(name)(encoder)
    register_classifier(name)(classifier)


def _register_cifar(name: str, depth: int, shortcut: str) -> None:
    def classifier(num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> CifarResNet:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, **kwargs)

    classifier.__doc__ = f"{name}: {depth}-layer CIFAR ResNet (He et al. 2016, Section 4.2), shortcut {shortcut}."
    register_classifier(name)(classifier)


for _depth in IMAGENET_DEPTHS:
    _register_imagenet(f"resnet{_depth}", _depth, "B")
    _register_imagenet(f"resnet{_depth}_a", _depth, "A")
    _register_imagenet(f"resnet{_depth}_c", _depth, "C")
for _depth in (18, 34):
    _register_imagenet(f"plain{_depth}", _depth, "none")
for _depth in (20, 32, 44, 56, 110, 1202):
    _register_cifar(f"cifar_resnet{_depth}", _depth, "A")
for _depth in (20, 32, 44, 56, 110):
    _register_cifar(f"cifar_plain{_depth}", _depth, "none")


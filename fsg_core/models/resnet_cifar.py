"""CIFAR ResNets: ResNet-20/32/44/56/110 (16-32-64 channels) and CIFAR ResNet-18 (64-512).

BasicBlocks with a 1x1-conv + BatchNorm shortcut where the shape changes (option B), and the FSG
head: global average pooling (adaptive, so 8x8 inputs work), BatchNorm1d, then a (binary) linear.
"""

from __future__ import annotations

from torch import Tensor, nn

from fsg_core.models import register
from fsg_core.models.factory import LayerFactory

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    def __init__(self, f: LayerFactory, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = f.conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = f.conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(f.conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))
        self.act1 = f.activation()
        self.act2 = f.activation()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet: stem conv, ``len(widths)`` stages of ``blocks`` BasicBlocks, FSG head."""

    def __init__(
        self, f: LayerFactory, blocks: list[int], widths: list[int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.conv1 = f.conv(in_channels, widths[0], 3, 1, 1, first=True)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = f.activation()
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(f, in_planes, width, 2 if (i > 0 and j == 0) else 1))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_head = nn.BatchNorm1d(in_planes)
        self.fc = f.linear(in_planes, num_classes, last=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.stages(x)
        x = self.pool(x).flatten(1)  # (N, C)
        return self.fc(self.bn_head(x))


def _cifar_resnet(depth: int) -> None:
    assert (depth - 2) % 6 == 0
    n = (depth - 2) // 6

    @register(f"resnet{depth}")
    def build(f: LayerFactory, num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(f, [n, n, n], [16, 32, 64], num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth}: {n} BasicBlocks per stage, 16-32-64 channels."


for _depth in (20, 32, 44, 56, 110):
    _cifar_resnet(_depth)


@register("resnet18")
def resnet18(f: LayerFactory, num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, 2 BasicBlocks per stage, 64-128-256-512 channels."""
    return CifarResNet(f, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels)

"""VGG-small (LQ-Nets' CIFAR VGG): six 3x3 convs (128-128-256-256-512-512), three max-pools."""

from __future__ import annotations

from torch import Tensor, nn

from fsg_core.models import register
from fsg_core.models.factory import LayerFactory

__all__ = ["VGGSmall"]


class VGGSmall(nn.Module):
    """Inputs must be at least 8x8 (three 2x2 max-pools); pooling to 1x1 is adaptive."""

    def __init__(self, f: LayerFactory, num_classes: int, in_channels: int) -> None:
        super().__init__()
        widths = [128, 128, 256, 256, 512, 512]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(widths):
            layers.append(f.conv(c_in, w, 3, 1, 1, first=(i == 0)))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(w), f.activation()]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_head = nn.BatchNorm1d(c_in)
        self.fc = f.linear(c_in, num_classes, last=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.bn_head(x))


@register("vgg_small")
def vgg_small(f: LayerFactory, num_classes: int, in_channels: int) -> nn.Module:
    return VGGSmall(f, num_classes, in_channels)

"""``LayerFactory``: how an architecture asks for its convs, linears and activations.

Architectures never decide what is binary; the factory does, from the binarization settings, so
one ResNet definition serves full precision, W1A32 and W1A1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fsg_core.binary import Binarizer, BinaryConv2d, BinaryLinear
from fsg_core.estimators.base import Estimator

__all__ = ["LayerFactory"]


@dataclass
class LayerFactory:
    """Builds layers binary or full precision.

    Attributes:
        binarizer: the weights' forward binarizer; None builds a full-precision network.
        estimator: the weights' estimator (shared by all binary layers).
        act_estimator: the activations' estimator; None keeps activations full precision.
        keep_first_last_fp: the first conv and the last linear stay full precision (W1A1 habit).
    """

    binarizer: Binarizer | None = None
    estimator: Estimator | None = None
    act_estimator: Estimator | None = None
    keep_first_last_fp: bool = False

    def _binary(self, edge: bool) -> bool:
        return self.binarizer is not None and self.estimator is not None and not (edge and self.keep_first_last_fp)

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        first: bool = False,
    ) -> nn.Conv2d:
        """A conv without bias (BatchNorm follows). ``first`` marks the stem: its input is the image,
        which is never binarized."""
        if not self._binary(first):
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        assert self.binarizer is not None
        return BinaryConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            binarizer=self.binarizer,
            estimator=self.estimator,
            act_estimator=None if first else self.act_estimator,
        )

    def linear(self, in_features: int, out_features: int, *, last: bool = False) -> nn.Linear:
        if not self._binary(last):
            return nn.Linear(in_features, out_features)
        assert self.binarizer is not None
        return BinaryLinear(
            in_features,
            out_features,
            binarizer=self.binarizer,
            estimator=self.estimator,
            act_estimator=self.act_estimator,
        )

    def activation(self) -> nn.Module:
        """ReLU, or Hardtanh when activations are binary (a ReLU before sign makes every input +1)."""
        return nn.Hardtanh(inplace=False) if self.act_estimator is not None else nn.ReLU(inplace=True)

"""Binary layers: forward binarizers (``dorefa``, ``bwn``), ``BinaryConv2d`` and ``BinaryLinear``.

A binary layer keeps a full-precision latent weight ``W``. Its forward maps ``W`` to ``x`` (the value
whose sign is the binary weight), applies the estimator's sign (forward ±1, estimator backward) and,
for ``bwn``, a detached scale. Autograd supplies ``∂x/∂W`` (the *calibration* ``c``), so the weight
gradient is ``g · ∂sign/∂x · c`` with ``g = ∂L/∂Ŵ`` (FSG_SPEC §2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_core.estimators.base import Estimator, sign

__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "Binarizer",
    "binary_layers",
    "set_binary",
    "sign",
]

_EPS = 1e-12


@dataclass(frozen=True)
class Binarizer:
    """A forward binarizer of weights.

    ``dorefa`` (FSG's default): ``w~ = tanh(W) / (2 max|tanh W|) + 1/2`` and ``Ŵ = 2 round(w~) - 1``.
    Here ``x = 2 w~ - 1 = tanh(W) / max|tanh W|`` (max detached) and ``Ŵ = sign(x)`` with
    sign(0) = +1 (``round`` would send w~ = 1/2 to -1 under round-half-to-even). No scale.

    ``bwn``: ``x = W`` and ``Ŵ = a sign(W)`` with ``a = mean|W|`` per layer or per output channel,
    detached.
    """

    kind: Literal["dorefa", "bwn"] = "dorefa"
    per_channel: bool = False

    def latent(self, w: Tensor) -> Tensor:
        """``x``, differentiable in ``w``: the binary weight is ``sign(x)`` (times ``scale``)."""
        if self.kind == "dorefa":
            t = torch.tanh(w)
            return t / t.detach().abs().max().clamp_min(_EPS)
        return w

    def tilde(self, w: Tensor, latent: Tensor | None = None) -> Tensor:
        """``w~``, the hypernetworks' input: dorefa's value in [0, 1]; ``W`` itself for bwn.

        ``latent``: ``latent(w)`` when the caller has it already (saves a tanh over the layer).
        """
        if self.kind == "dorefa":
            return (self.latent(w) if latent is None else latent) * 0.5 + 0.5
        return w

    def calibration(self, w: Tensor) -> Tensor:
        """``c = ∂x/∂W``: ``(1 - tanh² W) / max|tanh W|`` for dorefa, 1 for bwn."""
        if self.kind == "dorefa":
            t = torch.tanh(w)
            return (1.0 - t * t) / t.abs().max().clamp_min(_EPS)
        return torch.ones_like(w)

    def scale(self, w: Tensor) -> Tensor | None:
        """The detached scale ``a`` (shaped to broadcast over ``w``), or None for dorefa."""
        if self.kind == "dorefa":
            return None
        a = w.detach().abs()
        if self.per_channel:
            return a.flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))
        return a.mean()


class BinaryLayer(nn.Module):
    """State shared by binary conv and linear layers.

    Attributes:
        binarizer: how the latent weight becomes ±1 (or ±a).
        estimator: the weight estimator (shared by every layer of a model).
        act_estimator: the activation estimator; None keeps activations full precision.
        binarize_weights / binarize_activations: switched off for full-precision pre-training and,
            for weights, in a packed inference model whose ``weight`` already holds ±a.
        lookahead: set by a learned estimator before a step; replaces ``W`` in the forward.
        lookahead_bias: likewise for the bias (MetaQuant's ``b - lr R_b``); None uses ``bias``.
        capture: record ``g = ∂L/∂sign`` of the next backward in ``captured_grad``.
        last_tilde: ``w~`` of the last captured forward (detached), the hypernetworks' input.
    """

    weight: Tensor
    binarizer: Binarizer
    estimator: Estimator | None
    act_estimator: Estimator | None

    def _init_binary(
        self,
        binarizer: Binarizer,
        estimator: Estimator | None,
        act_estimator: Estimator | None,
    ) -> None:
        self.binarizer = binarizer
        self.estimator = estimator
        self.act_estimator = act_estimator
        self.binarize_weights = estimator is not None
        self.binarize_activations = act_estimator is not None
        self.lookahead: Tensor | None = None
        self.lookahead_bias: Tensor | None = None
        self.capture = False
        self.captured_grad: Tensor | None = None
        self.last_tilde: Tensor | None = None

    def _store_grad(self, grad: Tensor) -> None:
        self.captured_grad = grad.detach()

    def binary_weight(self) -> Tensor:
        """The weight the layer computes with: ``sign(x)`` through the estimator, times the scale."""
        if not self.binarize_weights or self.estimator is None:
            return self.weight
        w = self.weight if self.lookahead is None else self.lookahead
        x = self.binarizer.latent(w)
        signs = self.estimator.binarize(x)
        if self.capture and torch.is_grad_enabled():
            self.last_tilde = self.binarizer.tilde(w.detach(), x.detach())
            if signs.requires_grad:
                signs.register_hook(self._store_grad)
        scale = self.binarizer.scale(w)
        return signs if scale is None else signs * scale

    @torch.no_grad()
    def sign_bits(self) -> Tensor:
        """Which binary weights are +1 now (bool, shaped like ``weight``), for the flip rate.

        Both binarizers keep the sign of ``W`` (dorefa's tanh is odd and increasing, its max positive), so
        for an estimator whose forward is ``sign(x)`` this is ``W >= 0``, with no tanh; an estimator with
        another forward (BiPer's ``sign(sin(w x))``) is asked for its real binary weight.
        """
        if not self.binarize_weights or self.estimator is None:
            return self.weight >= 0
        if self.estimator.forward_is_sign:
            return self.weight >= 0
        return self.binary_weight() >= 0

    def effective_bias(self) -> Tensor | None:
        bias: Tensor | None = getattr(self, "bias", None)
        return bias if self.lookahead_bias is None else self.lookahead_bias

    def binary_input(self, x: Tensor) -> Tensor:
        if self.binarize_activations and self.act_estimator is not None:
            return self.act_estimator.binarize(x)
        return x


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    """A conv layer with binary weights (and optionally binary input activations)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        *,
        binarizer: Binarizer,
        estimator: Estimator | None,
        act_estimator: Estimator | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self._init_binary(binarizer, estimator, act_estimator)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C', H', W')
        return self._conv_forward(self.binary_input(x), self.binary_weight(), self.effective_bias())


class BinaryLinear(nn.Linear, BinaryLayer):
    """A linear layer with binary weights (and optionally binary input activations)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        binarizer: Binarizer,
        estimator: Estimator | None,
        act_estimator: Estimator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(binarizer, estimator, act_estimator)

    def forward(self, x: Tensor) -> Tensor:  # (N, F) -> (N, F')
        return F.linear(self.binary_input(x), self.binary_weight(), self.effective_bias())


def binary_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLayer]]:
    """The model's binary layers with their qualified names, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, BinaryLayer) and module.estimator is not None:
            yield name, module


def set_binary(model: nn.Module, enabled: bool) -> None:
    """Switch binarization on (binarized training) or off (full-precision pre-training)."""
    for module in model.modules():
        if isinstance(module, BinaryLayer):
            module.binarize_weights = enabled and module.estimator is not None
            module.binarize_activations = enabled and module.act_estimator is not None

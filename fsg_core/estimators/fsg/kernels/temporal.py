"""The fused temporal slow net as an autograd op, whatever the backend (C++ on CPU, Triton on CUDA).

The split of the work (FSG_SPEC §8): position 0 of every sequence is the layer's LRE token, the same
for all of the layer's coordinates, so what it contributes (its share of the causal conv at each later
position, and the state ``h0`` it leaves) is computed here once per layer in PyTorch, differentiably;
the kernel runs positions 1..k for every coordinate and hands back the gradients of those per-layer
constants, summed over the layer, and autograd carries them to the token and the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Backend", "kernel_weights", "position_zero", "temporal_ssm"]

WEIGHT_NAMES = ("win_x", "win_z", "taps", "convb", "wx", "wdt", "bdt", "A", "Dp", "wout", "tokconv", "h0")


@dataclass(frozen=True)
class Backend:
    """A kernel pair. ``forward(hist, order, layer_start, scale, weights) -> out (N,)`` and
    ``backward(gout, hist, order, layer_start, scale, weights) -> gradients of the 12 weights``."""

    name: str
    forward: Callable[..., Tensor]
    backward: Callable[..., Sequence[Tensor]]

    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        return self  # stateless; torch's op handles are not copyable


def position_zero(ssm: Any, tokens: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The per-layer constants of position 0, from the layer tokens (layers, 1).

    Returns:
        ``tokconv`` (layers, k, D): the token's conv contribution at history positions 1..k, and
        ``h0`` (layers, D, S): the scan state after the token, ``dt_0 x_0 B_0``.
    """
    d = ssm.d_inner
    s = ssm.d_state
    win_x = ssm.in_proj.weight[:d, 0]  # (D,)
    taps = ssm.conv.weight[:, 0].flip(-1)  # (D, d_conv), taps[:, j] weighs x_{t-j}
    xin0 = tokens[:, :1] * win_x  # (layers, D)
    x0 = F.silu(ssm.conv.bias + taps[:, 0] * xin0)
    proj = x0 @ ssm.x_proj.weight.t()  # (layers, 1 + 2S)
    dt0 = F.softplus(proj[:, :1] * ssm.dt_proj.weight[:, 0] + ssm.dt_proj.bias)  # (layers, D)
    h0 = (dt0 * x0).unsqueeze(-1) * proj[:, None, 1 : 1 + s]  # (layers, D, S)
    d_conv = taps.shape[1]
    reach = [taps[:, t] if t < d_conv else torch.zeros_like(taps[:, 0]) for t in range(1, k + 1)]
    tokconv = xin0.unsqueeze(1) * torch.stack(reach)  # (layers, k, D)
    return tokconv.contiguous(), h0.contiguous()


def kernel_weights(ssm: Any, tokens: Tensor, k: int) -> list[Tensor]:
    """The 12 tensors the kernels read, in ``WEIGHT_NAMES`` order, each in the graph of ``ssm`` and ``tokens``."""
    d = ssm.d_inner
    w_in = ssm.in_proj.weight[:, 0]
    tokconv, h0 = position_zero(ssm, tokens, k)
    return [
        w_in[:d].contiguous(),
        w_in[d:].contiguous(),
        ssm.conv.weight[:, 0].flip(-1).contiguous(),
        ssm.conv.bias,
        ssm.x_proj.weight,
        ssm.dt_proj.weight[:, 0].contiguous(),
        ssm.dt_proj.bias,
        -torch.exp(ssm.A_log),
        ssm.D,
        ssm.out_proj.weight[0].contiguous(),
        tokconv,
        h0,
    ]


class _FusedTemporalSSM(torch.autograd.Function):
    """Forward and backward through a ``Backend``; stores only its inputs (the backward recomputes)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, backend: Backend, hist: Tensor, order: Tensor, layer_start: Tensor, scale: Tensor, *weights: Tensor
    ) -> Tensor:
        ctx.backend = backend
        ctx.save_for_backward(hist, order, layer_start, scale, *weights)
        return backend.forward(hist, order, layer_start, scale, list(weights))

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hist, order, layer_start, scale, *weights = ctx.saved_tensors
        grads = ctx.backend.backward(gout.contiguous(), hist, order, layer_start, scale, list(weights))
        return (None, None, None, None, None, *grads)


def temporal_ssm(
    backend: Backend,
    ssm: Any,
    hist: Tensor,
    order: Tensor,
    layer_start: Tensor,
    scale: Tensor,
    tokens: Tensor,
) -> Tensor:
    """``s`` (N,) for every coordinate: the SSM's last output on ``[token_l, hist[order] / scale_l]``,
    times ``scale_l``.

    Args:
        backend: the kernels to run.
        ssm: the ``SelectiveSSM`` (d_model 1) whose parameters are used.
        hist: (K, N) gradient history rows (a ring buffer: ``order`` says which rows, oldest first).
        order: (k,) int64 row indices, oldest first, k >= 1.
        layer_start: (layers + 1,) int64 offsets of each layer's coordinates, 0 to N.
        scale: (layers,) per-layer normaliser (no gradient).
        tokens: (layers, 1) the LREs.
    """
    weights = kernel_weights(ssm, tokens, int(order.numel()))
    return _FusedTemporalSSM.apply(backend, hist.contiguous(), order, layer_start, scale.detach(), *weights)

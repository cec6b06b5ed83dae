"""MetaQuant: a meta network generates the weight gradient from ``g`` (and ``w~``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from fsg_core.estimators.base import EstimatorParams, register
from fsg_core.estimators.hypernets import CoordinateLSTM, CoordinateMLP
from fsg_core.estimators.lookahead import LookaheadEstimator


@register("metaquant")
class MetaQuant(LookaheadEstimator):
    """MetaQuant: learned ``∂L/∂W = c * M(...)`` with a look-ahead forward ``W' = W - lr c M``.

    Variants of ``M``: ``fcgrad`` ``M(g)``; ``multifc`` ``g * M(w~)``; ``lstmfc`` ``g * M(LSTM(w~))``,
    the LSTM's state carried across iterations per coordinate. ``c`` is the binarizer's
    calibration, as in FSG's fast path. The meta network is trained by Adam on the loss of the
    look-ahead forward; the base update is ``W.grad = c * M``.

    The look-ahead follows the research code (``lookahead="update"``, the default): its value is
    ``W - lr R`` with ``R`` the update the base optimizer applied at the previous step, its gradient
    path ``-lr c M``, and each binary layer's bias computes at ``b - lr R_b``
    (``fsg_core.estimators.lookahead``). ``lookahead="proposal"`` forwards at ``W - lr c M``, the
    paper's equation and fsg's behaviour before 2026-12 (the forward then moves ~1e-4 as far under Adam).

    References:
        Chen et al., "MetaQuant: Learning to Quantize by Learning to Penetrate Non-differentiable
        Quantization", NeurIPS 2019. FSG_SPEC.md §3.
    """

    reference = "Chen et al. 2019 (MetaQuant)"

    class Params(EstimatorParams):
        name: Literal["metaquant"] = "metaquant"
        variant: Literal["fcgrad", "multifc", "lstmfc"] = Field("multifc", description="meta network")
        hidden: int = Field(100, ge=1, le=4096, description="hidden width (lstmfc: LSTM state size)")
        activation: Literal["none", "relu", "tanh"] = Field("none", description="fcgrad/multifc hidden activation")
        meta_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the meta network")
        stats_every: int = Field(
            4, ge=1, le=10_000, description="steps between samples of the epoch statistics (meta_grad_rms)"
        )
        lookahead: Literal["update", "proposal"] = Field(
            "update",
            description="the look-ahead forward's value: W - lr R with R the previous step's update and the "
            "gradient path of -lr c M, and the bias at b - lr R_b (update: the research code's value trick), "
            "or W - lr c M (proposal)",
        )

    params: Params

    def build(self, device: torch.device) -> None:
        p = self.params
        self.net: nn.Module
        if p.variant == "lstmfc":
            self.net = CoordinateLSTM(p.hidden).to(device)
        else:
            self.net = CoordinateMLP(p.hidden, p.activation).to(device)
        self.meta_optimizers = [torch.optim.Adam(self.net.parameters(), lr=p.meta_lr)]
        self.prev_grad: Tensor | None = None
        self.prev_tilde: Tensor | None = None
        self.lstm_state: tuple[Tensor, Tensor] | None = None
        self._next_state: tuple[Tensor, Tensor] | None = None

    def meta_modules(self) -> list[nn.Module]:
        return [self.net]

    def ready(self) -> bool:
        return self.prev_grad is not None

    def propose(self, calibration: Tensor, stats: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        assert self.prev_grad is not None and self.prev_tilde is not None
        g, tilde = self.prev_grad, self.prev_tilde
        if self.params.variant == "fcgrad":
            m = self.net(g)
        elif self.params.variant == "multifc":
            m = g * self.net(tilde)
        else:
            out, state = self.net(tilde, self.lstm_state)
            self._next_state = (state[0].detach(), state[1].detach())
            m = g * out
        direction = calibration * m
        base = direction.detach()
        if not stats:
            return direction, base, {}
        return (
            direction,
            base,
            {
                "meta_grad_rms": base.pow(2).mean().sqrt(),
                # How far the learned update turns from the STE gradient c * g.
                "update_ste_cos": torch.nn.functional.cosine_similarity(base, calibration * g, dim=0),
            },
        )

    def observe(self, grads: Tensor, tildes: Tensor) -> None:
        self.prev_grad, self.prev_tilde = grads, tildes
        if self._next_state is not None:
            self.lstm_state, self._next_state = self._next_state, None

    def extra_state(self) -> dict[str, Any]:
        return {"prev_grad": self.prev_grad, "prev_tilde": self.prev_tilde, "lstm_state": self.lstm_state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.prev_grad, self.prev_tilde = state["prev_grad"], state["prev_tilde"]
        self.lstm_state = state["lstm_state"]

"""FSG, Fast and Slow Gradient generation: the paper's method (FSG_SPEC §4)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from fsg_core.estimators.base import EstimatorParams, register
from fsg_core.estimators.fsg.embeddings import LayerEmbeddings
from fsg_core.estimators.fsg.history import GradientHistory
from fsg_core.estimators.fsg.slow_net import SlowNet
from fsg_core.estimators.hypernets import CoordinateMLP
from fsg_core.estimators.lookahead import LookaheadEstimator

__all__ = ["FSG", "PRESETS"]

# Slow-net sizes by name. ``paper`` is the paper's (a GPU feature: ~47 s + 90 s a step on 2 CPU
# cores for ResNet-20, FSG_SPEC §7); ``lite`` is the CPU default.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"expand": 100, "d_state": 16, "d_conv": 8},
    "lite": {"expand": 8, "d_state": 4, "d_conv": 8},
}


@register("fsg")
class FSG(LookaheadEstimator):
    """FSG: learned gradient of sign from a fast net and a slow, history-reading net.

    Per iteration, with ``g`` the previous step's ``∂L/∂Ŵ`` (averaged over workers) and ``c`` the
    binarizer's calibration:

    * fast: ``f = g * F(w~)``, ``F`` a coordinate-wise MLP 1-100-100-1 (a learned scalar without activation);
    * HGS: ``g`` joins a FIFO of the last K gradients;
    * slow: ``s = S([e_l ; g_{t-K} .. g_{t-1}])``, ``S`` a selective SSM (or GRU), ``e_l`` the layer's LRE;
    * look-ahead: the forward uses ``W' = W - lr (a s + (1 - a) c f)``, and its loss trains F, S, LRE
      (Adam, lr 1e-2 for F, 1e-3 for S and LRE);
    * base update: ``update=fast`` (research code, default) ``W.grad = c f``; ``update=mix`` (paper
      text) ``W.grad = a s + (1 - a) c f``.

    ``slow_every = m`` recomputes ``s`` every m steps and reuses it in between (1 is the paper).
    ``lookahead="update"`` takes MetaQuant's research-code value trick (``fsg_core.estimators.lookahead``);
    the default stays FSG_SPEC §4's ``W - lr * direction``.

    References:
        "Fast and Slow Gradient Approximation for Binary Neural Network Optimization", AAAI 2025,
        arXiv 2412.11777. FSG_SPEC.md §4.
    """

    reference = "arXiv 2412.11777 (AAAI 2025)"

    class Params(EstimatorParams):
        name: Literal["fsg"] = "fsg"
        alpha: float = Field(0.9, ge=0, le=1, description="weight a of the slow gradient")
        history: int = Field(5, ge=1, le=64, description="K, gradients kept in the HGS")
        fast_hidden: int = Field(100, ge=1, le=4096, description="fast net hidden width")
        fast_activation: Literal["none", "relu", "tanh"] = Field(
            "none", description="fast net activation; none (reference) makes it a learned scalar"
        )
        slow_net: Literal["ssm", "gru"] = Field("ssm", description="selective state space (paper) or GRU")
        preset: Literal["lite", "paper", "custom"] = Field(
            "lite", description="slow-net size: lite (CPU), paper (GPU), or custom (expand/d_state/d_conv)"
        )
        expand: int | None = Field(None, ge=1, le=512, description="SSM expansion (custom preset)")
        d_state: int | None = Field(None, ge=1, le=256, description="SSM state size (custom preset)")
        d_conv: int | None = Field(None, ge=1, le=64, description="SSM causal conv width (custom preset)")
        gru_hidden: int = Field(16, ge=1, le=1024, description="GRU width when slow_net=gru")
        layout: Literal["temporal", "flat"] = Field("temporal", description="sequence layout (FSG_SPEC §4)")
        update: Literal["fast", "mix"] = Field("fast", description="base update: c f (fast) or a s + (1-a) c f (mix)")
        meta_lr_fast: float = Field(1e-2, gt=0, le=1, description="Adam lr of the fast net")
        meta_lr_slow: float = Field(1e-3, gt=0, le=1, description="Adam lr of the slow net and the LREs")
        slow_every: int = Field(1, ge=1, le=10_000, description="recompute the slow gradient every m steps")
        stats_every: int = Field(
            4, ge=1, le=10_000, description="steps between samples of the epoch statistics (fast_rms, slow_rms, ...)"
        )
        normalize: bool = Field(True, description="feed the slow net per-layer RMS-normalised gradients")
        slow: bool = Field(
            True,
            description="false: the slow gradient is zero, alpha unchanged (the ablation of the slow net; "
            "the look-ahead is W - lr (1 - a) c f)",
        )
        lre: bool = Field(True, description="false: every layer's token is a fixed zero (no layer recognition)")
        lookahead: Literal["proposal", "update"] = Field(
            "proposal",
            description="the look-ahead forward's value: W - lr (a s + (1-a) c f) (proposal, FSG_SPEC §4), or "
            "MetaQuant's value trick W - lr R with R the previous step's update, same gradient path (update)",
        )
        chunk_size: int = Field(4096, ge=64, le=2**26, description="coordinates per slow-net chunk")
        compile: bool = Field(True, description="fuse the slow net with torch.compile (eager if it fails)")
        checkpoint: bool = Field(True, description="recompute slow-net chunks in backward (memory O(chunk), not O(N))")
        kernel: Literal["auto", "fused", "torch"] = Field(
            "auto",
            description=(
                "temporal SSM slow net: fused kernel (C++ on CPU, Triton on CUDA) when it builds, else PyTorch "
                "with a warning (auto); the kernel or an error (fused); the PyTorch reference (torch)"
            ),
        )

        @model_validator(mode="after")
        def _sizes_match_preset(self) -> FSG.Params:
            sizes = (self.expand, self.d_state, self.d_conv)
            if self.preset != "custom" and any(v is not None for v in sizes):
                raise ValueError("expand, d_state and d_conv are set by the preset; use preset='custom' to set them")
            if self.preset == "custom" and any(v is None for v in sizes):
                raise ValueError("preset='custom' needs expand, d_state and d_conv")
            return self

        def slow_sizes(self) -> dict[str, int]:
            if self.preset == "custom":
                assert self.expand and self.d_state and self.d_conv
                return {"expand": self.expand, "d_state": self.d_state, "d_conv": self.d_conv}
            return PRESETS[self.preset]

    params: Params

    def build(self, device: torch.device) -> None:
        p = self.params
        self.fast = CoordinateMLP(p.fast_hidden, p.fast_activation).to(device)
        self.lre = LayerEmbeddings(len(self.sizes)).to(device)
        if not p.lre:  # the ablation: one fixed, uninformative token for every layer
            torch.nn.init.zeros_(self.lre.table.weight)
            self.lre.requires_grad_(False)
        self.slow = SlowNet(
            self.sizes,
            kind=p.slow_net,
            layout=p.layout,
            gru_hidden=p.gru_hidden,
            normalize=p.normalize,
            chunk_size=p.chunk_size,
            compile=p.compile,
            checkpoint=p.checkpoint,
            history_length=p.history,
            kernel=p.kernel,
            **p.slow_sizes(),
        ).to(device)
        self.slow.backend(device)  # build the kernel now: a job asking for `fused` fails at setup, not mid-epoch
        self.history = GradientHistory(p.history, sum(self.sizes), device)
        self.prev_tilde: Tensor | None = None
        self._slow_cache: Tensor | None = None
        self.meta_optimizers = [torch.optim.Adam(self.fast.parameters(), lr=p.meta_lr_fast)]
        slow_params = [q for q in [*self.slow.parameters(), *self.lre.parameters()] if q.requires_grad]
        if p.slow and slow_params:
            self.meta_optimizers.append(torch.optim.Adam(slow_params, lr=p.meta_lr_slow))

    def meta_modules(self) -> list[nn.Module]:
        return [self.fast, self.slow, self.lre]

    def ready(self) -> bool:
        return len(self.history) > 0

    def slow_gradient(self) -> Tensor:
        """``s`` for every binary weight, flat (N,); in the graph of S and the LREs."""
        return self.slow(self.history.buffer, self.lre(), order=self.history.order())

    def propose(self, calibration: Tensor, stats: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        p = self.params
        assert self.prev_tilde is not None
        g = self.history.latest()
        f = g * self.fast(self.prev_tilde)
        if not p.slow:
            s = torch.zeros_like(f)  # the ablation: no slow gradient, and the slow net never runs
        elif self.steps % p.slow_every == 0 or self._slow_cache is None:
            s = self.slow_gradient()
            self._slow_cache = s.detach()
        else:
            s = self._slow_cache
        cf = calibration * f
        direction = p.alpha * s + (1.0 - p.alpha) * cf
        base = cf.detach() if p.update == "fast" else direction.detach()
        if not stats:
            return direction, base, {}
        # What each term contributes to the look-ahead, and how the learned update relates to the STE
        # gradient c * g: is the slow net alive, and does the update still point where STE's does?
        slow_term = (p.alpha * s).detach().pow(2).mean().sqrt()
        fast_term = ((1.0 - p.alpha) * cf).detach().pow(2).mean().sqrt()
        figures = {
            "fast_rms": cf.detach().pow(2).mean().sqrt(),
            "slow_rms": s.detach().pow(2).mean().sqrt(),
            "fast_slow_cos": torch.nn.functional.cosine_similarity(cf.detach(), s.detach(), dim=0),
            "slow_term_rms": slow_term,
            "fast_term_rms": fast_term,
            "slow_fast_ratio": slow_term / fast_term.clamp_min(1e-30),
            "update_ste_cos": torch.nn.functional.cosine_similarity(direction.detach(), calibration * g, dim=0),
        }
        if p.fast_activation == "none":
            figures["fast_scale"] = self.fast.scale().detach()
        return direction, base, figures

    def observe(self, grads: Tensor, tildes: Tensor) -> None:
        self.history.push(grads)
        self.prev_tilde = tildes

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history.state_dict(), "prev_tilde": self.prev_tilde, "slow_cache": self._slow_cache}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state["history"])
        self.prev_tilde = state["prev_tilde"]
        self._slow_cache = state["slow_cache"]

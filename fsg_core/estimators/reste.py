"""ReSTE: the rectified straight-through estimator."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register
from fsg_core.schedules import reste_o


@register("reste")
class ReSTE(ClosedFormEstimator):
    """ReSTE: forward ``sign(x)``, backward the derivative of ``sign(x) |x|^(1/o)``.

    ``∂sign/∂x ≈ (1/o) |x|^((1-o)/o)`` for ``threshold < |x| <= clip``; the secant slope
    ``threshold^(1/o) / threshold`` for ``|x| <= threshold`` (the power's derivative is unbounded
    at 0); 0 beyond ``clip``. ``o = 1 + (o_end - 1)(1 - cos(pi/2 progress))`` moves the estimator
    from STE (o = 1) towards the sign.

    References:
        Wu et al., "Estimator Meets Equilibrium Perspective: A Rectified Straight Through
        Estimator for Binary Neural Networks Training", ICCV 2023. FSG_SPEC.md §3.
    """

    reference = "Wu et al. 2023 (ReSTE)"

    class Params(EstimatorParams):
        name: Literal["reste"] = "reste"
        o_end: float = Field(3.0, ge=1, le=20, description="power o reached at the end of training")
        threshold: float = Field(0.1, gt=0, lt=1, description="below this |x| the slope is constant")
        clip: float = Field(1.5, gt=0, le=100, description="no gradient beyond this |x|")

    def grad(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, ReSTE.Params)
        o = reste_o(progress, self.params.o_end)
        th, clip = self.params.threshold, self.params.clip
        a = x.abs()
        inner = (1.0 / o) * a.clamp_min(th) ** ((1.0 - o) / o)
        flat = torch.full_like(x, th ** (1.0 / o) / th)
        return torch.where(a <= th, flat, torch.where(a <= clip, inner, torch.zeros_like(x)))

    def statistics(self) -> dict[str, float]:
        assert isinstance(self.params, ReSTE.Params)
        return {"reste_o": reste_o(self.progress, self.params.o_end)}

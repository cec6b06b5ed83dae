"""FDA: the Fourier-series derivative approximation of sign."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register
from fsg_core.schedules import fda_terms


@register("fda")
class FDA(ClosedFormEstimator):
    """FDA: forward ``sign(x)``, backward ``(4w/pi) sum_{i=0..n} cos((2i+1) w x)``, 0 for ``|x| > 1``.

    The sum is the derivative of the square wave's Fourier series truncated at ``n``;
    ``n = n_start + floor(n_growth progress)`` adds terms as training goes on.

    References:
        Xu et al., "Learning Frequency Domain Approximation for Binary Neural Networks",
        NeurIPS 2021. FSG_SPEC.md §3.
    """

    reference = "Xu et al. 2021 (FDA)"

    class Params(EstimatorParams):
        name: Literal["fda"] = "fda"
        omega: float = Field(0.1, gt=0, le=100, description="base angular frequency w")
        n_start: int = Field(9, ge=0, le=200, description="highest Fourier index at the start")
        n_growth: int = Field(9, ge=0, le=200, description="terms added over training")

    def grad(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, FDA.Params)
        w = self.params.omega
        n = fda_terms(progress, self.params.n_start, self.params.n_growth)
        odd = torch.arange(n + 1, dtype=x.dtype, device=x.device) * 2 + 1  # (n+1,)
        # Sum over terms without materialising (numel, n+1) for big layers: loop is n+1 <= 400 passes.
        total = torch.zeros_like(x)
        for k in odd.tolist():
            total += torch.cos(k * w * x)
        return torch.where(x.abs() <= 1.0, (4.0 * w / math.pi) * total, torch.zeros_like(x))

    def statistics(self) -> dict[str, float]:
        assert isinstance(self.params, FDA.Params)
        return {"fda_n": float(fda_terms(self.progress, self.params.n_start, self.params.n_growth))}

"""IR-Net's Error Decay Estimator."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register
from fsg_core.schedules import ede_t


@register("ede")
class EDE(ClosedFormEstimator):
    """EDE: forward ``sign(x)``, backward ``∂sign/∂x ≈ k t (1 - tanh²(t x))``.

    ``t = 10^(log10 Tmin + (log10 Tmax - log10 Tmin) progress)`` and ``k = max(1/t, 1)``: early in
    training the backward is close to identity, late it approaches the true (spiky) derivative.

    References:
        Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural
        Networks" (IR-Net), CVPR 2020. FSG_SPEC.md §3.
    """

    reference = "Qin et al. 2020 (IR-Net)"

    class Params(EstimatorParams):
        name: Literal["ede"] = "ede"
        t_min: float = Field(0.1, gt=0, le=100, description="temperature at the start of training")
        t_max: float = Field(10.0, gt=0, le=1000, description="temperature at the end of training")

        @model_validator(mode="after")
        def _ordered(self) -> EDE.Params:
            if self.t_min > self.t_max:
                raise ValueError("t_min must not exceed t_max")
            return self

    def grad(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, EDE.Params)
        t = ede_t(progress, self.params.t_min, self.params.t_max)
        k = max(1.0 / t, 1.0)
        return k * t * (1.0 - torch.tanh(t * x) ** 2)

    def statistics(self) -> dict[str, float]:
        assert isinstance(self.params, EDE.Params)
        return {"ede_t": ede_t(self.progress, self.params.t_min, self.params.t_max)}

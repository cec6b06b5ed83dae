"""BiPer: binary neural networks with periodic functions."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register, sign


@register("biper")
class BiPer(ClosedFormEstimator):
    """BiPer: forward ``sign(sin(w x))``, backward ``w cos(w x)``.

    Two stages: for the first ``continuous_fraction`` of training the forward is the continuous
    ``sin(w x)`` itself (the network learns with a smooth periodic weight); afterwards it is
    binary. The backward is ``w cos(w x)`` in both stages.

    References:
        Vargas et al., "BiPer: Binary Neural Networks using a Periodic Function", CVPR 2024.
        FSG_SPEC.md §3.
    """

    reference = "Vargas et al. 2024 (BiPer)"
    forward_is_sign = False

    class Params(EstimatorParams):
        name: Literal["biper"] = "biper"
        omega: float = Field(20.0, gt=0, le=1000, description="frequency w of the periodic function")
        continuous_fraction: float = Field(
            0.25, ge=0, lt=1, description="fraction of training in the continuous first stage"
        )

    def is_continuous(self, progress: float) -> bool:
        assert isinstance(self.params, BiPer.Params)
        return progress < self.params.continuous_fraction

    def forward_value(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, BiPer.Params)
        wave = torch.sin(self.params.omega * x)
        return wave if self.is_continuous(progress) else sign(wave)

    def grad(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, BiPer.Params)
        return self.params.omega * torch.cos(self.params.omega * x)

    def statistics(self) -> dict[str, float]:
        return {"biper_stage": 1.0 if self.is_continuous(self.progress) else 2.0}

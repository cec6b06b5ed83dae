"""The straight-through estimator and its clipped variant."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register


@register("ste")
class STE(ClosedFormEstimator):
    """Straight-through estimator: forward ``sign(x)``, backward ``∂sign/∂x ≈ 1``.

    References:
        Bengio et al., "Estimating or propagating gradients through stochastic neurons", 2013.
        FSG_SPEC.md §3.
    """

    reference = "Bengio et al. 2013"

    class Params(EstimatorParams):
        name: Literal["ste"] = "ste"

    def grad(self, x: Tensor, progress: float) -> Tensor:
        return torch.ones_like(x)


@register("clipped_ste")
class ClippedSTE(ClosedFormEstimator):
    """Clipped STE: forward ``sign(x)``, backward ``∂sign/∂x ≈ 1[|x| <= clip]``.

    References:
        Hubara et al., "Binarized Neural Networks", NeurIPS 2016. FSG_SPEC.md §3.
    """

    reference = "Hubara et al. 2016"

    class Params(EstimatorParams):
        name: Literal["clipped_ste"] = "clipped_ste"
        clip: float = Field(1.0, gt=0, le=100, description="gradient passes where |x| <= clip")

    def grad(self, x: Tensor, progress: float) -> Tensor:
        assert isinstance(self.params, ClippedSTE.Params)
        return (x.abs() <= self.params.clip).to(x.dtype)

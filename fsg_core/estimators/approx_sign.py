"""Bi-Real Net's piecewise-quadratic approximation of sign."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from fsg_core.estimators.base import ClosedFormEstimator, EstimatorParams, register


@register("approx_sign")
class ApproxSign(ClosedFormEstimator):
    """ApproxSign: forward ``sign(x)``, backward ``∂sign/∂x ≈ max(0, 2 - 2|x|)``.

    References:
        Liu et al., "Bi-Real Net", ECCV 2018. FSG_SPEC.md §3.
    """

    reference = "Liu et al. 2018 (Bi-Real Net)"

    class Params(EstimatorParams):
        name: Literal["approx_sign"] = "approx_sign"

    def grad(self, x: Tensor, progress: float) -> Tensor:
        return (2.0 - 2.0 * x.abs()).clamp_min(0.0)

"""``/v1/estimators``: the registered gradient estimators and their hyperparameters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fsg_core.estimators import describe
from service.api.deps import TenantDep

router = APIRouter(prefix="/estimators", tags=["estimators"])


@router.get("")
def list_estimators(_: TenantDep) -> list[dict[str, Any]]:
    """Every estimator: name, kind, reference and typed parameters (name, type, default, bounds, help)."""
    return describe()

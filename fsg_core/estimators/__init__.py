"""Gradient estimators of ``sign``, registered by name (FSG_SPEC §3).

Adding one: a module with a ``@register("name")`` class and a nested ``Params``, plus one import line
below. ``AnyEstimatorParams`` (the discriminated union over every registered ``Params``) then reaches
the spec, the API schema and the CLI listing with no other edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

# One line per estimator module; importing registers it.
from fsg_core.estimators import approx_sign, biper, ede, fda, fsg, metaquant, reste, ste  # noqa: E402,F401,I001
from fsg_core.estimators.base import (
    ClosedFormEstimator,
    Estimator,
    EstimatorParams,
    LearnedEstimator,
    UnknownEstimatorError,
    get,
    names,
    register,
    sign,
)

__all__ = [
    "AnyEstimatorParams",
    "ClosedFormEstimator",
    "ClosedFormParams",
    "Estimator",
    "EstimatorParams",
    "LearnedEstimator",
    "UnknownEstimatorError",
    "build_estimator",
    "describe",
    "get",
    "names",
    "register",
    "sign",
]


def _union(classes: list[type[Estimator]]) -> Any:
    members = tuple(cls.Params for cls in classes)
    return Annotated[Union[members], Field(discriminator="name")]  # noqa: UP007


if TYPE_CHECKING:
    AnyEstimatorParams = EstimatorParams
    ClosedFormParams = EstimatorParams
else:
    AnyEstimatorParams = _union([get(n) for n in names()])
    ClosedFormParams = _union([get(n) for n in names() if not get(n).learned])


def build_estimator(params: EstimatorParams) -> Estimator:
    """A fresh estimator instance for one training run."""
    return get(params.name)(params)


def describe() -> list[dict[str, Any]]:
    """Every estimator with its kind, reference and hyperparameters (name, type, default, bounds, help)."""
    out = []
    for name in names():
        cls = get(name)
        schema = cls.Params.model_json_schema()
        fields = []
        for field, info in schema.get("properties", {}).items():
            if field == "name":
                continue
            entry = {k: v for k, v in info.items() if k not in ("title",)}
            entry["name"] = field
            fields.append(entry)
        out.append(
            {
                "name": name,
                "class": cls.__name__,
                "kind": "learned" if cls.learned else "closed-form",
                "reference": cls.reference,
                "summary": (cls.__doc__ or "").strip().splitlines()[0],
                "params": fields,
            }
        )
    return out

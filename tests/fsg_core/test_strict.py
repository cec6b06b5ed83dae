"""Numbers in a spec are JSON numbers: no strings, no booleans, nothing infinite, everything bounded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, ValidationError

from fsg_core.spec import TrainSpec
from fsg_core.strict import numeric_leaves

BASE: dict[str, Any] = {"model": {"arch": "resnet20"}, "data": {"dataset": "synthetic"}, "epochs": 1}


@pytest.mark.parametrize(
    ("annotation", "want"),
    [
        (int, True),
        (float | None, True),
        (tuple[float, float], True),
        (list[Annotated[int, Field(ge=1)]], True),
        (int | Literal["auto"], False),  # a string is a valid choice there
        (str, False),
        (bool, None),
        (list[Any], False),
    ],
)
def test_which_fields_hold_numbers(annotation: Any, want: bool | None) -> None:
    assert numeric_leaves(annotation) is want


@pytest.mark.parametrize(
    ("patch", "loc", "msg"),
    [
        ({"epochs": "10"}, ("epochs",), "not a string"),
        ({"epochs": True}, ("epochs",), "not a boolean"),
        ({"optimizer": {"name": "sgd", "lr": "0.1"}}, ("optimizer", "lr"), "not a string"),
        ({"optimizer": {"name": "adam", "betas": [0.9, "0.99"]}}, ("optimizer", "betas"), "not a string"),
        ({"schedule": {"milestones": [True]}}, ("schedule", "milestones"), "not a boolean"),
        ({"estimator": {"name": "fsg", "history": "5"}}, ("estimator", "fsg", "history"), "not a string"),
        ({"schedule": {"min_lr": float("inf")}}, ("schedule", "min_lr"), "finite"),
        ({"optimizer": {"name": "sgd", "lr": float("nan")}}, ("optimizer", "lr"), "finite"),
        ({"schedule": {"min_lr": 1e308}}, ("schedule", "min_lr"), "less than or equal"),
        ({"data": {"dataset": "synthetic", "synthetic_shape": [3, 100_000, 8]}}, ("data", "synthetic_shape", 1), "512"),
        ({"data": {"dataset": "synthetic", "synthetic_shape": [10_000, 8, 8]}}, ("data", "synthetic_shape", 0), "64"),
        ({"data": {"max_train_samples": 10**12}}, ("data", "max_train_samples"), "less than or equal"),
    ],
)
def test_non_numbers_and_unbounded_numbers_are_refused_at_their_field(
    patch: dict[str, Any], loc: tuple[Any, ...], msg: str
) -> None:
    with pytest.raises(ValidationError) as info:
        TrainSpec.model_validate(BASE | patch)
    (error,) = [e for e in info.value.errors() if e["loc"] == loc]
    assert msg in error["msg"]


def test_numbers_from_json_still_validate_as_before() -> None:
    spec = TrainSpec.model_validate_json(
        '{"model": {"arch": "resnet20"}, "epochs": 3, "optimizer": {"name": "adam", "lr": 1, "betas": [0.9, 0.99]},'
        ' "schedule": {"kind": "step", "milestones": [2], "min_lr": 0}, "estimator": {"name": "fsg", "alpha": 1}}'
    )
    assert spec.optimizer.lr == 1.0 and spec.optimizer.betas == (0.9, 0.99) and spec.schedule.milestones == [2]

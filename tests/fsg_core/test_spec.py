"""TrainSpec validation: defaults, unknown fields, bounds, cross-field rules, JSON round trip, examples/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from fsg_core import models
from fsg_core.spec import TrainSpec

# service_*.json and study_*.json are job specs for the service (tests/service/schemas/test_job_examples.py).
EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.json")
    if not p.name.startswith(("service_", "study_"))
)


def _errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(pydantic.ValidationError) as info:
        TrainSpec.model_validate(data)
    return info.value.errors()


def test_defaults_validate() -> None:
    spec = TrainSpec()
    assert TrainSpec.model_validate({}) == spec
    assert spec.estimator.name == "fsg"
    assert spec.model.arch == "resnet20"
    # FSG_SPEC §1 W1A32 protocol defaults
    assert (spec.epochs, spec.batch_size) == (100, 128)
    assert (spec.optimizer.name, spec.optimizer.lr) == ("adam", 1e-3)
    assert (spec.schedule.kind, spec.schedule.milestones, spec.schedule.gamma) == ("step", [30, 60, 90], 0.1)
    assert spec.optimizer.weight_decay == 0.0


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"bogus": 1}, ("bogus",)),
        ({"model": {"bogus": 1}}, ("model", "bogus")),
        ({"data": {"bogus": 1}}, ("data", "bogus")),
        ({"binarize": {"bogus": 1}}, ("binarize", "bogus")),
        ({"optimizer": {"bogus": 1}}, ("optimizer", "bogus")),
        ({"schedule": {"bogus": 1}}, ("schedule", "bogus")),
        ({"init": {"bogus": 1}}, ("init", "bogus")),
        ({"init": {"pretrain_optimizer": {"bogus": 1}}}, ("init", "pretrain_optimizer", "bogus")),
        ({"init": {"pretrain_schedule": {"bogus": 1}}}, ("init", "pretrain_schedule", "bogus")),
        ({"estimator": {"name": "ste", "bogus": 1}}, ("estimator", "ste", "bogus")),
        ({"estimator": {"name": "fsg", "bogus": 1}}, ("estimator", "fsg", "bogus")),
        (
            {"binarize": {"activation_estimator": {"name": "reste", "bogus": 1}}},
            ("binarize", "activation_estimator", "reste", "bogus"),
        ),
    ],
)
def test_unknown_fields_rejected_at_every_level(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    errors = _errors(data)
    assert [(e["type"], e["loc"]) for e in errors] == [("extra_forbidden", loc)]


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"epochs": 0}, ("epochs",)),
        ({"batch_size": 0}, ("batch_size",)),
        ({"eval_batch_size": 0}, ("eval_batch_size",)),
        ({"seed": -1}, ("seed",)),
        ({"optimizer": {"lr": 0}}, ("optimizer", "lr")),
        ({"optimizer": {"momentum": 1.0}}, ("optimizer", "momentum")),
        ({"optimizer": {"betas": [0.9, 1.0]}}, ("optimizer", "betas")),
        ({"data": {"val_fraction": 0.9}}, ("data", "val_fraction")),
        ({"data": {"test_fraction": 0}}, ("data", "test_fraction")),
        ({"model": {"num_classes": 1}}, ("model", "num_classes")),
        ({"schedule": {"gamma": 0}}, ("schedule", "gamma")),
        ({"schedule": {"milestones": [0]}}, ("schedule", "milestones", 0)),
        ({"init": {"pretrain_epochs": -1}}, ("init", "pretrain_epochs")),
        ({"estimator": {"name": "fsg", "alpha": 2}}, ("estimator", "fsg", "alpha")),
        ({"estimator": {"name": "reste", "o_end": 0.5}}, ("estimator", "reste", "o_end")),
    ],
)
def test_out_of_range_rejected_with_field_in_loc(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    errors = _errors(data)
    assert [e["loc"] for e in errors] == [loc]


def test_unknown_estimator_name_lists_tags() -> None:
    errors = _errors({"estimator": {"name": "nope"}})
    assert errors[0]["loc"] == ("estimator",)
    for name in ("ste", "reste", "fsg", "metaquant"):
        assert f"'{name}'" in errors[0]["msg"]


def test_activation_estimator_must_be_closed_form() -> None:
    assert TrainSpec.model_validate({"binarize": {"activation_estimator": {"name": "approx_sign"}}})
    errors = _errors({"binarize": {"activation_estimator": {"name": "fsg"}}})
    assert errors[0]["loc"][:2] == ("binarize", "activation_estimator")


def test_unknown_arch_lists_architectures() -> None:
    errors = _errors({"model": {"arch": "resnet21"}})
    assert [e["loc"] for e in errors] == [("model", "arch")]
    for name in models.names():
        assert name in errors[0]["msg"]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_needs_root(dataset: str) -> None:
    errors = _errors({"data": {"dataset": dataset}})
    assert errors[0]["loc"][0] == "data"
    assert "root" in errors[0]["msg"]
    spec = TrainSpec.model_validate({"data": {"dataset": dataset, "root": "/data/cifar"}})
    assert spec.data.root == "/data/cifar"


def test_fsg_custom_preset_needs_sizes() -> None:
    sizes = {"expand": 4, "d_state": 2, "d_conv": 3}
    spec = TrainSpec.model_validate({"estimator": {"name": "fsg", "preset": "custom", **sizes}})
    assert spec.estimator.slow_sizes() == sizes  # type: ignore[attr-defined]
    for missing in sizes:
        partial = {k: v for k, v in sizes.items() if k != missing}
        errors = _errors({"estimator": {"name": "fsg", "preset": "custom", **partial}})
        assert errors[0]["loc"][:2] == ("estimator", "fsg")
        assert "custom" in errors[0]["msg"]


@pytest.mark.parametrize("preset", ["lite", "paper"])
@pytest.mark.parametrize("field", ["expand", "d_state", "d_conv"])
def test_fsg_named_preset_rejects_sizes(preset: str, field: str) -> None:
    errors = _errors({"estimator": {"name": "fsg", "preset": preset, field: 4}})
    assert errors[0]["loc"][:2] == ("estimator", "fsg")
    assert "preset" in errors[0]["msg"]


def test_round_trip_through_json() -> None:
    spec = TrainSpec.model_validate(
        {
            "model": {"arch": "resnet32", "num_classes": 10},
            "data": {"dataset": "synthetic", "synthetic_shape": [1, 8, 8], "val_fraction": 0.2},
            "binarize": {
                "activations": True,
                "forward": "bwn",
                "per_channel": True,
                "keep_first_last_fp": True,
                "activation_estimator": {"name": "clipped_ste", "clip": 1.5},
            },
            "estimator": {"name": "reste", "o_end": 2.5},
            "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "betas": [0.8, 0.9]},
            "schedule": {"kind": "cosine", "milestones": [], "warmup_epochs": 5},
            "init": {"pretrain_epochs": 3, "checkpoint": "fp.safetensors"},
            "epochs": 7,
            "seed": 42,
        }
    )
    text = spec.model_dump_json()
    again = TrainSpec.model_validate_json(text)
    assert again == spec
    assert again.model_dump_json() == text
    assert TrainSpec.model_validate(json.loads(text)) == spec
    assert TrainSpec.model_validate_json(TrainSpec().model_dump_json()) == TrainSpec()


def test_examples_exist() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path) -> None:
    spec = TrainSpec.model_validate_json(path.read_text())
    assert TrainSpec.model_validate_json(spec.model_dump_json()) == spec

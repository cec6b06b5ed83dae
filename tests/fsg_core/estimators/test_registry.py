"""The estimator contract, checked for every registered name (STYLE §6): a new estimator is covered
here with no edit to this file."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
import torch

from fsg_core.estimators import (
    AnyEstimatorParams,
    ClosedFormEstimator,
    LearnedEstimator,
    UnknownEstimatorError,
    describe,
    get,
    names,
)

NAMES = names()

# Class names follow the papers (STYLE §2); a name missing here must still spell its key in CamelCase.
PAPER_CLASS_NAMES = {
    "ste": "STE",
    "clipped_ste": "ClippedSTE",
    "approx_sign": "ApproxSign",
    "ede": "EDE",
    "reste": "ReSTE",
    "fda": "FDA",
    "biper": "BiPer",
    "metaquant": "MetaQuant",
    "fsg": "FSG",
}


def _numeric_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    """The bound keywords of one property, looking inside ``anyOf`` (optional fields)."""
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    found = {k: schema[k] for k in keys if k in schema}
    for option in schema.get("anyOf", []):
        found.update({k: option[k] for k in keys if k in option})
    return found


def _out_of_range_cases() -> list[tuple[str, str, str, float]]:
    """(estimator, field, bound keyword, violating value) for every bounded field of every estimator."""
    cases = []
    for name in NAMES:
        props = get(name).Params.model_json_schema().get("properties", {})
        for field, prop in props.items():
            for key, bound in _numeric_bounds(prop).items():
                value = {
                    "minimum": bound - 1,
                    "maximum": bound + 1,
                    "exclusiveMinimum": bound,
                    "exclusiveMaximum": bound,
                }[key]
                cases.append((name, field, key, value))
    return cases


OUT_OF_RANGE = _out_of_range_cases()


@pytest.mark.parametrize("name", NAMES)
def test_params_name_defaults_to_the_key(name: str) -> None:
    cls = get(name)
    assert cls.name == name
    assert cls.Params.model_fields["name"].default == name
    assert cls.Params().name == name


@pytest.mark.parametrize("name", NAMES)
def test_class_name_follows_the_paper(name: str) -> None:
    cls = get(name)
    if name in PAPER_CLASS_NAMES:
        assert cls.__name__ == PAPER_CLASS_NAMES[name]
    assert cls.__name__.lower() == name.replace("_", "")
    assert cls.Params.__qualname__ == f"{cls.__name__}.Params"


@pytest.mark.parametrize("name", NAMES)
def test_constructs_from_params(name: str) -> None:
    cls = get(name)
    params = cls.Params()
    est = cls(params)
    assert est.params is params
    assert est.progress == 0.0
    assert isinstance(est, ClosedFormEstimator) != isinstance(est, LearnedEstimator)
    assert est.learned == isinstance(est, LearnedEstimator)
    default = cls()
    assert default.params == params


@pytest.mark.parametrize("name", NAMES)
def test_params_reject_unknown_fields(name: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        get(name).Params(bogus=1)
    errors = info.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"] == ("bogus",)


@pytest.mark.parametrize("name", NAMES)
def test_params_are_frozen(name: str) -> None:
    params = get(name).Params()
    with pytest.raises(pydantic.ValidationError):
        params.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_every_numeric_field_is_bounded(name: str) -> None:
    """Ray Tune searches these fields: each number needs bounds in the schema."""
    props = get(name).Params.model_json_schema().get("properties", {})
    for field, prop in props.items():
        types = {prop.get("type")} | {o.get("type") for o in prop.get("anyOf", [])}
        if types & {"number", "integer"}:
            bounds = _numeric_bounds(prop)
            assert any(k in bounds for k in ("minimum", "exclusiveMinimum")), f"{name}.{field} has no lower bound"
            assert any(k in bounds for k in ("maximum", "exclusiveMaximum")), f"{name}.{field} has no upper bound"


@pytest.mark.parametrize(
    ("name", "field", "bound", "value"), OUT_OF_RANGE, ids=[f"{n}.{f}.{b}" for n, f, b, _ in OUT_OF_RANGE]
)
def test_params_reject_out_of_range(name: str, field: str, bound: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        get(name).Params(**{field: value})
    assert any(e["loc"][:1] == (field,) for e in info.value.errors())


@pytest.mark.parametrize("name", NAMES)
def test_json_schema_is_json_serializable(name: str) -> None:
    schema = get(name).Params.model_json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["properties"]["name"]["const"] == name
    # the defaults round-trip through JSON
    params = get(name).Params()
    assert get(name).Params.model_validate_json(params.model_dump_json()) == params


@pytest.mark.parametrize("name", [n for n in NAMES if not get(n).learned])
def test_closed_form_forward_is_sign_and_grad_is_finite(name: str) -> None:
    est = get(name)()
    est.progress = 1.0
    x = torch.tensor([[0.0, -0.0, 1e-8, -1e-8], [0.3, -0.3, 5.0, -5.0]], requires_grad=True)
    y = est.binarize(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert set(y.detach().unique().tolist()) <= {-1.0, 1.0}
    assert y[0, 0] == 1.0 and y[0, 1] == 1.0  # sign(0) = sign(-0) = +1
    if name != "biper":  # biper's forward is sign(sin(w x)), checked in test_closed_form
        assert torch.equal(y.detach(), torch.where(x.detach() >= 0, 1.0, -1.0))
    y.backward(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert x.grad is not None
    assert x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).learned])
def test_learned_binarize_is_straight_through(name: str) -> None:
    est = get(name)()
    x = torch.tensor([0.0, -0.0, 0.2, -0.2, 3.0, -3.0], requires_grad=True)
    y = est.binarize(x)
    assert torch.equal(y.detach(), torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0]))
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, -6.0])
    y.backward(upstream)
    assert x.grad is not None
    assert torch.equal(x.grad, upstream)


def test_unknown_name_lists_every_valid_name() -> None:
    with pytest.raises(UnknownEstimatorError) as info:
        get("nope")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "nope" in message
    for name in NAMES:
        assert name in message


def test_describe_lists_every_name_with_its_params() -> None:
    listing = describe()
    assert [entry["name"] for entry in listing] == NAMES
    json.dumps(listing)  # the CLI prints it as JSON
    for entry in listing:
        cls = get(entry["name"])
        assert entry["class"] == cls.__name__
        assert entry["kind"] == ("learned" if cls.learned else "closed-form")
        assert entry["summary"]
        fields = {p["name"]: p for p in entry["params"]}
        assert set(fields) == set(cls.Params.model_fields) - {"name"}
        for field, info in cls.Params.model_fields.items():
            if field != "name":
                assert fields[field]["default"] == info.default


@pytest.mark.parametrize("name", NAMES)
def test_union_validates_every_name(name: str) -> None:
    params = pydantic.TypeAdapter(AnyEstimatorParams).validate_python({"name": name})
    assert type(params) is get(name).Params


def test_union_rejects_unknown_name_listing_tags() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        pydantic.TypeAdapter(AnyEstimatorParams).validate_python({"name": "nope"})
    message = str(info.value)
    for name in NAMES:
        assert f"'{name}'" in message

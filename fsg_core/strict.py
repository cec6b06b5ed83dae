"""``StrictNumbers``: the base of every spec model; JSON numbers must arrive as JSON numbers.

Pydantic's lax mode turns ``"10"`` and ``true`` into ``10`` and accepts ``Infinity`` and ``NaN``
(which Python's ``json`` parses). A job spec is a contract: a string or a boolean where a number
belongs is the client's mistake, and an infinite learning rate is never meant. Full strict mode
would also refuse what JSON cannot express otherwise (a list for a tuple, a string for a path), so
only numbers are held strictly: every field whose type is built from ``int``/``float`` (alone, in
``Optional``, ``list``, ``tuple``) refuses strings and booleans in it, and floats must be finite.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["StrictNumbers", "numeric_leaves"]


def numeric_leaves(annotation: Any) -> bool | None:
    """True where every leaf type of ``annotation`` is a number (None and containers aside), False where
    a leaf admits strings or other values (``str``, ``Literal``, models, ``Any``), None without numbers."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return numeric_leaves(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple, set, frozenset):
        kinds = [numeric_leaves(a) for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
        if any(k is False for k in kinds):
            return False
        return True if any(k for k in kinds) else None
    if origin is Literal:
        return False
    if annotation is bool:
        return None
    if annotation in (int, float):
        return True
    return False


def _non_number(value: Any) -> str | None:
    """Why ``value`` (or an item of it) is not a JSON number, or None."""
    if isinstance(value, (str, bool)):
        return f"must be a JSON number, not {'a string' if isinstance(value, str) else 'a boolean'}"
    if isinstance(value, (list, tuple)):
        return next((why for why in map(_non_number, value) if why), None)
    return None


class StrictNumbers(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        # A model validator, not a field validator on "*": those may not touch a union's discriminator.
        if not isinstance(data, dict):
            return data
        errors = [
            InitErrorDetails(type=PydanticCustomError("number_type", why), loc=(name,), input=data[name])
            for name, field in cls.model_fields.items()
            if name in data and numeric_leaves(field.annotation) and (why := _non_number(data[name]))
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

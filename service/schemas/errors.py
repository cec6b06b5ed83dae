"""The error bodies every 4xx and 5xx answer uses (FastAPI's own shape)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ErrorItem", "ErrorRead", "ValidationErrorRead"]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field path")
    msg: str = Field(description="what is wrong and, where it helps, how to fix it")
    type: str = Field(description="machine-readable error type (pydantic's, or 'value_error')")


class ValidationErrorRead(BaseModel):
    """A 422: one item per invalid field."""

    detail: list[ErrorItem]


class ErrorRead(BaseModel):
    """Any other error (400, 401, 404, 409, 500, 503): one sentence."""

    detail: str

"""Liveness and readiness bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = ["LiveRead", "ReadyRead"]


class LiveRead(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyRead(BaseModel):
    database: Literal["ok", "unreachable"]
    ray: Literal["ok", "unreachable", "not configured"]

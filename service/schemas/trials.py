"""Search trials as the API shows them."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.schemas.base import ReadModel, UtcDatetime

__all__ = ["TrialRead"]


class TrialRead(ReadModel):
    """One trial of a search: its sampled config, state and best metric so far."""

    trial_key: str
    config: dict[str, Any] = Field(description="the sampled values, by dotted spec path")
    state: str = Field(description="running, succeeded, failed or stopped")
    metric: float | None = Field(description="the search metric's best value so far")
    epochs: int
    is_best: bool
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

"""Job events (state changes, metrics, checkpoints, trials) as sent in the SSE stream."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.schemas.base import ReadModel, UtcDatetime

__all__ = ["EventRead"]


class EventRead(ReadModel):
    """One ``JobEvent``; ``id`` is monotonic per database and is the SSE event id."""

    id: int
    job_id: str
    kind: str = Field(description="'state', 'metric', 'checkpoint' or 'trial'")
    from_state: str | None
    to_state: str | None
    message: str
    data: dict[str, Any] | None
    created_at: UtcDatetime

"""What every response schema shares: built from ORM rows by attribute, datetimes always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["ReadModel", "UtcDatetime"]


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes for DateTime(timezone=True); everything is written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ReadModel(BaseModel):
    """Base of the ``*Read`` responses: read from ORM attributes, never an ORM class itself."""

    model_config = ConfigDict(from_attributes=True)

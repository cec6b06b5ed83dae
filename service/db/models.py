"""The database tables as typed SQLAlchemy 2 ORM classes. Rows are plain nouns; API responses are
separate ``*Read`` schemas (never these classes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Checkpoint",
    "DispatcherHeartbeat",
    "Job",
    "JobEvent",
    "Metric",
    "Tenant",
    "Token",
    "Trial",
    "UTCDateTime",
    "new_id",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A sortable-enough random id (hex uuid4); ordering uses (created_at, id)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite has no time zone type: it stores the text of the value and returns naive datetimes, while
    PostgreSQL returns aware ones in the session's time zone. Normalising to UTC on the way in and out
    makes rows compare, sort and serialise the same on both backends (naive input is taken as UTC).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints: SQLite migrations (Alembic batch mode) can only drop or alter what has a name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Token(Base):
    """An API token: only its SHA-256 is stored; the secret is shown once at creation."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # The claim reads queued jobs by priority then age.
        Index("ix_jobs_queue", "state", "priority", "created_at"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    gpus: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[float | None] = mapped_column(Float, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The Ray dashboard page of the latest attempt (its task), set once it is launched (workers.runner).
    ray_run_url: Mapped[str | None] = mapped_column(String(512), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    """One state change (or other notable event) of a job; ``id`` is monotonic and is the SSE id."""

    __tablename__ = "job_events"
    # AUTOINCREMENT: SQLite never reuses an id, even of deleted rows, so SSE ids only ever grow.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="state")
    from_state: Mapped[str | None] = mapped_column(String(16), default=None)
    to_state: Mapped[str | None] = mapped_column(String(16), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_key", name="uq_trials_job_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="running")
    metric: Mapped[float | None] = mapped_column(Float, default=None)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Metric(Base):
    """One reported epoch of a job (or of one of its trials)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "trial_key", "phase", "epoch", name="uq_metrics_epoch"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(128), default="")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    phase: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(128), default="")
    epoch: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), default="binary")
    full_path: Mapped[str | None] = mapped_column(Text, default=None)
    packed_path: Mapped[str | None] = mapped_column(Text, default=None)
    full_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    packed_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DispatcherHeartbeat(Base):
    """A dispatcher's latest sign of life, one row per dispatcher process (upserted every heartbeat_s).

    ``stopped_at`` is set by a clean shutdown; a crashed dispatcher's row simply stops ageing well.
    """

    __tablename__ = "dispatchers"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)  # the lease owner string
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    running_attempts: Mapped[int] = mapped_column(Integer, default=0)
    claims: Mapped[int] = mapped_column(BigInteger, default=0)  # jobs claimed since started_at
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    # The totals of the Ray cluster this dispatcher runs on: the API refuses jobs no live cluster can hold.
    cluster_cpus: Mapped[float | None] = mapped_column(Float, default=None)
    cluster_gpus: Mapped[float | None] = mapped_column(Float, default=None)


class Tenant(Base):
    """A tenant's quotas, where an operator set them (``fsg tenant set``); a missing row or a NULL
    column means the default of the settings (``FSG_TENANT_MAX_*``), and a default of None no limit."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_running: Mapped[int | None] = mapped_column(Integer, default=None)  # jobs dispatching/running/cancelling
    max_cpus: Mapped[float | None] = mapped_column(Float, default=None)  # CPUs held by those jobs
    max_gpus: Mapped[float | None] = mapped_column(Float, default=None)
    max_queued: Mapped[int | None] = mapped_column(Integer, default=None)  # queued + retrying jobs
    max_priority: Mapped[int | None] = mapped_column(Integer, default=None)  # the highest priority it may ask
    share: Mapped[float | None] = mapped_column(Float, default=None)  # weight in the fair share (default 1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

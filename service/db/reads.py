"""Read queries for the API and the CLI: tenant-scoped, paginated, never writing."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from service.db.models import Checkpoint, DispatcherHeartbeat, Job, JobEvent, Metric, Token, Trial
from service.db.states import JobState

__all__ = [
    "Page",
    "events_after",
    "find_token",
    "get_checkpoint",
    "get_job",
    "jobs_by_state",
    "list_checkpoints",
    "list_dispatchers",
    "list_jobs",
    "list_metrics",
    "metric_row",
    "metric_rows",
    "job_state",
    "latest_checkpoint_file",
    "list_trials",
    "live_clusters",
    "oldest_queued_at",
    "state_events",
    "trial_state",
    "watched_states",
]


class Page:
    """One page of jobs, newest first, and the opaque cursor of the next page (None at the end)."""

    def __init__(self, items: list[Job], next_cursor: str | None) -> None:
        self.items, self.next_cursor = items, next_cursor


def get_job(session: Session, job_id: str, tenant: str) -> Job | None:
    """The tenant's job, or None (another tenant's job is None too: the API answers 404)."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.astimezone(UTC).isoformat(), job.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor holds. Raises ValueError for anything ``_encode_cursor`` did not make."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        created_at, job_id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(job_id, str):
            raise TypeError
        stamp = datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error):  # also UnicodeError and JSONDecodeError (ValueErrors)
        raise ValueError(
            f"cursor {cursor[:40]!r} is malformed: pass the next_cursor of a previous page unchanged"
        ) from None
    return (stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp), job_id


def list_jobs(
    session: Session,
    tenant: str,
    *,
    limit: int,
    cursor: str | None = None,
    states: list[str] | None = None,
    name: str | None = None,
) -> Page:
    """Newest first by (created_at, id); the cursor encodes the last item's (created_at, id), so pages
    stay stable while new jobs are inserted. Raises ValueError for a malformed cursor.

    ``states`` keeps jobs in any of those states (None or empty: all); ``name`` is an exact match.
    Filters must stay the same from page to page.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = select(Job).where(Job.tenant == tenant)
    if states:
        query = query.where(Job.state.in_(states))
    if name is not None:
        query = query.where(Job.name == name)
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        # The row-value comparison (created_at, id) < (c, i), spelled out for the index's benefit.
        query = query.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)))
    # One extra row tells whether another page follows.
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    items = rows[:limit]
    return Page(items, _encode_cursor(items[-1]) if len(rows) > limit else None)


def events_after(session: Session, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
    """The job's events with ``id > after_id``, oldest first."""
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def metric_row(metric: Metric) -> dict[str, Any]:
    """One reported epoch as the plain row summaries read: ``{"phase", "epoch", **values}``."""
    return {"phase": metric.phase, "epoch": metric.epoch, **metric.values}


def metric_rows(session: Session, job_id: str, trial_key: str | None = None) -> list[dict[str, Any]]:
    """``list_metrics`` as ``metric_row``s."""
    return [metric_row(m) for m in list_metrics(session, job_id, trial_key)]


def list_metrics(session: Session, job_id: str, trial_key: str | None = None) -> list[Metric]:
    """Every reported epoch, ordered by trial, phase (pretrain first), epoch."""
    query = select(Metric).where(Metric.job_id == job_id)
    if trial_key is not None:
        query = query.where(Metric.trial_key == trial_key)
    pretrain_first = case((Metric.phase == "pretrain", 0), else_=1)
    return list(session.scalars(query.order_by(Metric.trial_key, pretrain_first, Metric.phase, Metric.epoch)))


def trial_state(session: Session, job_id: str, trial_key: str) -> str | None:
    """A trial's recorded state, None when it was never recorded."""
    return session.scalar(select(Trial.state).where(Trial.job_id == job_id, Trial.trial_key == trial_key))


def list_trials(session: Session, job_id: str) -> list[Trial]:
    """The search's trials in the order they started."""
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.id)))


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """The job's checkpoints in the order they were written."""
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.id)))


def get_checkpoint(session: Session, job_id: str, checkpoint_id: int) -> Checkpoint | None:
    """One checkpoint of this job (None if the id belongs to another job)."""
    return session.scalar(select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.job_id == job_id))


def find_token(session: Session, token_hash: str) -> Token | None:
    """The token row for this hash (revoked and expired ones included; the caller decides)."""
    return session.scalar(select(Token).where(Token.token_hash == token_hash))


def list_tokens(session: Session, tenant: str | None = None) -> list[Token]:
    """Every token (revoked and expired ones included), oldest first; ``tenant`` narrows it."""
    query = select(Token).order_by(Token.created_at, Token.id)
    if tenant is not None:
        query = query.where(Token.tenant == tenant)
    return list(session.scalars(query))


def tokens_by_id_prefix(session: Session, prefix: str) -> list[Token]:
    """The tokens whose id starts with ``prefix`` (what ``fsg token list`` shows)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return list(session.scalars(select(Token).where(Token.id.like(f"{escaped}%", escape="\\")).limit(2)))


def jobs_by_state(session: Session) -> dict[str, int]:
    """Job counts per state, all tenants (for Prometheus). Every state is present, zero included, so a
    gauge drops to 0 when its last job leaves."""
    counts = dict.fromkeys((s.value for s in JobState), 0)
    for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = count
    return counts


def state_events(session: Session, job_id: str) -> list[JobEvent]:
    """The job's state changes (kind ``state``), oldest first: a few per attempt."""
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "state")
    return list(session.scalars(query.order_by(JobEvent.id)))


def oldest_queued_at(session: Session) -> datetime | None:
    """When the longest-waiting queued job (all tenants) last entered ``queued``; None: the queue is empty.

    A job enters ``queued`` when it is submitted and again after each retry or requeue, so a retried job
    counts from its requeue, not from its submission (its ``created_at`` when it has no such event).
    """
    entered = (
        select(func.max(JobEvent.created_at))
        .where(JobEvent.job_id == Job.id, JobEvent.to_state == JobState.queued.value)
        .correlate(Job)
        .scalar_subquery()
    )
    return session.scalar(
        select(func.min(func.coalesce(entered, Job.created_at))).where(Job.state == JobState.queued.value)
    )


def list_dispatchers(session: Session, *, since: datetime, limit: int = 100) -> list[DispatcherHeartbeat]:
    """Dispatchers not cleanly stopped that beat at or after ``since``, latest heartbeat first, at most
    ``limit`` (a bound on what a scrape reports, whatever the table holds)."""
    query = (
        select(DispatcherHeartbeat)
        .where(DispatcherHeartbeat.stopped_at.is_(None), DispatcherHeartbeat.heartbeat_at >= since)
        .order_by(DispatcherHeartbeat.heartbeat_at.desc(), DispatcherHeartbeat.owner)
        .limit(limit)
    )
    return list(session.scalars(query))


def live_clusters(session: Session, *, since: datetime) -> list[tuple[float, float]]:
    """The Ray clusters (total CPUs, GPUs) that live dispatchers published: not cleanly stopped, beating
    at or after ``since``. Empty when none has published one (then nothing can be judged)."""
    rows = session.execute(
        select(DispatcherHeartbeat.cluster_cpus, DispatcherHeartbeat.cluster_gpus).where(
            DispatcherHeartbeat.stopped_at.is_(None),
            DispatcherHeartbeat.heartbeat_at >= since,
            DispatcherHeartbeat.cluster_cpus.is_not(None),
        )
    ).all()
    return sorted({(float(c or 0.0), float(g or 0.0)) for c, g in rows}, reverse=True)


def watched_states(session: Session, job_ids: list[str]) -> dict[str, tuple[str, bool]]:
    """For a dispatcher's running attempts: each job's state and whether a cancel was requested."""
    rows = session.execute(select(Job.id, Job.state, Job.cancel_requested).where(Job.id.in_(job_ids)))
    return {job_id: (state, bool(cancel)) for job_id, state, cancel in rows}


def job_state(session: Session, job_id: str) -> str | None:
    """The job's state, None when it does not exist (any tenant: for the dispatcher's log lines)."""
    return session.scalar(select(Job.state).where(Job.id == job_id))


def latest_checkpoint_file(session: Session, job_id: str, trial_key: str = "") -> str | None:
    """The resumable state of the job's (or one trial's) latest checkpoint, as recorded."""
    return session.scalar(
        select(Checkpoint.full_path)
        .where(Checkpoint.job_id == job_id, Checkpoint.trial_key == trial_key, Checkpoint.full_path.is_not(None))
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )

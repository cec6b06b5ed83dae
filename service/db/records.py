"""What the workers write back while a job runs: per-epoch metrics, checkpoints, trials, summaries;
and the dispatchers' heartbeats (one row per dispatcher process, no event).

Each write also appends a ``JobEvent`` (kind ``metric``, ``checkpoint`` or ``trial``) so that the SSE
stream carries it, in order, with the event id as its cursor. State changes are not written here:
only ``queue.py`` changes states.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.models import Checkpoint, DispatcherHeartbeat, Job, JobEvent, Metric, Trial, utcnow

__all__ = [
    "json_safe",
    "mark_best_trial",
    "prune_heartbeats",
    "record_checkpoint",
    "record_heartbeat",
    "record_metrics",
    "record_stopped",
    "set_summary",
    "upsert_trial",
]


def json_safe(value: Any, *, field: str = "value") -> Any:
    """``value`` as plain JSON: NaN and ±inf become None, numpy/torch scalars plain numbers.

    PostgreSQL's ``json`` type rejects ``NaN`` and browsers' ``JSON.parse`` does too, so a diverged
    run's ``train_loss`` is stored as null rather than breaking the write.

    Raises:
        TypeError: something that has no JSON form (``field`` names where it was found).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, field=f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, field=f"{field}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy and 0-d torch scalars
    if callable(item):
        try:
            plain = item()
        except (TypeError, ValueError, RuntimeError):  # an array or tensor of more than one element
            plain = None
        else:
            if isinstance(plain, bool | int | float):
                return json_safe(plain, field=field)
    raise TypeError(f"{field}: {type(value).__name__} is not JSON (report numbers, strings, lists or dicts)")


def _lock_job(session: Session, job_id: str) -> None:
    """Lock the job's row (PostgreSQL) before appending its events, so they commit in id order.

    Event ids come from a sequence when the row is inserted; without the lock a metric event could
    take id 10, a concurrent cancel id 11 and commit first, and an SSE reader resuming after 11 would
    never see 10. ``queue.py`` takes the same lock for its transitions.
    """
    found = session.scalar(select(Job.id).where(Job.id == job_id).with_for_update(key_share=True))
    if found is None:
        raise LookupError(f"job {job_id} does not exist")


def _insert(session: Session, model: type[Any]) -> Any:
    """An ``INSERT`` with ``on_conflict_do_update`` for this session's backend."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"upserts support postgresql and sqlite, not {name}")


def _event(session: Session, job_id: str, kind: str, message: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


def record_event(session: Session, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
    """Append a job event that is not a state change (worker placement, a worker-group restart).

    Raises:
        LookupError: the job does not exist.
    """
    _lock_job(session, job_id)
    _event(session, job_id, kind, message, json_safe(data or {}, field="data"))


def record_metrics(
    session: Session, job_id: str, rows: list[dict[str, Any]], *, attempt: int, trial_key: str = ""
) -> None:
    """Upsert one ``Metric`` per row (keyed by job, trial, phase, epoch; a resumed attempt's re-reported
    epoch replaces the earlier one) and append one ``metric`` event per row. Each row holds at least
    ``phase`` and ``epoch``; everything else is stored as the values.

    Values go through ``json_safe`` (NaN and inf become None). The event's data is
    ``{"trial_key", "phase", "epoch", "attempt", "values"}``.

    Raises:
        ValueError: a row without ``phase`` or ``epoch``.
        LookupError: the job does not exist.
    """
    if not rows:
        return
    _lock_job(session, job_id)
    now = utcnow()
    for i, row in enumerate(rows):
        if "phase" not in row or "epoch" not in row:
            raise ValueError(f"rows[{i}] needs 'phase' and 'epoch', got keys {sorted(row)}")
        phase, epoch = str(row["phase"]), int(row["epoch"])
        values = json_safe({k: v for k, v in row.items() if k not in ("phase", "epoch")}, field=f"rows[{i}]")
        stmt = _insert(session, Metric).values(
            job_id=job_id, trial_key=trial_key, attempt=attempt, phase=phase, epoch=epoch, values=values, created_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[Metric.job_id, Metric.trial_key, Metric.phase, Metric.epoch],
            set_={"attempt": attempt, "values": stmt.excluded["values"], "created_at": now},
        )
        session.execute(stmt)
        data = {"trial_key": trial_key, "phase": phase, "epoch": epoch, "attempt": attempt, "values": values}
        _event(session, job_id, "metric", f"{phase} epoch {epoch}", data)


def record_checkpoint(
    session: Session,
    job_id: str,
    *,
    epoch: int,
    phase: str,
    full_path: str | None,
    packed_path: str | None,
    full_bytes: int | None,
    packed_bytes: int | None,
    metrics: dict[str, Any] | None,
    trial_key: str = "",
) -> Checkpoint:
    """Insert a checkpoint row and a ``checkpoint`` event."""
    _lock_job(session, job_id)
    checkpoint = Checkpoint(
        job_id=job_id,
        trial_key=trial_key,
        epoch=epoch,
        phase=phase,
        full_path=full_path,
        packed_path=packed_path,
        full_bytes=full_bytes,
        packed_bytes=packed_bytes,
        metrics=None if metrics is None else json_safe(metrics, field="metrics"),
    )
    session.add(checkpoint)
    session.flush()
    data = {"checkpoint_id": checkpoint.id, "trial_key": trial_key, "phase": phase, "epoch": epoch}
    _event(session, job_id, "checkpoint", f"checkpoint at {phase} epoch {epoch}", data)
    return checkpoint


def upsert_trial(
    session: Session,
    job_id: str,
    *,
    trial_key: str,
    config: dict[str, Any],
    state: str,
    metric: float | None = None,
    epochs: int = 0,
    error: str | None = None,
) -> Trial:
    """Insert or update a search trial (state ``running``/``succeeded``/``failed``/``stopped``) and append
    a ``trial`` event.

    On update, a ``metric`` of None keeps the stored one and ``epochs`` never decreases (a resumed
    trial re-reports from its checkpoint); ``config``, ``state`` and ``error`` are replaced.
    """
    _lock_job(session, job_id)
    now = utcnow()
    safe_metric = json_safe(metric, field="metric")
    stmt = _insert(session, Trial).values(
        job_id=job_id,
        trial_key=trial_key,
        config=json_safe(config, field="config"),
        state=state,
        metric=safe_metric,
        epochs=epochs,
        error=error,
        created_at=now,
        updated_at=now,
    )
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[Trial.job_id, Trial.trial_key],
        set_={
            "config": new.config,
            "state": new.state,
            "metric": func.coalesce(new.metric, Trial.metric),
            "epochs": case((new.epochs > Trial.epochs, new.epochs), else_=Trial.epochs),
            "error": new.error,
            "updated_at": now,
        },
    ).returning(Trial)
    trial = session.scalars(stmt, execution_options={"populate_existing": True}).one()
    data = {"trial_key": trial_key, "state": state, "metric": trial.metric, "epochs": trial.epochs}
    _event(session, job_id, "trial", f"trial {trial_key} {state}", data)
    return trial


def mark_best_trial(session: Session, job_id: str, trial_key: str) -> None:
    """Flag ``trial_key`` as the job's best trial (and no other).

    Raises:
        LookupError: the job has no trial ``trial_key``.
    """
    _lock_job(session, job_id)
    if session.scalar(select(Trial.id).where(Trial.job_id == job_id, Trial.trial_key == trial_key)) is None:
        raise LookupError(f"job {job_id} has no trial {trial_key!r} (upsert_trial it first)")
    session.execute(
        update(Trial)
        .where(Trial.job_id == job_id)
        .values(is_best=Trial.trial_key == trial_key)
        .execution_options(synchronize_session="fetch")
    )
    _event(session, job_id, "trial", f"trial {trial_key} is the best", {"trial_key": trial_key, "is_best": True})


def set_run_url(session: Session, job_id: str, url: str | None) -> None:
    """Where the job's latest attempt is shown in the Ray dashboard (not a state: no event, no lock)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.ray_run_url = None if url is None else url[:512]


def set_summary(session: Session, job: Job, summary: dict[str, Any]) -> None:
    """Store the job's summary metrics (best / last-k figures, packed size, best trial...)."""
    # A new dict, not an in-place edit: the JSON column only notices assignment.
    job.summary = json_safe(summary, field="summary")
    session.flush()


def record_heartbeat(
    session: Session,
    *,
    owner: str,
    hostname: str,
    pid: int,
    started_at: datetime,
    running_attempts: int,
    claims: int,
    cluster: tuple[float, float] | None = None,
    now: datetime | None = None,
) -> None:
    """Upsert the dispatcher ``owner``'s row: alive at ``now`` (default: the current time), with
    ``running_attempts`` attempts on Ray, ``claims`` jobs claimed since ``started_at`` and its Ray
    cluster's total (CPUs, GPUs) when known (None keeps what the row had).

    A beat after ``record_stopped`` (an owner string reused) clears ``stopped_at`` again.
    """
    now = now or utcnow()
    values = {
        "hostname": hostname,
        "pid": pid,
        "started_at": started_at,
        "heartbeat_at": now,
        "running_attempts": running_attempts,
        "claims": claims,
        "stopped_at": None,
    }
    if cluster is not None:
        values["cluster_cpus"], values["cluster_gpus"] = cluster
    stmt = _insert(session, DispatcherHeartbeat).values(owner=owner, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=[DispatcherHeartbeat.owner], set_=values))


def record_stopped(session: Session, owner: str, *, now: datetime | None = None) -> bool:
    """Mark the dispatcher ``owner`` as cleanly stopped (no attempts left running).

    Returns:
        False when ``owner`` never wrote a heartbeat (nothing to mark).
    """
    result = session.execute(
        update(DispatcherHeartbeat)
        .where(DispatcherHeartbeat.owner == owner)
        .values(stopped_at=now or utcnow(), running_attempts=0)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def prune_heartbeats(session: Session, *, older_than: datetime) -> int:
    """Delete the rows of dispatchers silent since before ``older_than`` (stopped or crashed long ago),
    so the table stays as small as the set of recent dispatchers. Returns how many went."""
    result = session.execute(delete(DispatcherHeartbeat).where(DispatcherHeartbeat.heartbeat_at < older_than))
    return int(result.rowcount)  # type: ignore[attr-defined]

"""THE queue: the only module that claims jobs, holds leases and changes job states.

The database is the queue. A claim is one statement: ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED LIMIT 1) RETURNING`` on PostgreSQL (many dispatchers), the same under ``BEGIN IMMEDIATE``
on SQLite (one writer at a time). Every state change is checked against ``states.ALLOWED`` and
written together with its ``JobEvent`` in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.db.engine import Database
from service.db.models import Job, JobEvent, utcnow
from service.db.states import ACTIVE, TERMINAL, JobState, check_transition
from service.schemas.jobs import JobSpec

__all__ = [
    "IdempotencyConflict",
    "claim_next",
    "enqueue",
    "reap_expired",
    "release",
    "renew_lease",
    "request_cancel",
    "request_hash",
    "transition",
]


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for job {job_id} with a different body")
        self.key, self.job_id = key, job_id


def request_hash(spec: JobSpec) -> str:
    """A stable hash of a resolved spec (what an Idempotency-Key replay must match)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _event(
    session: Session,
    job: Job,
    *,
    kind: str = "state",
    from_state: str | None = None,
    to_state: str | None = None,
    message: str = "",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job.id, kind=kind, from_state=from_state, to_state=to_state, message=message, data=data)
    session.add(event)
    return event


def enqueue(session: Session, *, tenant: str, spec: JobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Insert a queued job, or return the job an earlier request with the same key created.

    Returns:
        (job, created): ``created`` is False for an idempotent replay.

    Raises:
        IdempotencyConflict: the key was used before with a different spec.
    """
    digest = request_hash(spec)
    if idempotency_key is not None:
        existing = _replayed(session, tenant, idempotency_key, digest)
        if existing is not None:
            return existing, False
    job = Job(
        tenant=tenant,
        name=spec.name,
        kind=spec.kind,
        state=JobState.queued,
        priority=spec.priority,
        spec=spec.model_dump(mode="json"),
        cpus=spec.resources.cpus,
        gpus=spec.resources.gpus,
        max_retries=spec.max_retries,
        timeout_s=spec.timeout_s,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
    else:
        # Two requests with one key can both miss the lookup above (PostgreSQL, concurrent API workers):
        # the loser's insert hits the unique constraint, and the winner's job is the answer.
        try:
            with session.begin_nested():
                session.add(job)
                session.flush()
        except IntegrityError:
            existing = _replayed(session, tenant, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
    _event(session, job, to_state=JobState.queued, message="submitted")
    return job, True


def _replayed(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    """The job an earlier request with this key created, if any; raises if its body differed."""
    existing = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))
    if existing is not None and existing.request_hash != digest:
        raise IdempotencyConflict(key, existing.id)
    return existing


def _lock_state(session: Session, job: Job) -> JobState:
    """Lock the job's row and return its state as committed now, refreshing ``job.state``.

    ``job`` may have been loaded before another writer moved it (the API cancelling while the
    dispatcher reports, on PostgreSQL), so guards must read the row under a lock rather than trust
    the object. The lock also orders the job's events: ids are taken while it is held, so they
    commit in id order and an SSE reader resuming after an id never misses one. ``FOR NO KEY
    UPDATE`` (``key_share``) does not block inserts of rows that reference the job.
    """
    state = session.scalar(select(Job.state).where(Job.id == job.id).with_for_update(key_share=True))
    if state is None:
        raise LookupError(f"job {job.id} does not exist")
    set_committed_value(job, "state", state)
    return JobState(state)


def transition(
    session: Session,
    job: Job,
    target: JobState,
    *,
    message: str = "",
    data: dict[str, Any] | None = None,
    error: str | None = None,
) -> JobEvent:
    """Move ``job`` to ``target`` (guarded by ``ALLOWED``) and record the event.

    The guard reads the job's state from its locked row, not from ``job`` (which may be stale).

    Raises:
        IllegalTransition: the job's current state cannot go to ``target``.
        LookupError: the job's row does not exist.
    """
    current = _lock_state(session, job)
    check_transition(job.id, current, target)
    now = utcnow()
    job.state = target
    if target == JobState.running:
        job.started_at = job.started_at or now
    if target in TERMINAL:
        job.finished_at = now
        job.lease_owner, job.lease_until = None, None
    if target in (JobState.queued, JobState.retrying):
        job.lease_owner, job.lease_until = None, None
    if error is not None:
        job.error = error
    return _event(session, job, from_state=current, to_state=target, message=message, data=data)


def claim_next(
    db: Database,
    *,
    owner: str,
    lease_s: float,
    free_cpus: float,
    free_gpus: float,
) -> Job | None:
    """Claim the head of the queue (priority, then age) if its resources fit, else nothing.

    The head is never skipped for a smaller job behind it, so big jobs do not starve. On success the
    job is ``dispatching`` with a lease held by ``owner`` and its attempt counter incremented. The
    claim is its own transaction; the returned job is detached and fully loaded.
    """
    now = utcnow()
    head = (
        select(Job.id)
        .where(Job.state == JobState.queued)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
    )
    if not db.sqlite:
        head = head.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        # ``state`` again: PostgreSQL re-checks this WHERE on the row's latest version, so even a
        # subquery that lost its row lock could not claim a job twice.
        .where(
            Job.id == head.scalar_subquery(),
            Job.state == JobState.queued,
            Job.cpus <= free_cpus,
            Job.gpus <= free_gpus,
        )
        .values(
            state=JobState.dispatching,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_s),
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    with db.write() as session:
        job_id = session.scalar(stmt)
        if job_id is None:
            return None
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        _event(
            session,
            job,
            from_state=JobState.queued,
            to_state=JobState.dispatching,
            message=f"claimed by {owner} (attempt {job.attempts})",
            data={"owner": owner, "attempt": job.attempts},
        )
    return job


def renew_lease(session: Session, job_id: str, *, owner: str, lease_s: float) -> bool:
    """Extend ``owner``'s lease on an active job; False if the lease was lost (reaped or re-owned)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state.in_([s.value for s in ACTIVE]))
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, job: Job, *, message: str) -> JobEvent:
    """Give a claimed (``dispatching``) job back to the queue without counting the attempt."""
    job.attempts = max(job.attempts - 1, 0)
    return transition(session, job, JobState.queued, message=message)


def reap_expired(session: Session, *, now: datetime | None = None, alive: str | None = None) -> list[Job]:
    """Jobs whose lease expired (their dispatcher died): back to the queue, or ended.

    A job that was ``cancelling`` ends ``cancelled``; one with attempts left goes
    ``retrying -> queued`` (it resumes from its latest checkpoint); one without ends ``failed``.
    ``alive`` names the calling dispatcher: its own leases are left alone (it may have missed renewals
    during a database outage, but its attempts still run).
    """
    now = now or utcnow()
    conditions = [Job.state.in_([s.value for s in ACTIVE]), Job.lease_until.is_not(None), Job.lease_until < now]
    if alive is not None:
        conditions.append(Job.lease_owner != alive)
    expired = session.scalars(
        select(Job)
        .where(*conditions)
        .with_for_update(skip_locked=True)
        # Objects already in the session would otherwise keep their stale, unlocked values.
        .execution_options(populate_existing=True)
    ).all()
    for job in expired:
        owner = job.lease_owner
        if job.state == JobState.cancelling or job.cancel_requested:
            if job.state != JobState.cancelling:
                transition(session, job, JobState.cancelling, message="cancel requested; lease expired")
            transition(session, job, JobState.cancelled, message=f"lease of {owner} expired while cancelling")
        elif job.attempts <= job.max_retries:
            transition(session, job, JobState.retrying, message=f"lease of {owner} expired", error=job.error)
            transition(session, job, JobState.queued, message="requeued; resumes from its latest checkpoint")
        else:
            transition(
                session,
                job,
                JobState.failed,
                message=f"lease of {owner} expired and no attempts are left",
                error=f"dispatcher {owner} stopped renewing its lease",
            )
    return list(expired)


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel: a queued (or retrying) job ends ``cancelled`` at once; an active one goes ``cancelling``
    and its dispatcher stops the Ray work. Terminal jobs are left as they are.

    The decision uses the job's state read under its row lock, so a claim that raced the request is
    seen (the job is then ``cancelling``, not ``cancelled`` behind its dispatcher's back)."""
    if job not in session:  # loaded by another session: act on (and return) this session's copy
        found = session.get(Job, job.id)
        if found is None:
            raise LookupError(f"job {job.id} does not exist")
        job = found
    if _lock_state(session, job) in TERMINAL:
        return job
    job.cancel_requested = True
    if job.state in (JobState.queued, JobState.retrying):
        transition(session, job, JobState.cancelled, message="cancelled before it ran")
    elif job.state in (JobState.dispatching, JobState.running):
        transition(session, job, JobState.cancelling, message="cancel requested")
    return job

"""THE queue: the only module that claims jobs, holds leases and changes job states.

The database is the queue. A claim is one statement: ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED LIMIT 1) RETURNING`` on PostgreSQL (many dispatchers), the same under ``BEGIN IMMEDIATE``
on SQLite (one writer at a time). Every state change is checked against ``states.ALLOWED`` and
written together with its ``JobEvent`` in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.db import records, scheduling, tenants
from service.db.engine import Database
from service.db.models import Job, JobEvent, utcnow
from service.db.scheduling import Quota
from service.db.states import ACTIVE, TERMINAL, Decision, Fate, JobState, check_transition
from service.schemas.jobs import JobSpec

__all__ = [
    "IdempotencyConflict",
    "apply",
    "lock_owned",
    "QueueFull",
    "claim_next",
    "enqueue",
    "fail_unfittable",
    "lock_tenant",
    "queued_count",
    "reap_expired",
    "release",
    "renew_lease",
    "request_cancel",
    "request_hash",
    "tenant_usage",
    "transition",
    "unfittable",
]


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for job {job_id} with a different body")
        self.key, self.job_id = key, job_id


class QueueFull(RuntimeError):
    """The tenant already has ``max_queued`` jobs waiting (the API answers 429 with Retry-After)."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant!r} already has {limit} jobs waiting (its max_queued); retry later")
        self.tenant, self.limit = tenant, limit


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


def enqueue(
    session: Session,
    *,
    tenant: str,
    spec: JobSpec,
    idempotency_key: str | None = None,
    max_queued: int | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job, or return the job an earlier request with the same key created.

    ``max_queued``: the tenant's limit on waiting jobs, counted under the tenant's lock (PostgreSQL),
    so concurrent submissions cannot overshoot it; a replay is never refused.

    Returns:
        (job, created): ``created`` is False for an idempotent replay.

    Raises:
        IdempotencyConflict: the key was used before with a different spec.
        QueueFull: the tenant has ``max_queued`` jobs waiting already.
    """
    digest = request_hash(spec)
    if idempotency_key is not None:
        existing = _replayed(session, tenant, idempotency_key, digest)
        if existing is not None:
            return existing, False
    if max_queued is not None:
        lock_tenant(session, tenant)
        if queued_count(session, tenant) >= max_queued:
            raise QueueFull(tenant, max_queued)
    job = Job(
        tenant=tenant,
        name=spec.name,
        kind=spec.kind,
        state=JobState.queued,
        priority=spec.priority,
        spec=spec.model_dump(mode="json"),
        cpus=spec.cpus,
        gpus=spec.gpus,
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


# Per tenant, the best few queued jobs are enough to choose from: the claim takes one job, and a few
# per tenant let a small job run beside a tenant's big head that does not fit (backfill).
CANDIDATES_PER_TENANT = 8


def claim_next(
    db: Database,
    *,
    owner: str,
    lease_s: float,
    free_cpus: float,
    free_gpus: float,
    total_cpus: float | None = None,
    total_gpus: float | None = None,
    defaults: Quota = Quota(),
    reserve_after_s: float = 600.0,
) -> Job | None:
    """Claim the job that should run next on a dispatcher with these free resources, or nothing.

    The order is ``scheduling.choose``'s: fair share between tenants, then priority, then age; quotas
    respected; a job that does not fit now lets smaller ones behind it run until it has waited
    ``reserve_after_s``. Jobs bigger than the cluster's totals are never candidates (the API refuses
    them; ``fail_unfittable`` ends those left behind by a shrinking cluster).

    One short transaction: candidates and usage are read, then the chosen job's row is locked with
    ``SKIP LOCKED`` (a job another dispatcher is claiming is passed over, never waited for) and, for a
    tenant with limits on what it runs, its quota is checked again under a per-tenant advisory lock
    taken with *try* (never blocking, never deadlocking), so no two dispatchers can take a tenant over
    its limit between them. On SQLite the transaction holds the one writer lock. On success the job is
    ``dispatching`` with a lease held by ``owner`` and its attempt counter incremented; the returned job
    is detached and fully loaded.
    """
    now = utcnow()
    total = (free_cpus if total_cpus is None else total_cpus, free_gpus if total_gpus is None else total_gpus)
    with db.write() as session:
        candidates = _candidates(session, total)
        if not candidates:
            return None
        usage = tenant_usage(session)
        quotas = tenants.quotas(session, {c.tenant for c in candidates}, defaults)
        for choice in scheduling.choose(
            candidates,
            usage,
            quotas,
            free=(free_cpus, free_gpus),
            total=total,
            now=now,
            reserve_after_s=reserve_after_s,
        ):
            quota = quotas[choice.tenant]
            limited = any(limit is not None for limit in (quota.max_running, quota.max_cpus, quota.max_gpus))
            if limited and not db.sqlite:
                if not _try_tenant_lock(session, choice.tenant):
                    continue  # another dispatcher is claiming for this tenant right now
                fresh = tenant_usage(session, tenant=choice.tenant).get(choice.tenant, scheduling.Usage())
                if scheduling.over_quota(fresh, quota, choice.cpus, choice.gpus) is not None:
                    continue
            job = _take(session, choice.id, owner=owner, lease_until=now + timedelta(seconds=lease_s), now=now)
            if job is not None:
                return job
    return None


def _candidates(session: Session, total: tuple[float, float]) -> list[scheduling.Candidate]:
    """Each tenant's best few queued jobs (priority, then age) that the cluster could ever hold."""
    rank = (
        func.row_number()
        .over(partition_by=Job.tenant, order_by=(Job.priority.desc(), Job.created_at, Job.id))
        .label("rank")
    )
    ranked = (
        select(Job.id, Job.tenant, Job.priority, Job.created_at, Job.updated_at, Job.cpus, Job.gpus, rank)
        .where(
            Job.state == JobState.queued,
            Job.cpus <= total[0] + scheduling.EPSILON,
            Job.gpus <= total[1] + scheduling.EPSILON,
        )
        .subquery()
    )
    rows = session.execute(select(ranked).where(ranked.c.rank <= CANDIDATES_PER_TENANT)).all()
    # A queued job's updated_at is its entry into queued: nothing else writes a queued row.
    return [scheduling.Candidate(r.id, r.tenant, r.priority, r.created_at, r.updated_at, r.cpus, r.gpus) for r in rows]


def tenant_usage(session: Session, *, tenant: str | None = None) -> dict[str, scheduling.Usage]:
    """Per tenant, its jobs on Ray now (dispatching, running, cancelling) and what they hold."""
    stmt = (
        select(Job.tenant, func.count(), func.coalesce(func.sum(Job.cpus), 0.0), func.coalesce(func.sum(Job.gpus), 0.0))
        .where(Job.state.in_([s.value for s in ACTIVE]))
        .group_by(Job.tenant)
    )
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return {name: scheduling.Usage(int(n), float(c), float(g)) for name, n, c, g in session.execute(stmt)}


def _tenant_key(tenant: str) -> Any:
    """The advisory-lock key of a tenant: the claim's try-lock and the submit's lock must agree on it."""
    return func.hashtextextended(f"fsg.tenant:{tenant}", 0)


def _try_tenant_lock(session: Session, tenant: str) -> bool:
    """PostgreSQL: a transaction-scoped advisory lock on the tenant's name, without waiting."""
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(_tenant_key(tenant)))))


def lock_tenant(session: Session, tenant: str) -> None:
    """PostgreSQL: wait for the tenant's advisory lock (the API's queued-quota check); SQLite needs none."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_tenant_key(tenant))))


def _take(session: Session, job_id: str, *, owner: str, lease_until: datetime, now: datetime) -> Job | None:
    """Lock the job's row (``SKIP LOCKED``) and make it ``dispatching`` under ``owner``'s lease, or None
    when another dispatcher holds or has taken it."""
    locked = select(Job.id).where(Job.id == job_id, Job.state == JobState.queued)
    if session.get_bind().dialect.name == "postgresql":
        locked = locked.with_for_update(skip_locked=True)
    if session.scalar(locked) is None:
        return None
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            state=JobState.dispatching,
            lease_owner=owner,
            lease_until=lease_until,
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
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


def queued_count(session: Session, tenant: str) -> int:
    """The tenant's jobs waiting to run (queued or retrying): what ``max_queued`` limits."""
    waiting = [JobState.queued.value, JobState.retrying.value]
    return int(session.scalar(select(func.count()).where(Job.tenant == tenant, Job.state.in_(waiting))) or 0)


def fail_unfittable(session: Session, clusters: list[tuple[float, float]]) -> list[Job]:
    """End the queued jobs that none of ``clusters`` (total CPUs, GPUs) can hold (the live clusters
    shrank under them): each ``failed`` with a message naming the resource and the totals."""
    if not clusters:
        return []
    fits_one = [(Job.cpus <= c + scheduling.EPSILON) & (Job.gpus <= g + scheduling.EPSILON) for c, g in clusters]
    jobs = session.scalars(
        select(Job)
        .where(Job.state == JobState.queued, ~or_(*fits_one))
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    for job in jobs:
        reason = unfittable(job.cpus, job.gpus, clusters)
        if reason is not None:
            apply(session, job, Decision(Fate.fail, reason, reason))
    return list(jobs)


def unfittable(need_cpus: float, need_gpus: float, clusters: list[tuple[float, float]]) -> str | None:
    """Why a job needing ``need_*`` fits none of ``clusters`` (total CPUs, GPUs), or None when one holds
    it (or none is known)."""
    if not clusters or any(
        need_cpus <= c + scheduling.EPSILON and need_gpus <= g + scheduling.EPSILON for c, g in clusters
    ):
        return None
    cpus, gpus = max(clusters)
    what = "largest Ray cluster of a live dispatcher" if len(clusters) > 1 else "Ray cluster of the live dispatcher"
    totals = f"the {what} has {cpus:g} CPUs and {gpus:g} GPUs"
    if all(need_gpus > g + scheduling.EPSILON for _, g in clusters):
        return f"resources: the job needs {need_gpus:g} GPUs (num_workers with use_gpu, per concurrent trial); {totals}"
    return (
        f"resources: the job needs {need_cpus:g} CPUs (num_workers x cpus_per_worker, per concurrent trial); {totals}"
    )


def renew_lease(session: Session, job_id: str, *, owner: str, lease_s: float) -> bool:
    """Extend ``owner``'s lease on an active job; False if the lease was lost (reaped or re-owned)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state.in_([s.value for s in ACTIVE]))
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def apply(session: Session, job: Job, decision: Decision, *, summary: dict[str, Any] | None = None) -> JobState:
    """Carry out ``decision`` (``workers.policy`` decides) on ``job``: THE place a job's fate is written.

    - ``succeed``: the run's ``summary`` stored, then ``succeeded``;
    - ``retry``: ``retrying -> queued`` with the error; the next attempt resumes from its checkpoint;
    - ``fail``: ``failed`` with the error;
    - ``give_back``: back to the queue without counting the attempt (``dispatching -> queued``, or
      ``running -> retrying -> queued``);
    - ``cancel``: ``cancelled``, through ``cancelling`` when the job was running on Ray.

    Returns the job's new state. Raises ``IllegalTransition`` when the job's locked state does not
    allow the fate (it was settled meanwhile).
    """
    current = _lock_state(session, job)
    fate, reason, error = decision.fate, decision.reason, decision.error
    if fate == Fate.succeed:
        job.summary = records.json_safe(summary or {}, field="summary")
        transition(session, job, JobState.succeeded, message=reason)
    elif fate == Fate.retry:
        transition(session, job, JobState.retrying, message=reason, error=error)
        transition(session, job, JobState.queued, message="requeued; resumes from its latest checkpoint")
    elif fate == Fate.give_back:
        job.attempts = max(job.attempts - 1, 0)
        if current == JobState.dispatching:
            transition(session, job, JobState.queued, message=reason)
        else:
            transition(session, job, JobState.retrying, message=reason)
            transition(session, job, JobState.queued, message="requeued; resumes from its latest checkpoint")
    elif fate == Fate.cancel:
        if current == JobState.running:
            transition(session, job, JobState.cancelling, message="cancel requested")
        transition(session, job, JobState.cancelled, message=reason)
    else:
        transition(session, job, JobState.failed, message=reason, error=error)
    return JobState(job.state)


def release(session: Session, job: Job, *, message: str) -> JobState:
    """Give a claimed (``dispatching``) job back to the queue without counting the attempt."""
    return apply(session, job, Decision(Fate.give_back, message))


def lock_owned(session: Session, job_id: str, owner: str) -> Job | None:
    """The job's row, locked, if ``owner`` still holds its lease; None when it was reaped (its new owner
    decides) or is gone."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    return job if job is not None and job.lease_owner == owner else None


LeaseDecider = Callable[..., Decision]


def reap_expired(
    session: Session, decide: LeaseDecider, *, now: datetime | None = None, alive: str | None = None
) -> list[Job]:
    """Jobs whose lease expired (their dispatcher died), each settled as ``decide`` says
    (``workers.policy.after_lease_expiry``: cancelled, retried or failed).

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
        decision = decide(
            owner=job.lease_owner,
            state=job.state,
            attempts=job.attempts,
            max_retries=job.max_retries,
            cancel_requested=job.cancel_requested,
            error=job.error,
        )
        apply(session, job, decision)
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

"""Which queued job runs next: fair share between tenants, quotas, and backfill with a reservation.

Pure values, no database: ``queue.claim_next`` reads the candidates and the tenants' usage in its
transaction and asks ``choose`` for the order in which to try them.

- **Fair share**: the tenant furthest below its share goes first. A tenant's use is its dominant
  share of the cluster (the larger of its CPU and GPU fractions, as in DRF) divided by its weight
  (``share``, default 1); ties go to fewer running jobs. Within that order: priority, then age.
- **Quotas**: a job whose tenant would go over ``max_running``, ``max_cpus`` or ``max_gpus`` is not
  chosen (it waits; it reserves nothing).
- **Backfill**: a job that does not fit the free resources now lets smaller jobs behind it run. Once
  a job has waited ``reserve_after_s`` it is *urgent*: the first urgent job (in the same fair order)
  runs as soon as it fits, and until then what it needs is held back from every job behind it. So a
  big job is never starved by a stream of small ones, and an idle cluster never waits for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Candidate", "Quota", "Usage", "choose", "over_quota"]

# Resources compare with this slack: Ray counts in units of 1e-4, sums of floats drift below that.
EPSILON = 1e-6


@dataclass(frozen=True)
class Quota:
    """A tenant's limits (None: unlimited) and its weight in the fair share."""

    max_running: int | None = None
    max_cpus: float | None = None
    max_gpus: float | None = None
    max_queued: int | None = None
    max_priority: int | None = None
    share: float = 1.0


@dataclass(frozen=True)
class Usage:
    """What a tenant's jobs on Ray (dispatching, running, cancelling) hold now."""

    running: int = 0
    cpus: float = 0.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """A queued job as the scheduler sees it."""

    id: str
    tenant: str
    priority: int
    created_at: datetime
    queued_since: datetime
    cpus: float
    gpus: float


def over_quota(usage: Usage, quota: Quota, cpus: float, gpus: float) -> str | None:
    """Why one more job of ``cpus``/``gpus`` would take the tenant over its quota, or None."""
    if quota.max_running is not None and usage.running + 1 > quota.max_running:
        return f"max_running={quota.max_running}"
    if quota.max_cpus is not None and usage.cpus + cpus > quota.max_cpus + EPSILON:
        return f"max_cpus={quota.max_cpus:g}"
    if quota.max_gpus is not None and usage.gpus + gpus > quota.max_gpus + EPSILON:
        return f"max_gpus={quota.max_gpus:g}"
    return None


def _dominant_share(usage: Usage, total_cpus: float, total_gpus: float) -> float:
    shares = [usage.cpus / total_cpus if total_cpus > 0 else 0.0, usage.gpus / total_gpus if total_gpus > 0 else 0.0]
    return max(shares)


def _fits(job: Candidate, cpus: float, gpus: float) -> bool:
    return job.cpus <= cpus + EPSILON and job.gpus <= gpus + EPSILON


def choose(
    candidates: list[Candidate],
    usage: Mapping[str, Usage],
    quotas: Mapping[str, Quota],
    *,
    free: tuple[float, float],
    total: tuple[float, float],
    now: datetime,
    reserve_after_s: float,
) -> Iterator[Candidate]:
    """The jobs that may start now, best first (the claim takes the first it can lock).

    Args:
        candidates: queued jobs (any order); each tenant's best few are enough.
        usage: per tenant, what its jobs hold on Ray now (missing: nothing).
        quotas: per tenant (missing: ``Quota()``, no limits).
        free: the CPUs and GPUs free on this dispatcher's cluster now.
        total: the cluster's totals (the denominators of the fair share).
        now: the clock the waits are measured against.
        reserve_after_s: the wait after which a job that does not fit reserves what it needs.
    """

    def rank(job: Candidate) -> tuple[float, float, int, datetime, str]:
        used = usage.get(job.tenant, Usage())
        weight = max(quotas.get(job.tenant, Quota()).share, EPSILON)
        return (_dominant_share(used, *total) / weight, used.running / weight, -job.priority, job.created_at, job.id)

    eligible = [
        job
        for job in sorted(candidates, key=rank)
        if over_quota(usage.get(job.tenant, Usage()), quotas.get(job.tenant, Quota()), job.cpus, job.gpus) is None
    ]
    cpus, gpus = free
    urgent = next((j for j in eligible if (now - j.queued_since).total_seconds() >= reserve_after_s), None)
    if urgent is not None:
        if _fits(urgent, cpus, gpus):
            yield urgent
        # Held back from everyone behind it, whether it was taken or not: if the claim loses it to
        # another dispatcher, the next job must still fit beside it.
        cpus, gpus = cpus - urgent.cpus, gpus - urgent.gpus
    for job in eligible:
        if job is not urgent and _fits(job, cpus, gpus):
            yield job

"""Helpers for the database tests: job specs and jobs with chosen priority, age and resources.

``db_url``, ``empty_db_url`` and ``db`` come from ``tests/service/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from service.db.engine import Database
from service.db.models import Job, utcnow
from service.db.queue import claim_next, enqueue, transition
from service.db.states import JobState
from service.schemas.jobs import JobSpec

TENANT = "tenant-a"
# Far enough in the past that jobs the code under test creates (at utcnow()) are always newer.
EPOCH = datetime.fromisoformat("2024-01-01T00:00:00+00:00")

MakeJob = Callable[..., Job]


def job_spec(**overrides: Any) -> JobSpec:
    """A valid spec; resources given as ``cpus``/``gpus`` (workers x per-worker) for brevity."""
    cpus = overrides.pop("cpus", 1.0)
    gpus = overrides.pop("gpus", 0)
    resources = {"num_workers": max(int(gpus), 1), "cpus_per_worker": cpus / max(int(gpus), 1)}
    if gpus:
        resources["use_gpu"] = True
    return JobSpec.model_validate({"resources": resources, **overrides})


@pytest.fixture
def make_job(db: Database) -> MakeJob:
    """Enqueue one job (its own transaction) and return it detached.

    ``age_s`` sets ``created_at`` to ``EPOCH + age_s`` seconds, so tests control the order by age.
    """

    def make(
        *,
        tenant: str = TENANT,
        age_s: float | None = None,
        idempotency_key: str | None = None,
        **spec: Any,
    ) -> Job:
        with db.write() as session:
            job, _ = enqueue(session, tenant=tenant, spec=job_spec(**spec), idempotency_key=idempotency_key)
            if age_s is not None:
                job.created_at = EPOCH + timedelta(seconds=age_s)
        return job

    return make


def claim(db: Database, *, owner: str = "d1", lease_s: float = 30.0, cpus: float = 64, gpus: float = 8) -> Job:
    """Claim the head of the queue, which the test expects to exist."""
    job = claim_next(db, owner=owner, lease_s=lease_s, free_cpus=cpus, free_gpus=gpus)
    assert job is not None, "the queue was expected to have a job that fits"
    return job


def move(db: Database, job_id: str, *targets: JobState) -> Job:
    """Apply ``transition`` for each target in turn, each in its own transaction."""
    for target in targets:
        with db.write() as session:
            job = session.get(Job, job_id)
            assert job is not None
            transition(session, job, target)
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def seconds_from_now(job_time: datetime | None) -> float:
    assert job_time is not None
    return (job_time - utcnow()).total_seconds()

"""Three dispatcher processes on one PostgreSQL queue and one Ray cluster drain a batch of small
jobs of two tenants, each allowed one job at a time: each job runs exactly once, none is lost, and
no tenant ever has two on Ray at once. (``bench/dispatchers.py`` does the same with 500.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from bench.dispatchers import small_job
from tests.e2e.conftest import RAY_CPUS, RayHead, run_service, wait_for
from tests.service.conftest import PostgresServer, postgres_server  # noqa: F401 - the fixture

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.timeout(480)]

JOBS = 24


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    name = postgres_server.create()
    try:
        yield postgres_server.url_of(name)
    finally:
        postgres_server.drop(name)


def test_three_dispatchers_run_every_job_exactly_once(ray_head: RayHead, tmp_path: Path, postgres_url: str) -> None:
    from sqlalchemy import select

    from service.client import Client
    from service.db.models import Job, JobEvent, Metric
    from service.security import create_token

    with run_service(
        ray_head.address,
        ray_head.dashboard_url,
        tmp_path / "fsg",
        database_url=postgres_url,
        dispatchers=3,
        extra_env={"FSG_TENANT_MAX_RUNNING": "1"},
    ) as svc:
        db = svc.database()
        try:
            with db.write() as session:
                other = Client(svc.url, create_token(session, "bob", "tests", 1))
            clients = [svc.client(), other]
            ids = {clients[i % 2].submit(small_job(i))["id"] for i in range(JOBS)}

            def finished() -> bool:
                with db.read() as session:
                    states = session.scalars(select(Job.state).where(Job.id.in_(ids))).all()
                return len(states) == JOBS and all(s in ("succeeded", "failed", "cancelled") for s in states)

            wait_for(finished, 360, f"{JOBS} jobs finish", poll_s=1)
            with db.read() as session:
                jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
                events = session.scalars(select(JobEvent).where(JobEvent.job_id.in_(ids))).all()
                metrics = session.scalars(select(Metric).where(Metric.job_id.in_(ids))).all()
        finally:
            db.dispose()
    assert sorted(j.state for j in jobs) == ["succeeded"] * JOBS
    assert all(j.attempts == 1 for j in jobs)
    runs = Counter(e.job_id for e in events if e.kind == "state" and e.to_state == "running")
    assert runs == Counter(dict.fromkeys(ids, 1))
    assert all(m.attempt == 1 for m in metrics) and len({m.job_id for m in metrics}) == JOBS
    claimers = {e.data["owner"] for e in events if e.kind == "state" and e.to_state == "dispatching"}
    assert len(claimers) >= 2, "the dispatchers shared the queue"
    # The quota (one job on Ray per tenant) held across the three dispatchers: a job's claim is written
    # after the previous job of its tenant ended, so the tenant's [claimed, ended] spans never overlap.
    tenant_of = {j.id: j.tenant for j in jobs}
    spans: dict[str, list[tuple[datetime, datetime]]] = {"e2e": [], "bob": []}
    for job_id in ids:
        own = [e for e in events if e.job_id == job_id and e.kind == "state"]
        claimed = min(e.created_at for e in own if e.to_state == "dispatching")
        ended = max(e.created_at for e in own if e.to_state == "succeeded")
        spans[tenant_of[job_id]].append((claimed, ended))
    for tenant, tenant_spans in spans.items():
        tenant_spans.sort()
        assert len(tenant_spans) == JOBS // 2
        overlaps = [(a, b) for a, b in zip(tenant_spans, tenant_spans[1:], strict=False) if b[0] < a[1]]
        assert not overlaps, f"tenant {tenant} had two jobs on Ray at once: {overlaps[:2]}"
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")

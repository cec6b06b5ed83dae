"""One tenant's job never stops the service (issue #10), with the real API, a real dispatcher and Ray.

The job specs that once made the dispatcher exit, and jobs no live Ray cluster can hold, are refused at
submit (422 naming the field); a job
whose stored spec stops validating (written before a rule tightened, or edited in the database) ends
``failed`` with a message naming the field, and the dispatcher goes on to the next job.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from bench.dispatchers import small_job
from service.db import queue, reads
from service.db.models import Job, utcnow
from service.schemas.jobs import JobSpec
from tests.e2e.conftest import Service, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CRASH_INPUTS = [
    ({"data": {"dataset": "digits", "root": "a" * 300}}, ["body", "data", "root"]),
    ({"data": {"dataset": "digits", "root": "a/" * 2047}}, ["body", "data", "root"]),
    ({"resources": {"num_workers": 1, "executor": "ray_task", "cpus_per_worker": 0.00005}}, ["body", "resources"]),
]


def _clusters(db: Any, since: Any) -> list[tuple[float, float]]:
    with db.read() as session:
        return reads.live_clusters(session, since=since)


def _post(service: Service, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {service.token}"})


def test_crash_inputs_are_refused_and_a_broken_stored_spec_fails_alone(service: Service) -> None:
    for overrides, loc in CRASH_INPUTS:
        response = _post(service, small_job(0) | overrides)
        assert response.status_code == 422, response.text
        assert any(d["loc"][: len(loc)] == loc for d in response.json()["detail"]), response.json()

    # Jobs no live Ray cluster can hold: refused at submit, naming the resource and the cluster's totals,
    # once the dispatcher has published them with its heartbeat.
    db = service.database()
    try:
        since = utcnow() - timedelta(minutes=1)
        wait_for(lambda: _clusters(db, since), 90, "the dispatcher publishes its Ray cluster")
    finally:
        db.dispose()
    for resources, needs in (({"num_workers": 256, "cpus_per_worker": 256}, "65536 CPUs"), ({"use_gpu": True}, "GPUs")):
        response = _post(service, small_job(0) | {"resources": resources})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "resources"]
        assert needs in response.json()["detail"][0]["msg"] and "0 GPUs" in response.json()["detail"][0]["msg"]

    client = service.client()
    db = service.database()
    try:
        with db.write() as session:  # as if written before the rule existed; queued and edited in one transaction
            # Accepted before any dispatcher had published its cluster (or before the cluster shrank).
            huge_spec = JobSpec.model_validate(small_job(4) | {"resources": {"num_workers": 64}})
            huge = queue.enqueue(session, tenant="e2e", spec=huge_spec)[0].id
            spec = JobSpec.model_validate(small_job(1) | {"max_retries": 3})
            job, _ = queue.enqueue(session, tenant="e2e", spec=spec)
            broken = job.id
            session.execute(
                update(Job)
                .where(Job.id == broken)
                .values(spec={**job.spec, "data": {**job.spec["data"], "root": "x" * 300}})
            )
    finally:
        db.dispose()
    good = client.submit(small_job(2))["id"]

    failed = client.wait(broken, poll_s=0.5, timeout_s=120)
    assert failed["state"] == "failed" and failed["attempts"] == 1  # not retried: the spec will not get better
    assert "data.root" in failed["error"] and "Traceback" not in failed["error"]
    assert client.wait(good, poll_s=0.5, timeout_s=180)["state"] == "succeeded"
    refused = client.wait(huge, poll_s=0.5, timeout_s=120)
    assert refused["state"] == "failed" and refused["attempts"] == 0 and "needs 64 CPUs" in refused["error"]
    assert all(proc.poll() is None for proc in service.dispatchers)  # the dispatcher is still running

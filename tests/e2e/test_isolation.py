"""One tenant's job never stops the service (issue #10), with the real API, a real dispatcher and Ray.

The job specs that once made the dispatcher exit are refused at submit (422 naming the field); a job
whose stored spec stops validating (written before a rule tightened, or edited in the database) ends
``failed`` with a message naming the field, and the dispatcher goes on to the next job.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import update

from bench.dispatchers import small_job
from service.db.models import Job
from tests.e2e.conftest import Service

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CRASH_INPUTS = [
    ({"data": {"dataset": "digits", "root": "a" * 300}}, ["body", "data", "root"]),
    ({"data": {"dataset": "digits", "root": "a/" * 2047}}, ["body", "data", "root"]),
    ({"resources": {"num_workers": 1, "executor": "ray_task", "cpus_per_worker": 0.00005}}, ["body", "resources"]),
]


def _post(service: Service, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {service.token}"})


def test_crash_inputs_are_refused_and_a_broken_stored_spec_fails_alone(service: Service) -> None:
    for overrides, loc in CRASH_INPUTS:
        response = _post(service, small_job(0) | overrides)
        assert response.status_code == 422, response.text
        assert any(d["loc"][: len(loc)] == loc for d in response.json()["detail"]), response.json()

    client = service.client()
    broken = client.submit(small_job(1) | {"max_retries": 3})["id"]
    db = service.database()
    try:
        with db.write() as session:  # as if written before the rule existed
            spec = session.get(Job, broken).spec  # type: ignore[union-attr]
            session.execute(
                update(Job).where(Job.id == broken).values(spec={**spec, "data": {**spec["data"], "root": "x" * 300}})
            )
    finally:
        db.dispose()
    good = client.submit(small_job(2))["id"]

    failed = client.wait(broken, poll_s=0.5, timeout_s=120)
    assert failed["state"] == "failed" and failed["attempts"] == 1  # not retried: the spec will not get better
    assert "data.root" in failed["error"] and "Traceback" not in failed["error"]
    assert client.wait(good, poll_s=0.5, timeout_s=180)["state"] == "succeeded"
    assert all(proc.poll() is None for proc in service.dispatchers)  # the dispatcher is still running

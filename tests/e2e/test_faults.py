"""Faults, for real: a Ray training worker killed mid-run, PostgreSQL stopped for 10 s during a run,
a dispatcher killed while its job is ``cancelling``. Marked ``ray``; every wait is bounded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RAY_CPUS, PrivatePostgres, RayHead, Service, run_service, wait_for
from tests.e2e.test_service_e2e import events_of, job_spec

pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def _binary_epochs(client: Any, job_id: str) -> int:
    return len([r for r in client.metrics(job_id) if r["phase"] == "binary"])


def test_a_killed_training_worker_is_restarted_from_the_latest_checkpoint(service: Service, ray_head: RayHead) -> None:
    from ray.util.state import list_actors

    client = service.client()
    job_id = client.submit(job_spec(epochs=6, max_steps_per_epoch=6))["id"]  # two workers
    wait_for(lambda: _binary_epochs(client, job_id) >= 1, 180, "the first binarized epoch")
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)

    final = client.wait(job_id, poll_s=1, timeout_s=300)
    assert final["state"] == "succeeded", final.get("error")
    assert final["attempts"] == 1  # Ray Train restarted the worker group inside the attempt

    events = events_of(service, job_id)
    failures = [e for e in events if e.kind == "worker_failure"]
    assert len(failures) == 1 and failures[0].data["failure"] == 1
    placements = [e for e in events if e.kind == "placement"]
    assert len(placements) == 2 and placements[1].id > failures[0].id  # a new worker group after the failure
    rows = client.metrics(job_id)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), *[("binary", e) for e in range(1, 7)]]
    # Resumed from the latest checkpoint, not from scratch: the checkpointed pre-training epoch
    # was reported once only.
    reported = [(e.data["phase"], e.data["epoch"]) for e in events if e.kind == "metric"]
    assert reported.count(("pretrain", 1)) == 1
    assert "worker group failure 1" in "\n".join(client.logs(job_id))


def test_postgresql_stopped_for_ten_seconds_during_a_run(
    ray_head: RayHead, tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    from service.db import reads
    from service.db.engine import Database
    from service.db.models import utcnow

    with run_service(
        ray_head.address, ray_head.dashboard_url, tmp_path / "fsg", database_url=private_postgres.url
    ) as svc:
        client = svc.client()
        job_id = client.submit(job_spec(epochs=10, max_steps_per_epoch=6, resources={"num_workers": 1}))["id"]
        wait_for(lambda: _binary_epochs(client, job_id) >= 1, 180, "the first binarized epoch")
        before = _binary_epochs(client, job_id)

        private_postgres.stop()
        stopped = time.monotonic()
        answers = []
        auth = {"Authorization": f"Bearer {svc.token}"}
        while time.monotonic() - stopped < 10:
            answers.append(httpx.get(f"{svc.url}/v1/jobs/{job_id}", headers=auth, timeout=5).status_code)
            answers.append(httpx.get(f"{svc.url}/v1/jobs", headers=auth, timeout=5).status_code)
            time.sleep(0.5)
        ready = httpx.get(f"{svc.url}/readyz", timeout=5).status_code
        private_postgres.start()
        restarted = utcnow()

        assert set(answers) == {503} and ready == 503
        final = client.wait(job_id, poll_s=1, timeout_s=300)
        assert final["state"] == "succeeded", final.get("error")
        assert final["attempts"] == 1
        rows = client.metrics(job_id)
        assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), *[("binary", e) for e in range(1, 11)]]
        assert before < 10, "the run was still going when the database stopped"
    db = Database.from_url(private_postgres.url)
    try:
        with db.read() as session:
            metrics = reads.list_metrics(session, job_id)
            written_after = [m for m in metrics if m.created_at >= restarted]
    finally:
        db.dispose()
    assert written_after, "epochs of the outage and after it reached the database once it was back"
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")


def test_a_dispatcher_killed_while_cancelling_leaves_the_job_cancelled_and_rays_cpus_free(
    service: Service, ray_head: RayHead
) -> None:
    client = service.client()
    job_id = client.submit(job_spec(epochs=200, max_steps_per_epoch=None))["id"]
    wait_for(lambda: client.metrics(job_id), 120, "the first epoch is reported")
    assert ray_head.resources()[0] < RAY_CPUS
    dispatcher = service.dispatchers[0]
    dispatcher.send_signal(signal.SIGSTOP)  # it must never see the cancel
    assert client.cancel(job_id)["state"] == "cancelling"
    dispatcher.send_signal(signal.SIGKILL)
    dispatcher.wait(timeout=10)

    service.start_dispatcher()
    wait_for(lambda: client.job(job_id)["state"] == "cancelled", 60, "the job ends cancelled")
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")
    final = client.job(job_id)
    assert final["attempts"] == 1  # cancelled, not retried
    transitions = [(e.from_state, e.to_state) for e in events_of(service, job_id) if e.kind == "state"]
    assert transitions[-2:] == [("running", "cancelling"), ("cancelling", "cancelled")]

"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from service.api.routes import health
from service.app import create_app
from service.db import records
from service.db.engine import Database
from service.db.models import JobEvent, utcnow
from service.settings import Settings


def test_liveness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readiness_reports_the_database_and_leaves_ray_optional(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "ray": "not configured"}


def test_readiness_probes_a_recorded_or_configured_ray(client: TestClient, tmp_path: Any) -> None:
    storage = client.app.state.storage  # type: ignore[attr-defined]
    with socket.socket() as listener:  # something that accepts connections, standing in for the GCS
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        storage.write_ray_record({"address": f"127.0.0.1:{port}", "dashboard_url": "http://127.0.0.1:1"})
        assert client.get("/readyz").json()["ray"] == "ok"
    assert client.get("/readyz").json() == {"database": "ok", "ray": "unreachable"}  # closed now
    storage.clear_ray_record()


def test_ray_targets_from_settings(tmp_path: Any) -> None:
    from service.storage import Storage

    storage = Storage(tmp_path)
    assert health.ray_targets(Settings(home=tmp_path), storage) == []
    assert health.ray_targets(Settings(home=tmp_path, RAY_ADDRESS="ray://head:10001"), storage) == [("head", 10001)]
    assert health.ray_targets(Settings(home=tmp_path, RAY_ADDRESS="10.0.0.2:6379"), storage) == [("10.0.0.2", 6379)]
    auto = Settings(home=tmp_path, RAY_ADDRESS="auto", ray_dashboard_url="http://dash:8265")
    assert health.ray_targets(auto, storage) == [("dash", 8265)]


def test_readiness_is_503_when_the_database_is_down(tmp_path: Any) -> None:
    # A database that cannot be opened: a directory where the SQLite file should be.
    (tmp_path / "db").mkdir()
    broken = Database.from_url(f"sqlite:///{tmp_path / 'db'}")
    app = create_app(Settings(home=tmp_path / "home"), db=broken)
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["database"] == "unreachable"
        jobs = client.get("/v1/jobs", headers={"Authorization": "Bearer fsg_x"})
        assert jobs.status_code == 503 and jobs.json() == {"detail": "the database is unavailable; retry later"}
    broken.dispose()


def test_prometheus_metrics(client: TestClient, auth: dict[str, str], submit: Any, worker: Any) -> None:
    a = submit()
    submit()
    worker.start(a["id"])
    client.get("/v1/jobs", headers=auth)
    client.get("/v1/jobs/nope", headers=auth)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'fsg_jobs{state="queued"} 1.0' in lines
    assert 'fsg_jobs{state="running"} 1.0' in lines
    assert 'fsg_jobs{state="failed"} 0.0' in lines
    assert "fsg_queue_depth 1.0" in lines
    assert 'fsg_http_requests_total{method="POST",route="/v1/jobs",status="201"} 2.0' in lines
    assert 'fsg_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in lines
    assert any(line.startswith("fsg_http_request_duration_seconds_bucket") for line in lines)


def test_metric_labels_stay_bounded_whatever_the_paths(client: TestClient) -> None:
    """Route templates, never raw paths: a catch-all route with multi-segment values, unknown paths."""
    for i in range(200):
        client.get(f"/ui/{i}/x{i}")
        client.get(f"/nothing/{i}")
        client.get(f"/v1/jobs/j{i}/metrics")
    routes = {
        dict(labels)["route"]
        for (name, labels) in _samples(client.get("/metrics").text)
        if name == "fsg_http_requests_total"
    }
    assert routes <= {"/ui/{path}", "unmatched", "/v1/jobs/{job_id}/metrics", "/metrics"}, routes
    assert {"/ui/{path}", "unmatched", "/v1/jobs/{job_id}/metrics"} <= routes


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition as ``{(name, sorted labels): value}``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _beat(database: Database, owner: str, age_s: float, *, stopped: bool = False) -> None:
    with database.write() as session:
        records.record_heartbeat(
            session,
            owner=owner,
            hostname="node",
            pid=1,
            started_at=utcnow() - timedelta(hours=3),
            running_attempts=1,
            claims=4,
            now=utcnow() - timedelta(seconds=age_s),
        )
        if stopped:
            records.record_stopped(session, owner)


def test_metrics_report_live_and_stale_dispatchers(client: TestClient, database: Database, settings: Settings) -> None:
    assert settings.heartbeat_s == 5.0  # alive: a heartbeat younger than 15 s
    _beat(database, "live:1:aaaaaa", 1)
    _beat(database, "stale:2:bbbbbb", 60)
    _beat(database, "stopped:3:cccccc", 1, stopped=True)  # a clean shutdown: no series at all
    _beat(database, "gone:4:dddddd", 2 * 3600)  # crashed long ago: out of the scrape's window
    samples = _samples(client.get("/metrics").text)
    ages = {
        dict(labels)["dispatcher"]: value
        for (name, labels), value in samples.items()
        if name == "fsg_dispatcher_heartbeat_age_seconds"
    }
    assert set(ages) == {"live:1:aaaaaa", "stale:2:bbbbbb"}
    assert 1 <= ages["live:1:aaaaaa"] < 15
    assert 60 <= ages["stale:2:bbbbbb"] < 120
    assert samples[("fsg_dispatchers_alive", ())] == 1
    # The live one stops cleanly: its series goes at the next scrape and nothing is alive.
    with database.write() as session:
        records.record_stopped(session, "live:1:aaaaaa")
    samples = _samples(client.get("/metrics").text)
    assert [
        dict(labels)["dispatcher"] for name, labels in samples if name == "fsg_dispatcher_heartbeat_age_seconds"
    ] == ["stale:2:bbbbbb"]
    assert samples[("fsg_dispatchers_alive", ())] == 0


def test_metrics_report_the_oldest_queued_age(client: TestClient, database: Database, submit: Any) -> None:
    assert _samples(client.get("/metrics").text)[("fsg_queue_oldest_age_seconds", ())] == 0
    job = submit()
    submit()
    with database.write() as session:  # the first job was submitted 100 s ago
        session.execute(
            update(JobEvent)
            .where(JobEvent.job_id == job["id"], JobEvent.to_state == "queued")
            .values(created_at=utcnow() - timedelta(seconds=100))
        )
    age = _samples(client.get("/metrics").text)[("fsg_queue_oldest_age_seconds", ())]
    assert 100 <= age < 160

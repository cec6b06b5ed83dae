"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import socket
from typing import Any

from fastapi.testclient import TestClient

from service.api.routes import health
from service.app import create_app
from service.db.engine import Database
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

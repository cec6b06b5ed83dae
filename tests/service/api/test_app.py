"""create_app: lifespan, database ownership, OpenAPI, error mapping, no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import inspect

from service.app import create_app
from service.db.engine import Database
from service.settings import Settings


def test_lifespan_migrates_and_disposes_the_database_it_owns(settings: Settings) -> None:
    app = create_app(settings)
    assert app.state.db is None
    with TestClient(app) as client:
        db = app.state.db
        assert isinstance(db, Database)
        assert {"jobs", "job_events", "tokens"} <= set(inspect(db.engine).get_table_names())
        assert client.get("/healthz").status_code == 200
        assert settings.resolved_artifacts_dir.is_dir()
    assert app.state.db is None


def test_a_given_database_is_used_as_is_and_left_open(settings: Settings, tmp_path: Path) -> None:
    with TestClient(create_app(settings)):  # migrate the database once
        pass
    db = Database.from_url(settings.resolved_database_url)
    app = create_app(settings, db=db)
    with TestClient(app) as client:
        assert app.state.db is db
        assert client.get("/readyz").json()["database"] == "ok"
    with db.read() as session:  # still usable: the app did not dispose it
        session.connection()
    db.dispose()


def test_openapi_lists_every_route(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/metrics",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/logs",
        "/v1/jobs/{job_id}/trials",
        "/v1/jobs/{job_id}/checkpoints",
        "/v1/jobs/{job_id}/checkpoints/{ckpt}",
        "/v1/jobs/{job_id}/summary",
        "/v1/estimators",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "JobSpec" in schemas and "JobRead" in schemas


def test_estimators_are_listed(client: TestClient, auth: dict[str, str]) -> None:
    from fsg_core.estimators import names

    listed = client.get("/v1/estimators", headers=auth).json()
    assert [e["name"] for e in listed] == names()


def test_unexpected_errors_are_a_bare_500(settings: Settings, monkeypatch: Any) -> None:
    from service.db import reads

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals: /srv/db password=hunter2")

    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        from service.security import create_token

        with app.state.db.write() as session:
            token = create_token(session, "alice")
        monkeypatch.setattr(reads, "list_jobs", broken)
        response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "hunter2" not in response.text


def test_unknown_paths_and_methods(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/nothing", headers=auth).status_code == 404
    assert client.delete("/v1/jobs", headers=auth).status_code == 405


def test_importing_the_app_never_imports_ray() -> None:
    code = "import sys, service.app; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


ODD_IDS = ["x" * 300, "%00", "a%00b", "%C3%A9", "..%2F..%2Fetc", "-1", "0"]


def test_odd_input_never_gets_a_500(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    import base64
    import json

    job = client.post("/v1/jobs", json=tiny_spec(), headers=auth).json()
    nul_cursor = base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", "\x00"]).encode()).decode()
    requests = [("GET", f"/v1/jobs/{odd}{suffix}") for odd in ODD_IDS for suffix in ["", "/metrics", "/events"]]
    requests += [("POST", f"/v1/jobs/{odd}/cancel") for odd in ODD_IDS]
    requests += [("GET", f"/v1/jobs/{job['id']}/checkpoints/{odd}") for odd in ODD_IDS]
    requests += [
        ("GET", "/v1/jobs?name=%00"),
        ("GET", "/v1/jobs?status=%00"),
        ("GET", "/v1/jobs?cursor=%00"),
        ("GET", f"/v1/jobs?cursor={nul_cursor}"),
        ("GET", f"/v1/jobs/{job['id']}/metrics?trial=%00"),
        ("GET", f"/v1/jobs/{job['id']}/events?after=99999999999999999999999"),
        ("GET", "/v1/jobs?limit=99999999999999999999999"),
    ]
    for method, path in requests:
        response = client.request(method, path, headers=auth)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
    json_headers = auth | {"Content-Type": "application/json"}
    for body in [
        tiny_spec(name="a\x00b"),
        tiny_spec(data={"dataset": "digits", "root": "a\x00b"}),
        tiny_spec(kind="search", search={"space": {"optimizer.name": {"type": "choice", "values": ["sgd\x00"]}}}),
        tiny_spec(seed=10**30),
        tiny_spec(optimizer={"name": "adam", "lr": float("nan")}),
    ]:
        # json.dumps writes NaN as the bare (non-JSON) word NaN, as some clients do.
        response = client.post("/v1/jobs", content=json.dumps(body), headers=json_headers)
        assert response.status_code < 500, (body, response.text)

"""GET /v1/jobs/{id}/logs, plain and followed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.routes import logs as logs_route
from service.db.states import JobState


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_route, "POLL_S", 0.02)


def test_log_is_empty_before_anything_is_written(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    job = submit()
    response = client.get(f"/v1/jobs/{job['id']}/logs", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == ""


def test_log_text(client: TestClient, auth: dict[str, str], submit: Any, settings: Any) -> None:
    job = submit()
    path = client.app.state.storage.log_path(job["id"])  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True)
    path.write_text("epoch 1 loss 2.0\nepoch 2 loss 1.5\n")
    assert client.get(f"/v1/jobs/{job['id']}/logs", headers=auth).text == "epoch 1 loss 2.0\nepoch 2 loss 1.5\n"


def test_follow_streams_new_lines_until_the_job_ends(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    path = client.app.state.storage.log_path(job["id"])  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True)
    path.write_text("starting\n")
    worker.start(job["id"])

    def write_more() -> None:
        for i in range(3):
            time.sleep(0.05)
            with path.open("a") as fh:
                fh.write(f"epoch {i}\n")
        with path.open("a") as fh:
            fh.write("done (no newline)")
        worker.finish(job["id"], JobState.succeeded)

    thread = threading.Thread(target=write_more)
    thread.start()
    chunks = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/logs?follow=true", headers=auth) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            chunks.append(chunk)
    thread.join()
    assert "".join(chunks) == "starting\nepoch 0\nepoch 1\nepoch 2\ndone (no newline)"
    assert len(chunks) > 1  # streamed, not read once at the end


def test_follow_of_a_finished_job_returns_at_once(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    worker.finish(job["id"], JobState.failed, error="boom")
    assert client.get(f"/v1/jobs/{job['id']}/logs?follow=true", headers=auth).text == ""

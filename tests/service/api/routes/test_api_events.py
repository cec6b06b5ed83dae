"""GET /v1/jobs/{id}/events: server-sent events in order, resumable, ending with the job."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.routes import events as events_route
from service.db.states import JobState


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_route, "POLL_S", 0.02)


def parse(text: str) -> list[dict[str, Any]]:
    """SSE messages as dicts of their fields (``data`` decoded); comment-only blocks as {"comment": ...}."""
    messages = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields["comment" if name == "" else name] = value.strip()
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        messages.append(fields)
    return messages


def run_to_end(worker: Any, job_id: str) -> None:
    worker.start(job_id)
    worker.report(job_id, [{"phase": "binary", "epoch": 1, "val_acc": 0.5}])
    worker.finish(job_id, JobState.succeeded)


def test_events_in_order_with_ids_and_the_stream_ends(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    run_to_end(worker, job["id"])
    response = client.get(f"/v1/jobs/{job['id']}/events", headers=auth)  # follows, but the job has ended
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = parse(response.text)
    ids = [int(m["id"]) for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [m["event"] for m in messages] == ["state", "state", "state", "metric", "state"]
    assert [m["data"]["to_state"] for m in messages if m["event"] == "state"] == [
        "queued",
        "dispatching",
        "running",
        "succeeded",
    ]
    assert all(m["data"]["id"] == int(m["id"]) and m["data"]["job_id"] == job["id"] for m in messages)


def test_resume_with_last_event_id_or_after(client: TestClient, auth: dict[str, str], submit: Any, worker: Any) -> None:
    job = submit()
    run_to_end(worker, job["id"])
    everything = parse(client.get(f"/v1/jobs/{job['id']}/events", headers=auth).text)
    cut = everything[1]["id"]
    resumed = parse(client.get(f"/v1/jobs/{job['id']}/events", headers=auth | {"Last-Event-ID": cut}).text)
    assert [m["id"] for m in resumed] == [m["id"] for m in everything[2:]]
    by_query = parse(client.get(f"/v1/jobs/{job['id']}/events?after={cut}", headers=auth).text)
    assert by_query == resumed
    last = everything[-1]["id"]
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=auth | {"Last-Event-ID": last}).text == ""


def test_follow_false_returns_what_exists(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    job = submit()  # queued: a followed stream would wait
    messages = parse(client.get(f"/v1/jobs/{job['id']}/events?follow=false", headers=auth).text)
    assert [m["data"]["to_state"] for m in messages] == ["queued"]


def test_live_stream_delivers_new_events_and_ends_with_the_job(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()

    def later() -> None:
        time.sleep(0.2)
        run_to_end(worker, job["id"])

    thread = threading.Thread(target=later)
    thread.start()
    received = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth) as response:
        for chunk in response.iter_text():
            received.append(chunk)
    thread.join()
    messages = parse("".join(received))
    assert [m["event"] for m in messages] == ["state", "state", "state", "metric", "state"]
    assert messages[-1]["data"]["to_state"] == "succeeded"


def test_idle_stream_sends_heartbeats(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_route, "HEARTBEAT_S", 0.05)
    job = submit()

    def later() -> None:
        time.sleep(0.3)
        worker.finish(job["id"], JobState.cancelled)

    thread = threading.Thread(target=later)
    thread.start()
    text = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).text
    thread.join()
    assert ": heartbeat" in text
    assert parse(text)[-1]["data"]["to_state"] == "cancelled"


@pytest.mark.parametrize(("header", "query"), [("abc", ""), ("-3", ""), ("", "?after=-1"), ("", "?after=x")])
def test_bad_resume_positions(client: TestClient, auth: dict[str, str], submit: Any, header: str, query: str) -> None:
    job = submit()
    headers = auth | ({"Last-Event-ID": header} if header else {})
    response = client.get(f"/v1/jobs/{job['id']}/events{query}", headers=headers)
    if header:
        assert response.status_code == 400 and "Last-Event-ID" in response.json()["detail"]
    else:
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "after"]

"""GET /v1/jobs/{id}/trials."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def test_trials_are_listed_with_config_state_and_best(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    search = {"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "num_samples": 2}
    job = submit(kind="search", search=search)
    assert client.get(f"/v1/jobs/{job['id']}/trials", headers=auth).json() == []
    worker.start(job["id"])
    worker.trial(job["id"], "t1", {"optimizer.lr": 1e-3}, "succeeded", 0.6)
    worker.trial(job["id"], "t2", {"optimizer.lr": 5e-3}, "running")
    with worker.database.write() as session:
        from service.db import records

        records.mark_best_trial(session, job["id"], "t1")
    trials = client.get(f"/v1/jobs/{job['id']}/trials", headers=auth).json()
    assert [(t["trial_key"], t["state"], t["metric"], t["is_best"]) for t in trials] == [
        ("t1", "succeeded", 0.6, True),
        ("t2", "running", None, False),
    ]
    assert trials[0]["config"] == {"optimizer.lr": 1e-3}

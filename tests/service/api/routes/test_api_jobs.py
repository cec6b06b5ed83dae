"""POST/GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.db import records
from service.db.states import JobState

JOB_ROUTES = [
    ("GET", ""),
    ("POST", "/cancel"),
    ("GET", "/metrics"),
    ("GET", "/metrics?format=csv"),
    ("GET", "/events?follow=false"),
    ("GET", "/logs"),
    ("GET", "/trials"),
    ("GET", "/checkpoints"),
    ("GET", "/checkpoints/latest"),
    ("GET", "/checkpoints/1?format=full"),
    ("GET", "/summary"),
]


def locs(response: Any) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


# --- submit -------------------------------------------------------------------------------------------------


def test_submit_creates_a_queued_job_that_is_listed(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    response = client.post("/v1/jobs", json=tiny_spec(name="first"), headers=auth)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["name"] == "first" and job["kind"] == "train"
    assert job["attempts"] == 0 and job["max_retries"] == 1 and job["cancel_requested"] is False
    assert job["spec"]["estimator"]["name"] == "ste"
    assert job["spec"]["epochs"] == 2 and job["spec"]["resources"]["num_workers"] == 1
    assert job["ray_dashboard_url"] is None  # not on Ray yet
    assert job["created_at"].endswith(("Z", "+00:00"))

    listed = client.get("/v1/jobs", headers=auth).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert listed["next_cursor"] is None
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json() == job


def test_dry_run_resolves_without_writing(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, counts: Any, data_root: Path
) -> None:
    (data_root / "cifar").mkdir()
    before = counts()
    spec = tiny_spec(data={"dataset": "cifar10", "root": "cifar"}, resources={"num_workers": 2})
    response = client.post("/v1/jobs?dry_run=true", json=spec, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is True and body["cpus"] == 2.0 and body["gpus"] == 0.0
    assert body["spec"]["data"]["root"] == str((data_root / "cifar").resolve())  # relative to the data root
    assert body["spec"]["optimizer"]["name"] == "adam" and "schedule" in body["spec"]
    assert counts() == before


def test_dry_run_still_validates(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    response = client.post("/v1/jobs?dry_run=true", json=tiny_spec(epochs=0), headers=auth)
    assert response.status_code == 422
    assert locs(response) == [["body", "epochs"]]


# --- idempotency --------------------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_first_job(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], tiny_spec: Any, counts: Any
) -> None:
    key = {"Idempotency-Key": "submit-42"}
    first = client.post("/v1/jobs", json=tiny_spec(), headers=auth | key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    after_first = counts()

    replay = client.post("/v1/jobs", json=tiny_spec(), headers=auth | key)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert counts() == after_first

    conflict = client.post("/v1/jobs", json=tiny_spec(epochs=3), headers=auth | key)
    assert conflict.status_code == 409
    assert "Idempotency-Key" in conflict.json()["detail"]
    assert counts() == after_first

    # Keys are per tenant: bob's identical key makes bob's own job.
    other = client.post("/v1/jobs", json=tiny_spec(epochs=3), headers=other_auth | key)
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


def test_empty_idempotency_key_is_refused(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    response = client.post("/v1/jobs", json=tiny_spec(), headers=auth | {"Idempotency-Key": ""})
    assert response.status_code == 422
    assert locs(response) == [["header", "idempotency-key"]]


# --- bad input: the right 4xx, the field named, nothing written ---------------------------------------------

BAD_SPECS = [
    # (overrides, expected loc)
    ({"bogus": 1}, ["body", "bogus"]),
    ({"optimizer": {"name": "adam", "lr": 1e-3, "momentom": 0.9}}, ["body", "optimizer", "momentom"]),
    ({"epochs": 0}, ["body", "epochs"]),
    ({"batch_size": 10**9}, ["body", "batch_size"]),
    ({"optimizer": {"name": "adam", "lr": -1.0}}, ["body", "optimizer", "lr"]),
    ({"priority": 5000}, ["body", "priority"]),
    ({"resources": {"num_workers": 0}}, ["body", "resources", "num_workers"]),
    ({"estimator": {"name": "nope"}}, ["body", "estimator", "name"]),
    ({"estimator": {"name": "approx_sign", "bogus": 1}}, ["body", "estimator", "bogus"]),
    ({"model": {"arch": "resnet9000"}}, ["body", "model", "arch"]),
    ({"data": {"dataset": "imagenet"}}, ["body", "data", "dataset"]),
    ({"data": {"dataset": "digits", "root": "/etc"}}, ["body", "data", "root"]),
    ({"data": {"dataset": "digits", "root": "../outside"}}, ["body", "data", "root"]),
    ({"init": {"checkpoint": "/etc/passwd"}}, ["body", "init", "checkpoint"]),
    ({"name": "bad/name"}, ["body", "name"]),
    ({"kind": "search"}, ["body"]),
    # inputs that once took the dispatcher down (issue #10): a name the file system refuses, and a CPU
    # count below Ray's unit
    ({"data": {"dataset": "digits", "root": "a" * 300}}, ["body", "data", "root"]),
    ({"init": {"checkpoint": "c" * 256}}, ["body", "init", "checkpoint"]),
    ({"resources": {"cpus_per_worker": 0.00005, "executor": "ray_task"}}, ["body", "resources", "cpus_per_worker"]),
]


@pytest.mark.parametrize(
    ("overrides", "loc"), BAD_SPECS, ids=[".".join(map(str, b[1][1:])) or "body" for b in BAD_SPECS]
)
def test_bad_spec_is_422_naming_the_field_and_writes_nothing(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, counts: Any, overrides: dict[str, Any], loc: list[str]
) -> None:
    before = counts()
    response = client.post("/v1/jobs", json=tiny_spec(**overrides), headers=auth | {"Idempotency-Key": "k"})
    assert response.status_code == 422, response.text
    assert loc in locs(response), response.json()
    for item in response.json()["detail"]:
        assert set(item) == {"loc", "msg", "type"} and item["msg"]
    assert counts() == before


def test_a_root_that_grows_too_long_once_resolved_is_422_and_writes_nothing(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, counts: Any
) -> None:
    # 4,094 bytes pass as written; the data root's prefix makes the stored path longer than any file system takes
    before = counts()
    response = client.post("/v1/jobs", json=tiny_spec(data={"dataset": "digits", "root": "a/" * 2047}), headers=auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "data", "root"]] and "once resolved" in detail[0]["msg"]
    assert counts() == before


def test_cpus_per_worker_is_stored_in_rays_units(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    response = client.post(
        "/v1/jobs?dry_run=true", json=tiny_spec(resources={"cpus_per_worker": 0.33333}), headers=auth
    )
    assert response.status_code == 200, response.text
    assert response.json()["spec"]["resources"]["cpus_per_worker"] == 0.3333


def test_nested_estimator_param_is_named_without_the_union_tag(
    client: TestClient, auth: dict[str, str], tiny_spec: Any
) -> None:
    estimator = client.get("/v1/estimators", headers=auth).json()
    approx = next(e for e in estimator if e["name"] == "ede")
    bounded = next(p for p in approx["params"] if "exclusiveMinimum" in p or "minimum" in p)
    low = bounded.get("exclusiveMinimum", bounded.get("minimum"))
    response = client.post(
        "/v1/jobs", json=tiny_spec(estimator={"name": "ede", bounded["name"]: low - 1}), headers=auth
    )
    assert response.status_code == 422
    assert locs(response) == [["body", "estimator", bounded["name"]]]


def test_search_space_paths_are_confined_too(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> None:
    search = {"space": {"data.root": {"type": "choice", "values": ["/etc"]}}, "num_samples": 1}
    response = client.post("/v1/jobs", json=tiny_spec(kind="search", search=search), headers=auth)
    assert response.status_code == 422
    assert locs(response) == [["body", "search", "space", "data.root", "values", 0]]


def test_search_space_paths_inside_the_roots_are_resolved(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, data_root: Path
) -> None:
    (data_root / "a").mkdir()
    search = {"space": {"data.root": {"type": "choice", "values": ["a", str(data_root)]}}, "num_samples": 1}
    response = client.post("/v1/jobs?dry_run=true", json=tiny_spec(kind="search", search=search), headers=auth)
    assert response.status_code == 200, response.text
    values = response.json()["spec"]["search"]["space"]["data.root"]["values"]
    assert values == [str((data_root / "a").resolve()), str(data_root.resolve())]


def test_search_values_that_set_a_whole_section_are_stored_resolved(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, data_root: Path
) -> None:
    """``"init": {"checkpoint": "sub/ckpt.pt"}`` as a search value: confined and stored absolute, like a leaf."""
    (data_root / "sub").mkdir()
    (data_root / "sub" / "ckpt.pt").write_bytes(b"x")
    (data_root / "a").mkdir()
    space = {
        "init": {"type": "choice", "values": [{"checkpoint": "sub/ckpt.pt"}, {"pretrain_epochs": 0}]},
        "data": {"type": "choice", "values": [{"dataset": "digits", "root": "a"}]},
    }
    search = {"space": space, "num_samples": 1}
    response = client.post("/v1/jobs?dry_run=true", json=tiny_spec(kind="search", search=search), headers=auth)
    assert response.status_code == 200, response.text
    stored = response.json()["spec"]["search"]["space"]
    assert stored["init"]["values"] == [
        {"checkpoint": str((data_root / "sub" / "ckpt.pt").resolve())},
        {"pretrain_epochs": 0},
    ]
    assert stored["data"]["values"] == [{"dataset": "digits", "root": str((data_root / "a").resolve())}]
    outside = {"space": {"init": {"type": "choice", "values": [{"checkpoint": "/etc/passwd"}]}}, "num_samples": 1}
    response = client.post("/v1/jobs", json=tiny_spec(kind="search", search=outside), headers=auth)
    assert response.status_code == 422
    assert locs(response) == [["body", "search", "space", "init", "values", 0]]


def test_symlink_out_of_the_data_root_is_refused(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, data_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, data_root / "link")
    response = client.post("/v1/jobs", json=tiny_spec(data={"dataset": "digits", "root": "link"}), headers=auth)
    assert response.status_code == 422
    assert locs(response) == [["body", "data", "root"]]


def test_checkpoint_of_an_own_job_is_accepted_and_of_another_tenants_refused(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], submit: Any, settings: Any
) -> None:
    mine = submit()
    path = settings.resolved_artifacts_dir / "ray" / mine["id"] / "checkpoint_000001" / "checkpoint.pt"
    ok = client.post("/v1/jobs?dry_run=true", json={"init": {"checkpoint": str(path)}}, headers=auth)
    assert ok.status_code == 200, ok.text
    theirs = client.post("/v1/jobs?dry_run=true", json={"init": {"checkpoint": str(path)}}, headers=other_auth)
    assert theirs.status_code == 422
    assert locs(theirs) == [["body", "init", "checkpoint"]]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"epochs": 2', "application/json"),
        (b"not json at all", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
    ],
)
def test_malformed_json_is_422_and_writes_nothing(
    client: TestClient, auth: dict[str, str], counts: Any, body: bytes, content_type: str
) -> None:
    before = counts()
    response = client.post("/v1/jobs", content=body, headers=auth | {"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert locs(response)[0][0] == "body"
    assert counts() == before


def test_missing_wrong_and_expired_tokens_are_401(
    client: TestClient, database: Any, tiny_spec: Any, counts: Any
) -> None:
    from datetime import timedelta

    from service.db.models import Token, utcnow
    from service.security import create_token

    with database.write() as session:
        expired = create_token(session, "carol", "old", 1)
        revoked = create_token(session, "carol", "gone", 1)
        for token in session.query(Token).filter(Token.tenant == "carol"):
            if token.name == "old":
                token.expires_at = utcnow() - timedelta(seconds=1)
            else:
                token.revoked = True
    before = counts()
    cases = {
        "missing": {},
        "not bearer": {"Authorization": "Basic YWxpY2U6cHc="},
        "wrong": {"Authorization": "Bearer fsg_" + "x" * 43},
        "no prefix": {"Authorization": "Bearer abc"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    for case, headers in cases.items():
        for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/estimators")]:
            response = client.request(method, path, json=tiny_spec(), headers=headers)
            assert response.status_code == 401, (case, path)
            assert response.headers["www-authenticate"].startswith("Bearer"), case
            assert isinstance(response.json()["detail"], str)
    assert counts() == before


@pytest.mark.parametrize(("method", "suffix"), JOB_ROUTES)
def test_another_tenants_job_is_404_on_every_job_route(
    client: TestClient, other_auth: dict[str, str], auth: dict[str, str], submit: Any, method: str, suffix: str
) -> None:
    job = submit()
    for job_id, headers in [(job["id"], other_auth), ("0" * 32, auth)]:
        response = client.request(method, f"/v1/jobs/{job_id}{suffix}", headers=headers)
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": f"job {job_id} not found"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["state"] == "queued"  # bob cancelled nothing


# --- listing ------------------------------------------------------------------------------------------------


def test_pagination_is_stable_under_inserts(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    ids = [submit(name=f"job{i}")["id"] for i in range(5)]
    first = client.get("/v1/jobs?limit=2", headers=auth).json()
    assert [j["id"] for j in first["items"]] == ids[::-1][:2]
    submit(name="late")  # newer than everything: must not shift later pages
    second = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=auth).json()
    third = client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}", headers=auth).json()
    assert [j["id"] for j in second["items"]] == ids[::-1][2:4]
    assert [j["id"] for j in third["items"]] == ids[:1]
    assert third["next_cursor"] is None


def test_list_filters_by_status_and_name_and_tenant(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], submit: Any, worker: Any
) -> None:
    a = submit(name="alpha")
    b = submit(name="beta")
    submit(other_auth, name="alpha")
    worker.start(b["id"])
    assert [j["id"] for j in client.get("/v1/jobs?name=alpha", headers=auth).json()["items"]] == [a["id"]]
    running = client.get("/v1/jobs?status=running", headers=auth).json()["items"]
    assert [j["id"] for j in running] == [b["id"]]
    both = client.get("/v1/jobs?status=running&status=queued", headers=auth).json()["items"]
    assert {j["id"] for j in both} == {a["id"], b["id"]}
    assert running[0]["ray_dashboard_url"].endswith("/#/jobs")  # no attempt page recorded: the job list
    with client.app.state.db.write() as session:  # type: ignore[attr-defined]
        records.set_run_url(session, b["id"], "http://dash:8265/#/jobs/02000000/tasks/abc")
    page = client.get(f"/v1/jobs/{b['id']}", headers=auth).json()["ray_dashboard_url"]
    assert page == "http://dash:8265/#/jobs/02000000/tasks/abc"


@pytest.mark.parametrize(
    ("query", "status", "loc"),
    [
        ("limit=0", 422, ["query", "limit"]),
        ("limit=21", 422, ["query", "limit"]),  # settings.max_page_size is 20 here
        ("limit=abc", 422, ["query", "limit"]),
        ("status=sleeping", 422, ["query", "status", 0]),
        ("cursor=not-a-cursor", 400, None),
        ("cursor=" + "A" * 40, 400, None),
    ],
)
def test_bad_list_parameters(
    client: TestClient, auth: dict[str, str], submit: Any, query: str, status: int, loc: list[Any] | None
) -> None:
    submit()
    response = client.get(f"/v1/jobs?{query}", headers=auth)
    assert response.status_code == status, response.text
    if loc is None:
        assert "cursor" in response.json()["detail"]
    else:
        assert locs(response) == [loc]


def test_list_and_submit_document_every_status_they_answer(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "400" in paths["/v1/jobs"]["get"]["responses"]  # a malformed cursor (was undocumented)
    # 200 is a dry run or an idempotent replay, which returns the job (was documented as the dry run only)
    replay = paths["/v1/jobs"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {option["$ref"].rsplit("/", 1)[-1] for option in replay["anyOf"]} == {"DryRunRead", "JobRead"}


# --- cancel -------------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_cancels_it_at_once(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    job = submit()
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled" and response.json()["cancel_requested"] is True
    assert response.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)  # idempotent
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_cancel_a_running_job_asks_its_dispatcher(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.json()["state"] == "cancelling"
    worker.finish(job["id"], JobState.cancelled, message="Ray run stopped")
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["state"] == "cancelled"


@pytest.mark.parametrize("final", [JobState.succeeded, JobState.failed])
def test_cancel_a_finished_job_is_409_and_changes_nothing(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, counts: Any, final: JobState
) -> None:
    job = submit()
    worker.start(job["id"])
    worker.finish(job["id"], final)
    before = counts()
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 409
    assert final.value in response.json()["detail"]
    shown = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert shown["state"] == final.value and shown["cancel_requested"] is False
    assert counts() == before


# --- admission and quotas -----------------------------------------------------------------------------------


def _publish_cluster(database: Any, cpus: float, gpus: float, *, owner: str = "d1", age_s: float = 0.0) -> None:
    from datetime import timedelta

    from service.db import records
    from service.db.models import utcnow

    with database.write() as session:
        records.record_heartbeat(
            session,
            owner=owner,
            hostname="h",
            pid=1,
            started_at=utcnow(),
            running_attempts=0,
            claims=0,
            cluster=(cpus, gpus),
            now=utcnow() - timedelta(seconds=age_s),
        )


def test_a_job_no_live_cluster_can_hold_is_refused_naming_the_resource(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, database: Any, counts: Any
) -> None:
    _publish_cluster(database, 4, 0)
    _publish_cluster(database, 64, 8, owner="dead", age_s=3600)  # silent for an hour: not counted
    before = counts()
    response = client.post(
        "/v1/jobs", json=tiny_spec(resources={"num_workers": 256, "cpus_per_worker": 256}), headers=auth
    )
    assert response.status_code == 422, response.text
    assert locs(response) == [["body", "resources"]]
    message = response.json()["detail"][0]["msg"]
    assert "65536 CPUs" in message and "4 CPUs and 0 GPUs" in message
    gpu = client.post("/v1/jobs?dry_run=true", json=tiny_spec(resources={"use_gpu": True}), headers=auth)
    assert gpu.status_code == 422 and "1 GPUs" in gpu.json()["detail"][0]["msg"]
    assert counts() == before
    fits = client.post("/v1/jobs", json=tiny_spec(resources={"num_workers": 2, "cpus_per_worker": 2}), headers=auth)
    assert fits.status_code == 201


def test_without_a_live_cluster_the_size_is_not_judged_at_submit(
    client: TestClient, auth: dict[str, str], tiny_spec: Any
) -> None:
    response = client.post("/v1/jobs", json=tiny_spec(resources={"num_workers": 256}), headers=auth)
    assert response.status_code == 201  # the dispatchers refuse it once they know their clusters


def test_a_tenant_quota_refuses_what_it_can_never_allow(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], tiny_spec: Any, database: Any
) -> None:
    from service.db import tenants

    with database.write() as session:
        tenants.set_quota(session, "alice", max_priority=10, max_cpus=2)
    high = client.post("/v1/jobs", json=tiny_spec(priority=11), headers=auth)
    assert high.status_code == 422 and locs(high) == [["body", "priority"]]
    assert "ceiling 10" in high.json()["detail"][0]["msg"]
    big = client.post("/v1/jobs", json=tiny_spec(resources={"num_workers": 3}), headers=auth)
    assert big.status_code == 422 and locs(big) == [["body", "resources"]] and "max_cpus=2" in big.text
    assert client.post("/v1/jobs", json=tiny_spec(priority=11), headers=other_auth).status_code == 201  # bob: none


def test_a_full_queue_quota_is_429_with_retry_after(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], tiny_spec: Any, database: Any
) -> None:
    from service.db import tenants

    with database.write() as session:
        tenants.set_quota(session, "alice", max_queued=2)
    first = client.post("/v1/jobs", json=tiny_spec(), headers={**auth, "Idempotency-Key": "k1"})
    assert first.status_code == 201
    assert client.post("/v1/jobs", json=tiny_spec(), headers=auth).status_code == 201
    full = client.post("/v1/jobs", json=tiny_spec(), headers=auth)
    assert full.status_code == 429 and full.headers["retry-after"] == "30"
    assert "max_queued" in full.json()["detail"]
    replay = client.post("/v1/jobs", json=tiny_spec(), headers={**auth, "Idempotency-Key": "k1"})
    assert replay.status_code == 200  # a replay creates nothing: never refused
    assert client.post("/v1/jobs", json=tiny_spec(), headers=other_auth).status_code == 201
    client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth)
    assert client.post("/v1/jobs", json=tiny_spec(), headers=auth).status_code == 201


def test_a_study_or_search_needs_the_resources_of_all_its_concurrent_trials(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, database: Any
) -> None:
    variants = [{"name": "a", "estimator": {"name": "ste"}}, {"name": "b", "estimator": {"name": "ede"}}]
    study = tiny_spec(kind="study", study={"variants": variants, "seeds": 2, "max_concurrent_trials": 3})
    dry = client.post("/v1/jobs?dry_run=true", json=study, headers=auth)
    assert dry.status_code == 200 and dry.json()["cpus"] == 3  # three trials of one CPU at once
    grid = {"estimator.name": {"type": "grid", "values": ["ste", "ede"]}}
    search = tiny_spec(kind="search", search={"space": grid, "num_samples": 1, "max_concurrent_trials": 4})
    assert client.post("/v1/jobs?dry_run=true", json=search, headers=auth).json()["cpus"] == 2  # 2 trials in all
    _publish_cluster(database, 2, 0)
    refused = client.post("/v1/jobs", json=study, headers=auth)
    assert refused.status_code == 422 and "needs 3 CPUs" in refused.text and "per concurrent trial" in refused.text
    fits = client.post("/v1/jobs", json=study | {"study": {**study["study"], "max_concurrent_trials": 2}}, headers=auth)
    assert fits.status_code == 201 and fits.json()["spec"]["study"]["max_concurrent_trials"] == 2

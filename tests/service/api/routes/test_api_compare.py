"""GET /v1/compare: figures equal ``summarize_history`` of the stored rows, curves equal the rows, in the
query's order; searches show their best trial; tenants are isolated; the job count is validated."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fsg_core.train import summarize_history
from service.db import records

FIGURES = (
    "best_val_acc",
    "best_val_epoch",
    "test_acc_at_best_val",
    "last_k_test_acc",
    "last_k",
    "final_train_loss",
    "mean_step_time_s",
)
CURVE_KEYS = ("train_loss", "train_acc", "val_acc", "test_acc")


def history(pretrain: int, binary: int, *, seed: float) -> list[dict[str, Any]]:
    """Rows as fit() reports them: pre-training epochs, then binarized ones (val_acc peaks mid-run, so the
    best epoch, the last 10 and the final epoch are all different rows)."""
    rows: list[dict[str, Any]] = []
    for e in range(1, pretrain + 1):
        rows.append({"phase": "pretrain", "epoch": e, "train_loss": 2.5 - 0.1 * e, "train_acc": 0.2 + 0.01 * e})
        rows[-1].update(val_acc=0.3 + seed, test_acc=0.29 + seed, step_time_s=0.05, lr=0.01)
    for e in range(1, binary + 1):
        peak = 1.0 - abs(e - binary * 0.6) / binary
        rows.append(
            {
                "phase": "binary",
                "epoch": e,
                "train_loss": 1.9 / e + seed,
                "train_acc": 0.3 + 0.04 * e,
                "val_acc": round(0.4 + 0.3 * peak + seed, 6),
                "test_acc": round(0.38 + 0.25 * peak + 0.001 * e, 6),
                "step_time_s": 0.01 + 0.001 * e + seed,
                "lr": 0.01 / e,
            }
        )
    return rows


def curves_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "phase": [r["phase"] for r in rows],
        "epoch": [r["epoch"] for r in rows],
        **{key: [r.get(key) for r in rows] for key in CURVE_KEYS},
    }


def compare(client: TestClient, auth: dict[str, str], *ids: str) -> Any:
    return client.get("/v1/compare", params={"job": list(ids)}, headers=auth)


def test_figures_are_summarize_history_of_the_stored_rows_and_curves_the_rows_in_order(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    a = submit(name="ste-run", estimator={"name": "ste"})
    b = submit(name="fsg-run", estimator={"name": "clipped_ste"}, optimizer={"name": "sgd", "lr": 0.1})
    rows_a, rows_b = history(2, 14, seed=0.0), history(0, 5, seed=0.02)
    worker.start(a["id"])
    worker.report(a["id"], rows_a[::-1])  # reported out of order: the curve is still pre-training first
    worker.report(b["id"], rows_b)

    response = compare(client, auth, b["id"], a["id"])
    assert response.status_code == 200, response.text
    jobs = response.json()["jobs"]
    assert [j["id"] for j in jobs] == [b["id"], a["id"]]  # the query's order
    got_b, got_a = jobs
    for got, rows in ((got_a, rows_a), (got_b, rows_b)):
        expected = summarize_history(rows)
        assert {k: got[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}
        assert got["curves"] == curves_of(rows)
        assert got["epochs_done"] == len(rows)
        assert got["packed_bytes"] is None
    # The last 4 of 14 binarized epochs (k <= a third of them), not all of them, nor the pre-training ones.
    assert got_a["last_k"] == 4 and got_a["last_k_test_acc"] == sum(r["test_acc"] for r in rows_a[-4:]) / 4
    assert got_a["best_val_epoch"] == 8 and got_a["curves"]["phase"][:3] == ["pretrain", "pretrain", "binary"]
    assert (got_a["name"], got_a["state"], got_a["estimator"], got_a["arch"], got_a["optimizer"]) == (
        "ste-run",
        "running",
        "ste",
        "resnet20",
        "adam",
    )
    assert (got_b["state"], got_b["estimator"], got_b["optimizer"]) == ("queued", "clipped_ste", "sgd")


def test_a_job_without_metrics_has_empty_curves_and_null_figures(
    client: TestClient, auth: dict[str, str], submit: Any
) -> None:
    job = submit()
    (got,) = compare(client, auth, job["id"]).json()["jobs"]
    assert got["epochs_done"] == 0
    assert all(got[k] is None for k in FIGURES)
    assert got["curves"] == {k: [] for k in ("phase", "epoch", *CURVE_KEYS)}


def test_non_finite_values_are_null_in_figures_and_curves(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    rows = history(1, 3, seed=0.0)
    rows[-1]["train_loss"] = math.nan  # a diverged last epoch
    rows[2]["val_acc"] = math.inf
    worker.report(job["id"], rows)
    (got,) = compare(client, auth, job["id"]).json()["jobs"]
    assert got["final_train_loss"] is None
    assert got["curves"]["train_loss"][-1] is None and got["curves"]["val_acc"][2] is None
    # NaN and inf are skipped as summarize_history skips them in a live run.
    expected = summarize_history(rows)
    assert got["best_val_acc"] == expected["best_val_acc"] and got["best_val_epoch"] == expected["best_val_epoch"]
    assert got["mean_step_time_s"] == expected["mean_step_time_s"]


def test_packed_bytes_is_the_latest_packed_checkpoint(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    with worker.database.write() as session:
        for epoch, packed in ((1, 1000), (2, 1200), (3, None)):  # the last one wrote no packed file
            records.record_checkpoint(
                session,
                job["id"],
                epoch=epoch,
                phase="binary",
                full_path=None,
                packed_path=None,
                full_bytes=None,
                packed_bytes=packed,
                metrics=None,
            )
    (got,) = compare(client, auth, job["id"]).json()["jobs"]
    assert got["packed_bytes"] == 1200


def test_a_search_shows_its_best_trial_and_an_empty_curve_before_it_has_one(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    search = {"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "num_samples": 2}
    job = submit(kind="search", search=search)
    worker.start(job["id"])
    rows_t1, rows_t2 = history(1, 3, seed=0.0), history(1, 4, seed=0.05)
    worker.report(job["id"], rows_t1, trial_key="t1")
    worker.report(job["id"], rows_t2, trial_key="t2")
    worker.trial(job["id"], "t1", {"optimizer.lr": 1e-3}, "succeeded", 0.6)
    worker.trial(job["id"], "t2", {"optimizer.lr": 5e-3}, "succeeded", 0.7)
    with worker.database.write() as session:
        for key, size in (("t1", 900), ("t2", 700)):
            records.record_checkpoint(
                session,
                job["id"],
                epoch=1,
                phase="binary",
                full_path=None,
                packed_path=None,
                full_bytes=None,
                packed_bytes=size,
                metrics=None,
                trial_key=key,
            )

    (before,) = compare(client, auth, job["id"]).json()["jobs"]
    assert before["curves"]["phase"] == [] and before["best_val_acc"] is None and before["packed_bytes"] is None

    with worker.database.write() as session:
        records.mark_best_trial(session, job["id"], "t2")
    (after,) = compare(client, auth, job["id"]).json()["jobs"]
    assert after["curves"] == curves_of(rows_t2)
    assert after["best_val_acc"] == summarize_history(rows_t2)["best_val_acc"]
    assert after["packed_bytes"] == 700


def test_another_tenants_job_and_an_unknown_id_are_404_naming_the_id(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], submit: Any
) -> None:
    mine = submit()["id"]
    theirs = submit(headers=other_auth)["id"]
    for ids, missing in (([mine, theirs], theirs), ([mine, "0" * 32], "0" * 32), (["bad id\x00"], "bad id\x00")):
        response = compare(client, auth, *ids)
        assert response.status_code == 404, response.text
        assert missing in response.json()["detail"]
    assert compare(client, other_auth, theirs).status_code == 200


@pytest.mark.parametrize("count", [0, 13])
def test_the_job_count_is_validated_naming_job(
    client: TestClient, auth: dict[str, str], submit: Any, count: int
) -> None:
    job = submit()["id"]
    response = compare(client, auth, *([job] * count))
    assert response.status_code == 422, response.text
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "job"]]


def test_one_and_twelve_jobs_are_accepted(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    ids = [submit(name=f"j{i}")["id"] for i in range(12)]
    assert [j["name"] for j in compare(client, auth, *ids).json()["jobs"]] == [f"j{i}" for i in range(12)]
    assert len(compare(client, auth, ids[0]).json()["jobs"]) == 1


def test_the_route_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/compare"]["get"]
    assert {"200", "401", "404", "422"} <= set(operation["responses"])
    (param,) = operation["parameters"]
    assert param["name"] == "job" and param["schema"]["maxItems"] == 12

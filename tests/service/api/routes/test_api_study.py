"""GET /v1/jobs/{id}/study: the table from the trials recorded so far, the tenant's own jobs only."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from scipy import stats as sps

VARIANTS = [{"name": "ste", "estimator": {"name": "ste"}}, {"name": "fda", "estimator": {"name": "fda"}}]
BEST = {"ste": [0.90, 0.92, 0.91], "fda": [0.93, 0.925, 0.94]}


def _rows(best: float) -> list[dict[str, Any]]:
    return [
        {
            "phase": "binary",
            "epoch": e,
            "val_acc": best - 0.01 * (3 - e),
            "test_acc": best - 0.02,
            "train_loss": 1 - best,
        }
        for e in (1, 2, 3)
    ]


def test_the_study_table_is_computed_from_the_finished_trials(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit(kind="study", study={"variants": VARIANTS, "seeds": 3})
    worker.start(job["id"])
    for variant, values in BEST.items():
        for seed, best in enumerate(values):
            key = f"{variant}/seed{seed}"
            worker.report(job["id"], _rows(best), trial_key=key)
            state = "running" if (variant, seed) == ("fda", 2) else "succeeded"
            worker.trial(job["id"], key, {"variant": variant, "seed": seed}, state, best)
    response = client.get(f"/v1/jobs/{job['id']}/study", headers=auth)
    assert response.status_code == 200, response.text
    table = response.json()
    assert table["baseline"] == "ste" and table["seeds"] == 3 and table["confidence"] == 0.95
    ste, fda = table["variants"]
    assert (ste["trials_done"], fda["trials_done"]) == (3, 2)  # the running trial does not count yet
    assert ste["figures"]["best_val_acc"]["mean"] == pytest.approx(sum(BEST["ste"]) / 3)
    vs = fda["vs_baseline"]["best_val_acc"]
    assert vs["n"] == 2 and vs["t_p"] == pytest.approx(sps.ttest_rel(BEST["fda"][:2], BEST["ste"][:2]).pvalue)
    assert (vs["wins"], vs["losses"]) == (2, 0)
    assert {t["key"] for t in table["trials"]} == {f"{v}/seed{s}" for v in BEST for s in range(3)}
    assert client.get(f"/v1/jobs/{job['id']}/study", headers=other_auth).status_code == 404


def test_a_job_that_is_not_a_study_has_no_table(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    job = submit()
    response = client.get(f"/v1/jobs/{job['id']}/study", headers=auth)
    assert response.status_code == 404 and "not a study" in response.json()["detail"]


def test_a_study_with_a_bad_variant_is_refused_naming_it(
    client: TestClient, auth: dict[str, str], tiny_spec: Any
) -> None:
    variants = [VARIANTS[0], {"name": "bad", "overrides": {"data.root": "x"}}]
    response = client.post("/v1/jobs", json=tiny_spec(kind="study", study={"variants": variants}), headers=auth)
    assert response.status_code == 422
    assert "vary training only" in response.text and "study" in str(response.json()["detail"][0]["loc"])

"""A small study end to end on a real Ray: 2 variants x 2 seeds, each seed pre-trained once (full
precision, its own split) and shared by its variants; the table comes back with intervals and tests.
Its trials train in their Tune trials (``executor: ray_task``); Ray Train trials are the search test's
(tests/e2e/test_service_e2e.py) and the chaos soak's studies'."""

from __future__ import annotations

import pytest

from bench.dispatchers import small_job
from tests.e2e.conftest import Service

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_a_small_study_runs_end_to_end(service: Service) -> None:
    client = service.client()
    spec = small_job(0) | {
        "name": "study-e2e",
        "kind": "study",
        "epochs": 2,
        "max_steps_per_epoch": 3,
        "init": {"pretrain_epochs": 1},
        "resources": {"num_workers": 1, "executor": "ray_task"},
        "study": {
            "variants": [
                {"name": "ste", "estimator": {"name": "ste"}},
                {"name": "approx", "estimator": {"name": "approx_sign"}},
            ],
            "seeds": 2,
            "max_concurrent_trials": 2,
        },
    }
    job = client.submit(spec)
    final = client.wait(job["id"], poll_s=1, timeout_s=300)
    assert final["state"] == "succeeded", final.get("error")
    study = client.study(job["id"])
    states = {t["key"]: t["state"] for t in study["trials"]}
    keys = [f"{name}/seed{seed}" for name in ("pretrain", "ste", "approx") for seed in (0, 1)]
    assert states == dict.fromkeys(keys, "succeeded")
    ste, approx = study["variants"]
    assert (ste["name"], ste["trials_done"], approx["trials_done"]) == ("ste", 2, 2)
    best = approx["figures"]["best_val_acc"]
    assert best["n"] == 2 and best["low"] <= best["mean"] <= best["high"]
    assert approx["vs_baseline"]["best_val_acc"]["n"] == 2
    # Each variant trial starts from its seed's pre-training: binarized epochs only, two of them.
    metrics = client.metrics(job["id"])
    by_trial: dict[str, list[dict]] = {}
    for row in metrics:
        by_trial.setdefault(row["trial"], []).append(row)
    assert sorted(r["epoch"] for r in by_trial["approx/seed1"]) == [1, 2]
    assert {r["phase"] for r in by_trial["approx/seed1"]} == {"binary"}
    assert len(by_trial["pretrain/seed0"]) == 1  # one full-precision epoch
    assert final["summary"]["trials"] == 4 and final["summary"]["baseline"] == "ste"

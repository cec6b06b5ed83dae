"""GET /v1/jobs/{id}/metrics as JSON rows and as CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi.testclient import TestClient

ROWS = [
    {"phase": "pretrain", "epoch": 1, "train_loss": 2.0, "lr": 0.01},
    {"phase": "binary", "epoch": 1, "train_loss": 1.5, "val_acc": 0.4, "lr": 0.01},
    {"phase": "binary", "epoch": 2, "train_loss": 1.2, "val_acc": 0.55, "flip_rate": 0.03, "lr": 0.001},
]


def test_metrics_json_rows_are_flat(client: TestClient, auth: dict[str, str], submit: Any, worker: Any) -> None:
    job = submit()
    assert client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json() == []
    worker.start(job["id"])
    worker.report(job["id"], ROWS)
    rows = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()
    assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    assert rows[2] == {"phase": "binary", "epoch": 2, "trial": "", "attempt": 1} | {
        k: v for k, v in ROWS[2].items() if k not in ("phase", "epoch")
    }


def test_metrics_csv_has_one_line_per_epoch_and_the_union_of_keys(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    worker.report(job["id"], ROWS)
    response = client.get(f"/v1/jobs/{job['id']}/metrics?format=csv", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert len(table) == 3
    header = response.text.splitlines()[0].split(",")
    assert header[:4] == ["phase", "epoch", "trial", "attempt"]
    assert set(header[4:]) == {"train_loss", "lr", "val_acc", "flip_rate"}
    assert table[0]["val_acc"] == "" and float(table[2]["flip_rate"]) == 0.03
    assert [int(r["epoch"]) for r in table] == [1, 1, 2]


def test_metrics_of_a_search_filter_by_trial(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    worker.report(job["id"], ROWS[1:2], trial_key="t1")
    worker.report(job["id"], ROWS[1:3], trial_key="t2")
    everything = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()
    assert sorted(r["trial"] for r in everything) == ["t1", "t2", "t2"]
    only = client.get(f"/v1/jobs/{job['id']}/metrics?trial=t2", headers=auth).json()
    assert [r["trial"] for r in only] == ["t2", "t2"]


def test_unknown_format_is_422(client: TestClient, auth: dict[str, str], submit: Any) -> None:
    job = submit()
    response = client.get(f"/v1/jobs/{job['id']}/metrics?format=xml", headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "format"]

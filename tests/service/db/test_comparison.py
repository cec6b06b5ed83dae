"""service/db/comparison.py: which rows each compared job shows, and its figures from stored values."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import event

from fsg_core.train import summarize_history
from service.db import records
from service.db.comparison import compare_jobs, summarize_rows
from service.db.engine import Database
from tests.service.db.conftest import TENANT, MakeJob

SEARCH = {"kind": "search", "search": {"space": {"optimizer.lr": {"type": "choice", "values": [0.1, 0.01]}}}}


def _report(db: Database, job_id: str, rows: list[dict[str, Any]], trial_key: str = "") -> None:
    with db.write() as session:
        records.record_metrics(session, job_id, rows, attempt=1, trial_key=trial_key)


def _row(phase: str, epoch: int, **values: Any) -> dict[str, Any]:
    return {"phase": phase, "epoch": epoch, **values}


@pytest.mark.parametrize(
    "stored, live",
    [
        # What records.json_safe stored (NaN/inf -> None) and what the run itself had.
        (
            [_row("binary", 1, train_loss=1.0, val_acc=None, test_acc=0.5), _row("binary", 2, train_loss=None)],
            [_row("binary", 1, train_loss=1.0, val_acc=math.nan, test_acc=0.5), _row("binary", 2, train_loss=math.inf)],
        ),
        (
            [_row("pretrain", 1, train_loss=2.0, val_acc=0.9), _row("binary", 1, val_acc=0.4, step_time_s=0.2)],
            [
                _row("pretrain", 1, train_loss=2.0, val_acc=0.9),
                _row("binary", 1, train_loss=math.nan, val_acc=0.4, step_time_s=0.2),
            ],
        ),
        ([_row("pretrain", 1, train_loss=2.0)], [_row("pretrain", 1, train_loss=2.0)]),
    ],
)
def test_summarize_rows_reads_stored_nulls_as_the_nan_of_the_live_run(
    stored: list[dict[str, Any]], live: list[dict[str, Any]]
) -> None:
    expected = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summarize_history(live).items()
    }
    assert summarize_rows(stored) == expected


def test_only_the_tenants_jobs_are_returned_each_with_its_own_rows(db: Database, make_job: MakeJob) -> None:
    mine, other, theirs = make_job(), make_job(), make_job(tenant="someone-else")
    _report(db, mine.id, [_row("binary", 2, train_loss=0.5), _row("pretrain", 1, train_loss=2.0), _row("binary", 1)])
    _report(db, other.id, [_row("binary", 1, train_loss=0.7, val_acc=0.3)])
    _report(db, theirs.id, [_row("binary", 1, train_loss=0.1)])
    with db.read() as session:
        found = compare_jobs(session, TENANT, [theirs.id, other.id, mine.id, mine.id, "missing"])
    assert set(found) == {mine.id, other.id}
    assert [(r["phase"], r["epoch"]) for r in found[mine.id].rows] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    assert found[mine.id].trial_key == "" and found[mine.id].figures["final_train_loss"] == 0.5
    assert found[other.id].figures["best_val_acc"] == 0.3


def test_a_search_shows_its_best_trial_or_nothing(db: Database, make_job: MakeJob) -> None:
    search = make_job(**SEARCH)
    _report(db, search.id, [_row("binary", 1, val_acc=0.2)], trial_key="a")
    _report(db, search.id, [_row("binary", 1, val_acc=0.6), _row("binary", 2, val_acc=0.5)], trial_key="b")
    with db.read() as session:
        before = compare_jobs(session, TENANT, [search.id])[search.id]
    assert before.trial_key is None and before.rows == [] and before.figures == {}
    with db.write() as session:
        for key in ("a", "b"):
            records.upsert_trial(session, search.id, trial_key=key, config={}, state="succeeded")
        records.mark_best_trial(session, search.id, "b")
    with db.read() as session:
        after = compare_jobs(session, TENANT, [search.id])[search.id]
    assert after.trial_key == "b" and [r["val_acc"] for r in after.rows] == [0.6, 0.5]


def test_the_number_of_queries_does_not_grow_with_the_jobs(db: Database, make_job: MakeJob) -> None:
    jobs = [make_job() for _ in range(3)] + [make_job(**SEARCH) for _ in range(2)]
    for job in jobs:
        _report(db, job.id, [_row("binary", 1, train_loss=1.0)])
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with db.read() as session:
        compare_jobs(session, TENANT, [job.id for job in jobs])
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 4, selects  # jobs, best trials, metrics, checkpoints

"""What workers write back, on real SQLite and PostgreSQL: metric upserts, JSON-safe values, trials and
the best flag, checkpoints, summaries, and the events each write appends."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from service.db.engine import Database
from service.db.models import DispatcherHeartbeat, Job, Metric
from service.db.reads import events_after, get_job, list_metrics, list_trials
from service.db.records import (
    json_safe,
    mark_best_trial,
    prune_heartbeats,
    record_checkpoint,
    record_heartbeat,
    record_metrics,
    record_stopped,
    set_summary,
    upsert_trial,
)
from tests.service.db.conftest import EPOCH, TENANT, MakeJob


def _events(db: Database, job_id: str, kind: str) -> list[dict]:
    with db.read() as session:
        return [e.data or {} for e in events_after(session, job_id) if e.kind == kind]


def test_a_re_reported_epoch_replaces_the_earlier_one(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session:
        record_metrics(
            session,
            job.id,
            [{"phase": "binary", "epoch": 0, "val_acc": 0.5}, {"phase": "binary", "epoch": 1, "val_acc": 0.6}],
            attempt=1,
        )
    # The second attempt resumes from epoch 0's checkpoint and reports epoch 1 again.
    with db.write() as session:
        record_metrics(session, job.id, [{"phase": "binary", "epoch": 1, "val_acc": 0.7, "lr": 0.01}], attempt=2)
    with db.read() as session:
        rows = [(m.epoch, m.attempt, m.values) for m in list_metrics(session, job.id)]
        total = session.scalar(select(func.count()).select_from(Metric))
    assert rows == [(0, 1, {"val_acc": 0.5}), (1, 2, {"val_acc": 0.7, "lr": 0.01})]
    assert total == 2
    assert [(d["epoch"], d["attempt"], d["values"]) for d in _events(db, job.id, "metric")] == [
        (0, 1, {"val_acc": 0.5}),
        (1, 1, {"val_acc": 0.6}),
        (1, 2, {"val_acc": 0.7, "lr": 0.01}),
    ]


def test_one_epoch_is_kept_apart_per_phase_and_trial(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session:
        for trial_key in ("", "t1"):
            record_metrics(
                session,
                job.id,
                [{"phase": "pretrain", "epoch": 0, "x": 1}, {"phase": "binary", "epoch": 0, "x": 2}],
                attempt=1,
                trial_key=trial_key,
            )
    with db.read() as session:
        assert [(m.trial_key, m.phase, m.values["x"]) for m in list_metrics(session, job.id)] == [
            ("", "pretrain", 1),
            ("", "binary", 2),
            ("t1", "pretrain", 1),
            ("t1", "binary", 2),
        ]


def test_metric_values_are_stored_json_safe(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    row = {
        "phase": "binary",
        "epoch": 3,
        "train_loss": float("nan"),
        "val_loss": float("inf"),
        "grad_norm": -math.inf,
        "val_acc": np.float32(0.25),
        "step": np.int64(7),
        "lr": torch.tensor(0.5),
        "flags": [True, np.bool_(False)],
        "note": "diverged",
    }
    with db.write() as session:
        record_metrics(session, job.id, [row], attempt=1)
    expected = {
        "train_loss": None,
        "val_loss": None,
        "grad_norm": None,
        "val_acc": 0.25,
        "step": 7,
        "lr": 0.5,
        "flags": [True, False],
        "note": "diverged",
    }
    with db.read() as session:
        (metric,) = list_metrics(session, job.id)
    assert metric.values == expected
    assert _events(db, job.id, "metric")[0]["values"] == expected


def test_json_safe_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match=r"rows\[0\]\.blob: bytes is not JSON"):
        json_safe({"blob": b"\x00"}, field="rows[0]")
    with pytest.raises(TypeError, match=r"value\.t: Tensor is not JSON"):
        json_safe({"t": torch.zeros(3)})
    assert json_safe({"nested": {"a": (1, float("nan"))}}) == {"nested": {"a": [1, None]}}


def test_rows_need_phase_and_epoch(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session, pytest.raises(ValueError, match=r"rows\[1\] needs 'phase' and 'epoch'"):
        record_metrics(session, job.id, [{"phase": "binary", "epoch": 0}, {"epoch": 1, "val_acc": 0.1}], attempt=1)


def test_writes_for_a_missing_job_say_so(db: Database) -> None:
    with db.write() as session, pytest.raises(LookupError, match="job nope does not exist"):
        record_metrics(session, "nope", [{"phase": "binary", "epoch": 0}], attempt=1)


def test_upsert_trial_updates_in_place(db: Database, make_job: MakeJob) -> None:
    job = make_job(kind="search", search={"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}})
    with db.write() as session:
        created = upsert_trial(session, job.id, trial_key="t1", config={"optimizer.lr": 0.01}, state="running")
    assert (created.state, created.metric, created.epochs, created.is_best) == ("running", None, 0, False)
    with db.write() as session:
        upsert_trial(
            session, job.id, trial_key="t1", config={"optimizer.lr": 0.01}, state="running", metric=0.6, epochs=3
        )
    # A later report without a metric, from a resumed trial that restarted at an earlier epoch:
    with db.write() as session:
        updated = upsert_trial(
            session, job.id, trial_key="t1", config={"optimizer.lr": 0.01}, state="failed", epochs=2, error="OOM"
        )
    assert updated.id == created.id
    assert (updated.state, updated.metric, updated.epochs, updated.error) == ("failed", 0.6, 3, "OOM")
    with db.read() as session:
        (stored,) = list_trials(session, job.id)
    assert (stored.state, stored.metric, stored.epochs, stored.error) == ("failed", 0.6, 3, "OOM")
    assert [(d["trial_key"], d["state"]) for d in _events(db, job.id, "trial")] == [
        ("t1", "running"),
        ("t1", "running"),
        ("t1", "failed"),
    ]


def test_upsert_trial_stores_a_nan_metric_as_null(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session:
        trial = upsert_trial(
            session, job.id, trial_key="t1", config={"x": np.float64(0.5)}, state="running", metric=math.nan
        )
    assert trial.metric is None and trial.config == {"x": 0.5}


def test_best_flag_moves_to_exactly_one_trial(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    other = make_job()
    with db.write() as session:
        for key in ("t1", "t2", "t3"):
            upsert_trial(session, job.id, trial_key=key, config={}, state="succeeded")
        upsert_trial(session, other.id, trial_key="t1", config={}, state="succeeded")
        mark_best_trial(session, other.id, "t1")
    for best in ("t2", "t3"):
        with db.write() as session:
            mark_best_trial(session, job.id, best)
        with db.read() as session:
            assert [t.trial_key for t in list_trials(session, job.id) if t.is_best] == [best]
    with db.read() as session:
        assert [t.is_best for t in list_trials(session, other.id)] == [True]
    with db.write() as session, pytest.raises(LookupError, match="has no trial 'nope'"):
        mark_best_trial(session, job.id, "nope")
    with db.read() as session:
        assert [t.trial_key for t in list_trials(session, job.id) if t.is_best] == ["t3"]


def test_checkpoint_row_and_event(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session:
        checkpoint = record_checkpoint(
            session,
            job.id,
            epoch=4,
            phase="binary",
            full_path="/runs/x/4",
            packed_path="/runs/x/4.packed",
            full_bytes=12_345,
            packed_bytes=678,
            metrics={"val_acc": 0.8, "val_loss": float("nan")},
            trial_key="t1",
        )
    assert checkpoint.id is not None and checkpoint.metrics == {"val_acc": 0.8, "val_loss": None}
    assert _events(db, job.id, "checkpoint") == [
        {"checkpoint_id": checkpoint.id, "trial_key": "t1", "phase": "binary", "epoch": 4}
    ]


def test_summary_is_stored_json_safe_and_replaced_whole(db: Database, make_job: MakeJob) -> None:
    queued = make_job()

    def store(summary: dict) -> dict | None:
        with db.write() as session:
            job = session.get(Job, queued.id)
            assert job is not None
            set_summary(session, job, summary)
        with db.read() as session:
            stored = get_job(session, queued.id, TENANT)
        assert stored is not None
        return stored.summary

    assert store({"best_val_acc": np.float32(0.75), "last10_val_acc": float("nan")}) == {
        "best_val_acc": 0.75,
        "last10_val_acc": None,
    }
    assert store({"best_val_acc": 0.8}) == {"best_val_acc": 0.8}


# --- dispatcher heartbeats --------------------------------------------------------------------------


def _beat(db: Database, owner: str, at_s: float, *, running: int = 0, claims: int = 0) -> None:
    with db.write() as session:
        record_heartbeat(
            session,
            owner=owner,
            hostname="node-1",
            pid=4242,
            started_at=EPOCH,
            running_attempts=running,
            claims=claims,
            now=EPOCH + timedelta(seconds=at_s),
        )


def _heartbeat(db: Database, owner: str) -> DispatcherHeartbeat:
    with db.read() as session:
        row = session.get(DispatcherHeartbeat, owner)
        assert row is not None
        return row


def test_record_heartbeat_inserts_then_updates_one_row(db: Database) -> None:
    _beat(db, "host:1:abc", 0, running=0, claims=0)
    _beat(db, "host:1:abc", 5, running=2, claims=3)
    row = _heartbeat(db, "host:1:abc")
    assert (row.hostname, row.pid, row.started_at) == ("node-1", 4242, EPOCH)
    assert row.heartbeat_at == EPOCH + timedelta(seconds=5)
    assert (row.running_attempts, row.claims, row.stopped_at) == (2, 3, None)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(DispatcherHeartbeat)) == 1


def test_record_stopped_marks_only_that_dispatcher(db: Database) -> None:
    _beat(db, "a", 0, running=1)
    _beat(db, "b", 0, running=1)
    with db.write() as session:
        assert record_stopped(session, "a", now=EPOCH + timedelta(seconds=7)) is True
        assert record_stopped(session, "never-beat") is False
    a, b = _heartbeat(db, "a"), _heartbeat(db, "b")
    assert (a.stopped_at, a.running_attempts) == (EPOCH + timedelta(seconds=7), 0)
    assert (b.stopped_at, b.running_attempts) == (None, 1)
    _beat(db, "a", 10)  # the owner string beats again: running again
    assert _heartbeat(db, "a").stopped_at is None


def test_prune_heartbeats_deletes_only_the_long_silent(db: Database) -> None:
    _beat(db, "old", 0)
    _beat(db, "new", 100)
    with db.write() as session:
        assert prune_heartbeats(session, older_than=EPOCH + timedelta(seconds=50)) == 1
    with db.read() as session:
        assert session.scalars(select(DispatcherHeartbeat.owner)).all() == ["new"]

"""The attempt's room: its paths are the artifact store's, and its store opens one database per process
and URL and writes what the service reads back. Real SQLite, no Ray."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsg_core.checkpoint_dir import write_checkpoint_dir
from service.db import reads
from service.db.engine import Database
from service.db.migrate import upgrade
from service.db.queue import enqueue
from service.schemas.jobs import JobSpec
from service.storage import Storage
from workers.attempt import AttemptContext, AttemptStore, close_databases, database_for

SPEC: dict[str, Any] = {"name": "room", "epochs": 2, "init": {"pretrain_epochs": 0}}


@pytest.fixture
def job(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A queued job in a fresh SQLite database: (database URL, job id)."""
    url = f"sqlite:///{tmp_path / 'fsg.db'}"
    upgrade(url)
    db = Database.from_url(url)
    with db.write() as session:
        queued, _ = enqueue(session, tenant="t", spec=JobSpec.model_validate(SPEC))
    db.dispose()
    yield url, queued.id
    close_databases()


def _ctx(url: str, job_id: str, artifacts: Path, attempt: int = 1) -> AttemptContext:
    return AttemptContext(
        job_id=job_id, attempt=attempt, spec=SPEC, database_url=url, artifacts_dir=str(artifacts), db_outage_s=5
    )


def test_paths_are_the_artifact_stores(tmp_path: Path) -> None:
    ctx = _ctx("sqlite://", "job-1", tmp_path / "artifacts", attempt=2)
    storage = Storage(tmp_path / "artifacts")
    assert ctx.job_dir == storage.job_dir("job-1")
    assert ctx.log_path == storage.log_path("job-1") == ctx.log.path
    assert ctx.ray_storage == str(storage.ray_storage_path())
    assert ctx.checkpoint_dir("binary", 7) == storage.checkpoints_dir("job-1") / "attempt-2-binary-00007"
    trial = ctx.checkpoint_dir("binary", 7, "approx/seed1")  # a study trial trained in its Tune trial
    assert trial == storage.checkpoints_dir("job-1") / "attempt-2-approx--seed1-binary-00007"


def test_a_job_id_that_names_another_directory_is_refused(tmp_path: Path) -> None:
    ctx = _ctx("sqlite://", "../elsewhere", tmp_path)
    with pytest.raises(ValueError, match="invalid job id"):
        ctx.checkpoint_dir("binary", 1)


def test_context_and_store_travel_as_plain_values(job: tuple[str, str], tmp_path: Path) -> None:
    url, job_id = job
    ctx = _ctx(url, job_id, tmp_path)
    store = AttemptStore.of(ctx)
    store.record_event("note", "opened")  # the process's database is open now; the store still holds none
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert pickle.loads(pickle.dumps(store)) == store
    assert AttemptContext(**ctx.as_dict()) == ctx
    assert (store.job_id, store.attempt, store.outage_s) == (job_id, 1, 5)


def test_one_database_per_process_and_url(job: tuple[str, str], tmp_path: Path) -> None:
    url, job_id = job
    first, second = AttemptStore.of(_ctx(url, job_id, tmp_path)), AttemptStore.of(_ctx(url, job_id, tmp_path, 2))
    opened = first.db
    assert opened is second.db is database_for(url)
    assert pickle.loads(pickle.dumps(first)).db is opened  # a store that travelled finds it too
    assert database_for(f"sqlite:///{tmp_path / 'other.db'}") is not opened
    close_databases()
    assert first.db is not opened  # opened afresh after closing


def test_an_epoch_and_its_checkpoint_read_back(job: tuple[str, str], tmp_path: Path) -> None:
    url, job_id = job
    store = AttemptStore.of(_ctx(url, job_id, tmp_path))
    store.record_epoch({"phase": "pretrain", "epoch": 1, "val_acc": 0.25, "train_loss": float("nan")}, None)
    written = write_checkpoint_dir(tmp_path / "ckpt", {"phase": "binary", "epoch": 1}, {"epoch": 1}, None)
    store.record_epoch({"phase": "binary", "epoch": 1, "val_acc": 0.5}, written)

    with database_for(url).read() as session:
        metrics = reads.list_metrics(session, job_id, "")
        checkpoints = reads.list_checkpoints(session, job_id)
    assert [(m.phase, m.epoch, m.attempt) for m in metrics] == [("pretrain", 1, 1), ("binary", 1, 1)]
    assert metrics[0].values == {"val_acc": 0.25, "train_loss": None}  # NaN stored as null
    [checkpoint] = checkpoints
    assert (checkpoint.phase, checkpoint.epoch) == ("binary", 1)
    assert checkpoint.full_path == str(written.checkpoint_path)
    assert checkpoint.full_bytes == written.checkpoint_bytes
    assert checkpoint.packed_path is None and checkpoint.packed_bytes is None
    assert store.metric_rows() == [
        {"phase": "pretrain", "epoch": 1, "val_acc": 0.25, "train_loss": None},
        {"phase": "binary", "epoch": 1, "val_acc": 0.5},
    ]
    assert store.results()["best_val_acc"] == 0.5


def test_trials_events_and_the_best_trial(job: tuple[str, str], tmp_path: Path) -> None:
    url, job_id = job
    store = AttemptStore.of(_ctx(url, job_id, tmp_path))
    for key, acc in (("a", 0.4), ("b", 0.6)):
        store.record_trial(key, config={"seed": key}, state="running")
        store.record_epoch({"phase": "binary", "epoch": 1, "val_acc": acc}, None, trial_key=key)
        store.record_trial(key, config={"seed": key}, state="succeeded", metric=acc, epochs=1)
    store.record_best_trial("b")
    store.record_event("placement", "1 workers on 1 node(s)", {"attempt": 1})

    with database_for(url).read() as session:
        trials = {t.trial_key: t for t in reads.list_trials(session, job_id)}
        kinds = [e.kind for e in reads.events_after(session, job_id)]
    assert {k: (t.state, t.metric, t.is_best) for k, t in trials.items()} == {
        "a": ("succeeded", 0.4, False),
        "b": ("succeeded", 0.6, True),
    }
    assert "placement" in kinds
    assert store.results("a")["best_val_acc"] == 0.4
    assert [r["val_acc"] for r in store.metric_rows(None)] == [0.4, 0.6]

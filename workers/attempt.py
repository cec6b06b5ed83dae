"""The room of one attempt of one job: its context, its log and its store.

``AttemptContext`` is what the dispatcher hands to the attempt's Ray task; ``AttemptStore`` is the
only door from the worker side to the database. Both hold plain values, so they travel to any Ray
process (the attempt's task, a Ray Train controller, a Tune trial), which opens its database on
first use, once. No driver is imported here: the drivers import this module.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from fsg_core.checkpoint_dir import CheckpointDir
from service.db import reads, records
from service.db.comparison import summarize_rows
from service.db.engine import Database
from service.db.models import Job
from service.db.study import study_report
from service.storage import Storage

__all__ = ["AttemptContext", "AttemptStore", "JobLog", "close_databases", "database_for", "format_epoch"]

T = TypeVar("T")

# One Database (engine and pool) per URL per process, whatever the number of stores: a Ray worker
# process runs many attempts, callbacks and trials one after another, and each would otherwise
# open (and leak, or reopen per epoch) its own pool.
_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def database_for(url: str) -> Database:
    """This process's database at ``url``, opened on first use and kept for the life of the process."""
    with _databases_lock:
        db = _databases.get(url)
        if db is None:
            db = _databases[url] = Database.from_url(url)
        return db


def close_databases() -> None:
    """Dispose of this process's databases (tests that delete theirs); the next use reopens them."""
    with _databases_lock:
        for db in _databases.values():
            db.dispose()
        _databases.clear()


class JobLog:
    """Appends timestamped lines to a job's log file (what ``GET /v1/jobs/{id}/logs`` serves)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, message: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.path.open("a") as fh:
            for line in message.splitlines() or [""]:
                fh.write(f"{stamp} {line}\n")


def format_epoch(row: dict[str, Any]) -> str:
    """An epoch's line in the job's log."""
    keys = ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "step_time_s")
    parts = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])]
    return f"{row.get('phase', '?')} epoch {row.get('epoch', '?')}: " + " ".join(parts)


@dataclass(frozen=True)
class AttemptContext:
    """What one attempt needs to know. Plain values only: it travels to Ray worker processes.

    Paths come from ``service.storage.Storage``, the one owner of the artifact layout.
    """

    job_id: str
    attempt: int
    spec: dict[str, Any]  # the job's JobSpec as JSON data
    database_url: str
    artifacts_dir: str
    resume_path: str | None = None  # a checkpoint directory of an earlier attempt
    db_outage_s: float = 120.0  # how long writers of this attempt ride out a database outage

    @property
    def storage(self) -> Storage:
        return Storage(self.artifacts_dir)

    @property
    def job_dir(self) -> Path:
        return self.storage.job_dir(self.job_id)

    @property
    def log_path(self) -> Path:
        return self.storage.log_path(self.job_id)

    @property
    def log(self) -> JobLog:
        return JobLog(self.log_path)

    @property
    def ray_storage(self) -> str:
        """Ray Train's and Tune's ``storage_path``."""
        return str(self.storage.ray_storage_path())

    def checkpoint_dir(self, phase: str, epoch: int, trial_key: str = "") -> Path:
        """Where a ``ray_task`` run writes its checkpoint of ``phase`` epoch ``epoch`` (the job's, or the
        trial ``trial_key``'s, whose ``/`` becomes ``--``); the attempt number keeps a later attempt from
        overwriting a directory an earlier one recorded."""
        trial = f"{trial_key.replace('/', '--')}-" if trial_key else ""
        return self.storage.checkpoints_dir(self.job_id) / f"attempt-{self.attempt}-{trial}{phase}-{epoch:05d}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttemptStore:
    """What one attempt writes to the database and reads back, each call one transaction.

    Writes ride out an outage of up to ``outage_s`` (the run waits with them), so no epoch is lost;
    past that the error goes up and the run fails (the job then retries). It holds no connection:
    ``db`` is the process's database for ``database_url`` (``database_for``).
    """

    database_url: str
    job_id: str
    attempt: int
    outage_s: float = 120.0

    @classmethod
    def of(cls, ctx: AttemptContext) -> AttemptStore:
        return cls(ctx.database_url, ctx.job_id, ctx.attempt, ctx.db_outage_s)

    @property
    def db(self) -> Database:
        return database_for(self.database_url)

    def _write(self, work: Callable[[Session], T]) -> T:
        return self.db.retrying(work, within_s=self.outage_s)

    def _read(self, work: Callable[[Session], T]) -> T:
        return self.db.retrying(work, within_s=self.outage_s, write=False)

    # --- writes ---------------------------------------------------------------------------------
    def record_epoch(self, row: dict[str, Any], checkpoint: CheckpointDir | None, *, trial_key: str = "") -> None:
        """One epoch's metrics (``row`` holds ``phase`` and ``epoch``) and its checkpoint, if any."""

        def write(session: Session) -> None:
            records.record_metrics(session, self.job_id, [row], attempt=self.attempt, trial_key=trial_key)
            if checkpoint is not None:
                packed = checkpoint.packed_path
                records.record_checkpoint(
                    session,
                    self.job_id,
                    epoch=int(row["epoch"]),
                    phase=str(row["phase"]),
                    full_path=str(checkpoint.checkpoint_path),
                    packed_path=None if packed is None else str(packed),
                    full_bytes=checkpoint.checkpoint_bytes,
                    packed_bytes=checkpoint.packed_bytes,
                    metrics=json.loads(json.dumps(row, default=str)),
                    trial_key=trial_key,
                )

        self._write(write)

    def record_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """A job event that is not a state change (worker placement, a worker-group failure)."""
        self._write(lambda session: records.record_event(session, self.job_id, kind, message, data))

    def record_trial(
        self,
        trial_key: str,
        *,
        config: dict[str, Any],
        state: str,
        metric: float | None = None,
        epochs: int = 0,
        error: str | None = None,
    ) -> None:
        """Insert or update a search trial (``records.upsert_trial``)."""
        self._write(
            lambda session: records.upsert_trial(
                session,
                self.job_id,
                trial_key=trial_key,
                config=config,
                state=state,
                metric=metric,
                epochs=epochs,
                error=error,
            )
        )

    def record_best_trial(self, trial_key: str) -> None:
        """Flag ``trial_key`` as the search's best trial."""
        self._write(lambda session: records.mark_best_trial(session, self.job_id, trial_key))

    # --- reads ----------------------------------------------------------------------------------
    def metric_rows(self, trial_key: str | None = "") -> list[dict[str, Any]]:
        """The recorded epochs as ``{"phase", "epoch", **values}`` (``trial_key`` None: every trial's)."""
        return self._read(lambda session: _rows(session, self.job_id, trial_key))

    def trial_state(self, trial_key: str) -> str | None:
        """A trial's recorded state (a retried study skips the trials an earlier attempt finished)."""
        return self._read(lambda session: reads.trial_state(session, self.job_id, trial_key))

    def latest_checkpoint(self, trial_key: str = "") -> str | None:
        """The latest recorded training checkpoint of the job or of one trial, when its file still exists."""
        path = self._read(lambda session: reads.latest_checkpoint_file(session, self.job_id, trial_key))
        return path if path is not None and Path(path).exists() else None

    def study_results(self, study: Any) -> dict[str, Any]:
        """The study's summary: each variant's mean best val accuracy and the trials done (the full table
        is ``GET /v1/jobs/{id}/study``)."""

        def read(session: Session) -> dict[str, Any]:
            job = session.get(Job, self.job_id)
            assert job is not None
            return study_report(session, job)

        report = self._read(read)
        out: dict[str, Any] = {"baseline": report["baseline"], "seeds": report["seeds"]}
        for row in report["variants"]:
            out[f"{row['name']}.best_val_acc"] = row["figures"]["best_val_acc"]["mean"]
        out["trials"] = sum(row["trials_done"] for row in report["variants"])
        return out

    def results(self, trial_key: str | None = "") -> dict[str, Any]:
        """Best and last-k figures of the recorded epochs, plus the size of the latest packed model:
        what the job's summary holds when the attempt succeeds."""

        def read(session: Session) -> tuple[list[dict[str, Any]], list[Any]]:
            checkpoints = [
                c for c in reads.list_checkpoints(session, self.job_id) if trial_key is None or c.trial_key == trial_key
            ]
            return _rows(session, self.job_id, trial_key), checkpoints

        rows, checkpoints = self._read(read)
        out = summarize_rows(rows)  # stored rows: NaN came back as None
        packed = [c for c in checkpoints if c.packed_bytes]
        if packed:
            out["packed_bytes"] = packed[-1].packed_bytes
        return out


def _rows(session: Session, job_id: str, trial_key: str | None) -> list[dict[str, Any]]:
    return reads.metric_rows(session, job_id, trial_key)

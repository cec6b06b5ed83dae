"""Ray Train callbacks that run on the controller and write a run's progress to the database.

``ray.train.UserCallback.after_report`` sees every epoch (the result's dataframe keeps only
checkpointed rows), so per-epoch metrics reach the database from here, together with each
persisted checkpoint and a line in the job's log.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.train import Checkpoint, UserCallback

from workers.worker_loop import CHECKPOINT_FILE, PACKED_FILE

__all__ = ["DatabaseCallback", "JobLog"]

log = logging.getLogger("fsg.workers")


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


def _format_epoch(row: dict[str, Any]) -> str:
    keys = ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "step_time_s")
    parts = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])]
    return f"{row.get('phase', '?')} epoch {row.get('epoch', '?')}: " + " ".join(parts)


class DatabaseCallback(UserCallback):
    """Writes every reported epoch (rank 0's metrics), checkpoint and failure of one run.

    It is pickled to the Ray Train controller, so it carries only plain values and opens its own
    database connection there.
    """

    def __init__(self, *, database_url: str, job_id: str, attempt: int, log_path: str, trial_key: str = "") -> None:
        self.database_url = database_url
        self.job_id = job_id
        self.attempt = attempt
        self.log_path = log_path
        self.trial_key = trial_key
        self._db: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_db"] = None
        return state

    def _database(self) -> Any:
        if self._db is None:
            from service.db.engine import Database

            self._db = Database.from_url(self.database_url)
        return self._db

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        from service.db import records

        row = dict(metrics[0]) if metrics else {}
        if "phase" not in row or "epoch" not in row:
            return
        prefix = f"[trial {self.trial_key}] " if self.trial_key else ""
        JobLog(self.log_path).write(prefix + _format_epoch(row))
        with self._database().write() as session:
            records.record_metrics(session, self.job_id, [row], attempt=self.attempt, trial_key=self.trial_key)
            if checkpoint is not None:
                directory = Path(checkpoint.path)
                full, packed = directory / CHECKPOINT_FILE, directory / PACKED_FILE
                records.record_checkpoint(
                    session,
                    self.job_id,
                    epoch=int(row["epoch"]),
                    phase=str(row["phase"]),
                    full_path=str(full) if full.exists() else None,
                    packed_path=str(packed) if packed.exists() else None,
                    full_bytes=full.stat().st_size if full.exists() else None,
                    packed_bytes=packed.stat().st_size if packed.exists() else None,
                    metrics=json.loads(json.dumps(row, default=str)),
                    trial_key=self.trial_key,
                )

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, exc in sorted(worker_exceptions.items()):
            JobLog(self.log_path).write(f"worker {rank} failed: {type(exc).__name__}: {exc}")

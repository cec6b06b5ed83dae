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

from workers.worker_loop import CHECKPOINT_FILE, NODE_KEY, PACKED_FILE

__all__ = ["DatabaseCallback", "JobLog", "format_epoch", "record_epoch"]

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


def format_epoch(row: dict[str, Any]) -> str:
    keys = ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "step_time_s")
    parts = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])]
    return f"{row.get('phase', '?')} epoch {row.get('epoch', '?')}: " + " ".join(parts)


def record_epoch(
    db: Any,
    *,
    job_id: str,
    attempt: int,
    trial_key: str,
    row: dict[str, Any],
    checkpoint_dir: Path | None,
    outage_s: float,
) -> None:
    """Write one epoch's metrics, and its checkpoint directory if any, in one transaction.

    It waits through a database outage of up to ``outage_s`` (the run waits with it), so no epoch
    is lost; past that the error goes up and the run fails (the job then retries).
    """
    from service.db import records

    def write(session: Any) -> None:
        records.record_metrics(session, job_id, [row], attempt=attempt, trial_key=trial_key)
        if checkpoint_dir is not None:
            full, packed = checkpoint_dir / CHECKPOINT_FILE, checkpoint_dir / PACKED_FILE
            records.record_checkpoint(
                session,
                job_id,
                epoch=int(row["epoch"]),
                phase=str(row["phase"]),
                full_path=str(full) if full.exists() else None,
                packed_path=str(packed) if packed.exists() else None,
                full_bytes=full.stat().st_size if full.exists() else None,
                packed_bytes=packed.stat().st_size if packed.exists() else None,
                metrics=json.loads(json.dumps(row, default=str)),
                trial_key=trial_key,
            )

    db.retrying(write, within_s=outage_s)


class DatabaseCallback(UserCallback):
    """Writes every reported epoch (rank 0's metrics), checkpoint and failure of one run.

    It is pickled to the Ray Train controller, so it carries only plain values and opens its own
    database connection there.
    """

    def __init__(
        self,
        *,
        database_url: str,
        job_id: str,
        attempt: int,
        log_path: str,
        trial_key: str = "",
        outage_s: float = 120.0,
    ) -> None:
        self.database_url = database_url
        self.outage_s = outage_s
        self.job_id = job_id
        self.attempt = attempt
        self.log_path = log_path
        self.trial_key = trial_key
        self._db: Any = None
        self._placement: list[str] | None = None  # node of each rank, as last recorded
        self._failures = 0

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
        row = dict(metrics[0]) if metrics else {}
        if "phase" not in row or "epoch" not in row:
            return
        row.pop(NODE_KEY, None)
        prefix = f"[trial {self.trial_key}] " if self.trial_key else ""
        placement = [str(m.get(NODE_KEY, "")) for m in metrics]
        if placement != self._placement:  # the first report, or the first after a worker-group restart
            self._placement = placement
            self._record_event("placement", f"{len(placement)} workers on {len(set(placement))} node(s)", placement)
        JobLog(self.log_path).write(prefix + format_epoch(row))
        record_epoch(
            self._database(),
            job_id=self.job_id,
            attempt=self.attempt,
            trial_key=self.trial_key,
            row=row,
            checkpoint_dir=Path(checkpoint.path) if checkpoint is not None else None,
            outage_s=self.outage_s,
        )

    def _record_event(self, kind: str, message: str, nodes: list[str] | None = None, **data: Any) -> None:
        from service.db import records

        prefix = f"[trial {self.trial_key}] " if self.trial_key else ""
        JobLog(self.log_path).write(prefix + message + (f": {', '.join(n[:12] for n in nodes)}" if nodes else ""))
        payload = {"attempt": self.attempt, "trial_key": self.trial_key, **data}
        if nodes is not None:
            payload["nodes"] = nodes
        self._database().retrying(
            lambda session: records.record_event(session, self.job_id, kind, prefix + message, payload),
            within_s=self.outage_s,
        )

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """A worker failed (an error, or its process died): Ray Train restarts the worker group from
        the latest checkpoint while ``FailureConfig.max_failures`` allows; each one is an event."""
        self._failures += 1
        self._placement = None  # the restarted group's placement is recorded at its first report
        errors = {
            str(rank): f"{type(exc).__name__}: {str(exc)[:500]}" for rank, exc in sorted(worker_exceptions.items())
        }
        for rank, text in errors.items():
            JobLog(self.log_path).write(f"worker {rank} failed: {text}")
        self._record_event(
            "worker_failure",
            f"worker group failure {self._failures} (ranks {', '.join(errors)})",
            failure=self._failures,
            errors=errors,
        )

"""Ray Train callbacks that run on the controller and write a run's progress to the database.

``ray.train.UserCallback.after_report`` sees every epoch (the result's dataframe keeps only
checkpointed rows), so per-epoch metrics reach the database from here, together with each
persisted checkpoint and a line in the job's log.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import Checkpoint, UserCallback

from fsg_core.checkpoint_dir import read_checkpoint_dir
from workers.attempt import AttemptContext, AttemptStore, JobLog, format_epoch
from workers.worker_loop import NODE_KEY

# JobLog is re-exported: the dispatcher imports it from here.
__all__ = ["DatabaseCallback", "JobLog"]

log = logging.getLogger("fsg.workers")


class DatabaseCallback(UserCallback):
    """Writes every reported epoch (rank 0's metrics), checkpoint and failure of one run.

    It is pickled to the Ray Train controller: the context and the store are plain values, and the
    store opens the controller process's database on its first write.

    Args:
        ctx: the attempt (its number and log).
        store: the attempt's store.
        trial_key: the search trial this run is ("" for a training job).
    """

    def __init__(self, ctx: AttemptContext, store: AttemptStore, *, trial_key: str = "") -> None:
        self.store = store
        self.attempt = ctx.attempt
        self.log = ctx.log
        self.trial_key = trial_key
        self._placement: list[str] | None = None  # node of each rank, as last recorded
        self._failures = 0

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
        self.log.write(prefix + format_epoch(row))
        persisted = read_checkpoint_dir(checkpoint.path) if checkpoint is not None else None
        self.store.record_epoch(row, persisted, trial_key=self.trial_key)

    def _record_event(self, kind: str, message: str, nodes: list[str] | None = None, **data: Any) -> None:
        prefix = f"[trial {self.trial_key}] " if self.trial_key else ""
        self.log.write(prefix + message + (f": {', '.join(n[:12] for n in nodes)}" if nodes else ""))
        payload = {"attempt": self.attempt, "trial_key": self.trial_key, **data}
        if nodes is not None:
            payload["nodes"] = nodes
        self.store.record_event(kind, prefix + message, payload)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """A worker failed (an error, or its process died): Ray Train restarts the worker group from
        the latest checkpoint while ``FailureConfig.max_failures`` allows; each one is an event."""
        self._failures += 1
        self._placement = None  # the restarted group's placement is recorded at its first report
        errors = {
            str(rank): f"{type(exc).__name__}: {str(exc)[:500]}" for rank, exc in sorted(worker_exceptions.items())
        }
        for rank, text in errors.items():
            self.log.write(f"worker {rank} failed: {text}")
        self._record_event(
            "worker_failure",
            f"worker group failure {self._failures} (ranks {', '.join(errors)})",
            failure=self._failures,
            errors=errors,
        )

"""One attempt of one job, as a Ray task: the context it needs and the function that runs it.

The dispatcher launches ``run_job`` as a zero-CPU Ray task (the Ray Train workers reserve the
resources), so it stays responsive and can stop the attempt with ``ray.cancel``.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.callbacks import JobLog

__all__ = ["JobContext", "run_job"]


@dataclass(frozen=True)
class JobContext:
    """Plain values only: it travels to a Ray worker process."""

    job_id: str
    attempt: int
    spec: dict[str, Any]
    database_url: str
    artifacts_dir: str
    resume_path: str | None = None
    db_outage_s: float = 120.0  # how long writers of this attempt ride out a database outage

    @property
    def job_dir(self) -> Path:
        return Path(self.artifacts_dir) / "jobs" / self.job_id

    @property
    def log_path(self) -> Path:
        return self.job_dir / "log.txt"

    @property
    def ray_storage(self) -> str:
        return str(Path(self.artifacts_dir) / "ray")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def run_job(ctx: JobContext) -> dict[str, Any]:
    """Run the attempt to the end and return the job's summary (raises if it failed)."""
    from service.schemas.jobs import JobSpec

    log = JobLog(ctx.log_path)
    spec = JobSpec.model_validate(ctx.spec)
    resumed = f", resuming from {ctx.resume_path}" if ctx.resume_path else ""
    log.write(f"attempt {ctx.attempt}: {spec.kind} job {spec.name!r} starts{resumed}")
    try:
        if spec.kind == "search":
            from workers.tune_driver import run_search

            summary = run_search(ctx, spec)
        elif spec.resources.executor == "ray_task":
            from workers.task_driver import run_task

            summary = run_task(ctx, spec)
        else:
            from workers.train_driver import run_training

            summary = run_training(ctx, spec)
    except BaseException as exc:
        log.write(f"attempt {ctx.attempt} ended with {type(exc).__name__}: {exc}")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            log.write("".join(traceback.format_exception(exc)[-8:]))
        raise
    log.write(f"attempt {ctx.attempt} finished: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return _finite(summary)

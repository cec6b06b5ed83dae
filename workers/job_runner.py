"""One attempt of one job, as a Ray task: ``run_job`` picks the driver for the job's kind and runs it.

The dispatcher launches ``run_job`` as a zero-CPU Ray task (the Ray Train workers reserve the
resources), so it stays responsive and can stop the attempt with ``ray.cancel``. The attempt's
context and store live in ``workers.attempt``. The drivers are imported inside ``run_job``: the
dispatcher imports this module and needs neither Ray Train nor Ray Tune.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

from workers.attempt import AttemptContext, AttemptStore

__all__ = ["run_job"]


def _finite(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def run_job(ctx: AttemptContext) -> dict[str, Any]:
    """Run the attempt to the end and return the job's summary (raises if it failed)."""
    from service.schemas.jobs import JobSpec

    log = ctx.log
    store = AttemptStore.of(ctx)  # the one store of this attempt: every driver writes through it
    spec = JobSpec.model_validate(ctx.spec)
    resumed = f", resuming from {ctx.resume_path}" if ctx.resume_path else ""
    log.write(f"attempt {ctx.attempt}: {spec.kind} job {spec.name!r} starts{resumed}")
    try:
        if spec.kind == "search":
            from workers.tune_driver import run_search

            summary = run_search(ctx, spec, store)
        elif spec.kind == "study":
            from workers.study_driver import run_study

            summary = run_study(ctx, spec, store)
        elif spec.resources.executor == "ray_task":
            from workers.task_driver import run_task

            summary = run_task(ctx, spec, store)
        else:
            from workers.train_driver import run_training

            summary = run_training(ctx, spec, store)
    except BaseException as exc:
        log.write(f"attempt {ctx.attempt} ended with {type(exc).__name__}: {exc}")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            log.write("".join(traceback.format_exception(exc)[-8:]))
        raise
    log.write(f"attempt {ctx.attempt} finished: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return _finite(summary)

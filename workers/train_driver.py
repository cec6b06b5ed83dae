"""A training job on Ray Train: a ``TorchTrainer`` built from the job spec, named by the job id."""

from __future__ import annotations

from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from service.db.comparison import summarize_rows
from service.schemas.jobs import JobSpec, ResourcesSpec
from workers.callbacks import DatabaseCallback
from workers.job_runner import JobContext
from workers.worker_loop import train_loop_per_worker

__all__ = ["build_trainer", "job_summary", "run_training", "scaling_config"]

# Worker-group restarts inside one attempt (a dead worker process); attempts are the dispatcher's.
WORKER_FAILURES = 2


def scaling_config(resources: ResourcesSpec) -> ScalingConfig:
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = 1
    return ScalingConfig(
        num_workers=resources.num_workers,
        use_gpu=resources.use_gpu,
        resources_per_worker=per_worker,
        placement_strategy="SPREAD" if resources.placement == "spread" else "PACK",
    )


def build_trainer(
    ctx: JobContext,
    spec: JobSpec,
    *,
    train_spec: dict[str, Any],
    run_name: str,
    trial_key: str = "",
    extra_callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """A TorchTrainer for one run (a training job, or one trial of a search)."""
    callback = DatabaseCallback(
        database_url=ctx.database_url,
        job_id=ctx.job_id,
        attempt=ctx.attempt,
        log_path=str(ctx.log_path),
        trial_key=trial_key,
        outage_s=ctx.db_outage_s,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": train_spec,
            "resume_path": None if trial_key else ctx.resume_path,
            "cpus_per_worker": spec.resources.cpus_per_worker,
        },
        scaling_config=scaling_config(spec.resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=ctx.ray_storage,
            failure_config=FailureConfig(max_failures=WORKER_FAILURES, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=[*(extra_callbacks or []), callback],
        ),
    )


def job_summary(ctx: JobContext, trial_key: str | None = "", db: Any = None) -> dict[str, Any]:
    """Best and last-10 figures from the metrics the callback wrote, plus the latest packed model.

    ``db``: an open ``Database`` to read through (the caller keeps it); without one, one is opened here."""
    from service.db import reads
    from service.db.engine import Database

    def read(session: Any) -> tuple[list[dict[str, Any]], list[Any]]:
        rows = [
            {"phase": m.phase, "epoch": m.epoch, **m.values} for m in reads.list_metrics(session, ctx.job_id, trial_key)
        ]
        checkpoints = [
            c for c in reads.list_checkpoints(session, ctx.job_id) if trial_key is None or c.trial_key == trial_key
        ]
        return rows, checkpoints

    own = db is None
    db = Database.from_url(ctx.database_url) if own else db
    try:
        rows, checkpoints = db.retrying(read, within_s=ctx.db_outage_s, write=False)
    finally:
        if own:
            db.dispose()
    summary = summarize_rows(rows)  # stored rows: NaN came back as None
    packed = [c for c in checkpoints if c.packed_bytes]
    if packed:
        summary["packed_bytes"] = packed[-1].packed_bytes
    return summary


def run_training(ctx: JobContext, spec: JobSpec) -> dict[str, Any]:
    trainer = build_trainer(ctx, spec, train_spec=spec.train_spec().model_dump(mode="json"), run_name=ctx.job_id)
    trainer.fit()  # raises ray.train.TrainingFailedError when the workers fail beyond WORKER_FAILURES
    return job_summary(ctx)

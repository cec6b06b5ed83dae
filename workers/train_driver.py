"""A training job on Ray Train: a ``TorchTrainer`` built from the job spec, named by the job id."""

from __future__ import annotations

import os
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from service.schemas.jobs import JobSpec, ResourcesSpec
from workers.attempt import AttemptContext, AttemptStore
from workers.callbacks import DatabaseCallback
from workers.worker_loop import train_loop_per_worker

__all__ = ["build_trainer", "run_training", "scaling_config"]

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


# Ray Train v2 gives up on a worker group that has not started within 60 s. A job's runs never ask for
# more than admission let it hold, but a previous run's workers can take a while to give their CPUs
# back on a busy node: wait longer rather than fail the trial.
WORKER_GROUP_START_TIMEOUT_S = "600"


def build_trainer(
    ctx: AttemptContext,
    spec: JobSpec,
    store: AttemptStore,
    *,
    train_spec: dict[str, Any],
    run_name: str,
    trial_key: str = "",
    extra_callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """A TorchTrainer for one run (a training job, or one trial of a search)."""
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    callback = DatabaseCallback(ctx, store, trial_key=trial_key)
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
            # Ray Train v2's classes (RAY_TRAIN_V2_ENABLED); Ray's annotations name the v1 ones.
            failure_config=FailureConfig(max_failures=WORKER_FAILURES, controller_failure_limit=0),  # type: ignore[call-arg]
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=[*(extra_callbacks or []), callback],  # type: ignore[list-item]
        ),
    )


def run_training(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> dict[str, Any]:
    trainer = build_trainer(ctx, spec, store, train_spec=spec.train_spec().model_dump(mode="json"), run_name=ctx.job_id)
    trainer.fit()  # raises ray.train.TrainingFailedError when the workers fail beyond WORKER_FAILURES
    return store.results()

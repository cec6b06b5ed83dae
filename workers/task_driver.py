"""A small training run in the process at hand (``resources.executor = "ray_task"``).

A train job's ``fit`` runs inside the attempt's own Ray task, which holds the job's CPUs (or GPU);
a search's or a study's trial runs inside its Tune trial, which then holds them. No Ray Train worker
group, so none of its 10-20 s of start-up, which would dwarf a run of a few seconds (a study of six
small trials spent most of its time starting worker groups). Each epoch goes straight to the
database, and checkpoints to the job's directory in the artifact store; a new attempt of a train job
resumes from the latest one, as a Ray Train job does.
"""

from __future__ import annotations

from typing import Any

import torch

from fsg_core.checkpoint_dir import read_checkpoint_dir, write_checkpoint_dir
from fsg_core.reporting import Reporter
from fsg_core.spec import TrainSpec
from fsg_core.train import Components, fit
from service.schemas.jobs import JobSpec
from workers.attempt import AttemptContext, AttemptStore, format_epoch
from workers.worker_loop import plain_metrics

__all__ = ["DatabaseReporter", "run_in_process", "run_task"]


class DatabaseReporter(Reporter):
    """Writes every epoch and checkpoint of an in-process run (the job's, or the trial ``trial_key``'s)
    to the database and the artifact store; with ``to_tune``, also to Tune (a search's scheduler, ASHA,
    stops trials by the epochs it is told of)."""

    def __init__(self, ctx: AttemptContext, store: AttemptStore, trial_key: str = "", to_tune: bool = False) -> None:
        self.ctx = ctx
        self.store = store
        self.trial_key = trial_key
        self.to_tune = to_tune
        self.log = ctx.log
        self.components: Components | None = None

    def on_setup(self, components: Any) -> None:
        self.components = components

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        row = plain_metrics(metrics)
        if "phase" not in row or "epoch" not in row:
            return
        self.log.write((f"{self.trial_key}: " if self.trial_key else "") + format_epoch(row))
        written = None
        if checkpoint is not None:
            directory = self.ctx.checkpoint_dir(str(row["phase"]), int(row["epoch"]), self.trial_key)
            written = write_checkpoint_dir(directory, row, checkpoint, self.components)
        self.store.record_epoch(row, written, trial_key=self.trial_key)
        if self.to_tune:
            import ray.tune

            ray.tune.report(row)


def run_in_process(
    ctx: AttemptContext,
    spec: JobSpec,
    store: AttemptStore,
    train_spec: TrainSpec,
    *,
    trial_key: str = "",
    resume: dict[str, Any] | None = None,
    to_tune: bool = False,
) -> None:
    """Run ``train_spec`` to the end in this process, on the CPUs (or the GPU) it holds."""
    # As a Ray Train worker does: intra-op threads follow the CPUs this task holds.
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    device = torch.device("cuda") if spec.resources.use_gpu else torch.device("cpu")
    reporter = DatabaseReporter(ctx, store, trial_key=trial_key, to_tune=to_tune)
    fit(train_spec, reporter, resume=resume, device=device)


def run_task(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> dict[str, Any]:
    """Train the job in this process (the attempt's task) and return its summary."""
    earlier = read_checkpoint_dir(ctx.resume_path)
    resume = earlier.load_state() if earlier is not None else None
    run_in_process(ctx, spec, store, spec.train_spec(), resume=resume)
    return store.results()

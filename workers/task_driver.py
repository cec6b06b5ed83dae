"""A small training job as one Ray task (``resources.executor = "ray_task"``).

fsg_core's ``fit`` runs inside the attempt's own Ray task, which holds the job's CPUs (or GPU):
no Ray Train worker group, so none of its 10-20 s of start-up, which would dwarf a job of a few
seconds. Each epoch goes straight to the database, and checkpoints to the job's directory in the
artifact store; a new attempt resumes from the latest one, as a Ray Train job does.
"""

from __future__ import annotations

from typing import Any

import torch

from fsg_core.checkpoint_dir import read_checkpoint_dir, write_checkpoint_dir
from fsg_core.reporting import Reporter
from fsg_core.train import Components, fit
from service.schemas.jobs import JobSpec
from workers.attempt import AttemptContext, AttemptStore, format_epoch
from workers.worker_loop import plain_metrics

__all__ = ["DatabaseReporter", "run_task"]


class DatabaseReporter(Reporter):
    """Writes every epoch and checkpoint of an in-task run to the database and the artifact store."""

    def __init__(self, ctx: AttemptContext, store: AttemptStore) -> None:
        self.ctx = ctx
        self.store = store
        self.log = ctx.log
        self.components: Components | None = None

    def on_setup(self, components: Any) -> None:
        self.components = components

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        row = plain_metrics(metrics)
        if "phase" not in row or "epoch" not in row:
            return
        self.log.write(format_epoch(row))
        written = None
        if checkpoint is not None:
            directory = self.ctx.checkpoint_dir(str(row["phase"]), int(row["epoch"]))
            written = write_checkpoint_dir(directory, row, checkpoint, self.components)
        self.store.record_epoch(row, written)


def run_task(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> dict[str, Any]:
    """Train in this process and return the job's summary."""
    # As a Ray Train worker does: intra-op threads follow the CPUs this task holds.
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    earlier = read_checkpoint_dir(ctx.resume_path)
    resume = earlier.load_state() if earlier is not None else None
    device = torch.device("cuda") if spec.resources.use_gpu else torch.device("cpu")
    fit(spec.train_spec(), DatabaseReporter(ctx, store), resume=resume, device=device)
    return store.results()

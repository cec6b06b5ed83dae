"""A small training job as one Ray task (``resources.executor = "ray_task"``).

fsg_core's ``fit`` runs inside the attempt's own Ray task, which holds the job's CPUs (or GPU):
no Ray Train worker group, so none of its 10-20 s of start-up, which would dwarf a job of a few
seconds. Each epoch goes straight to the database, and checkpoints to the job's directory in the
artifact store; a new attempt resumes from the latest one, as a Ray Train job does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fsg_core.checkpoint import load_checkpoint
from fsg_core.reporting import Reporter
from fsg_core.train import Components, fit
from service.schemas.jobs import JobSpec
from workers.callbacks import JobLog, format_epoch, record_epoch
from workers.job_runner import JobContext
from workers.train_driver import job_summary
from workers.worker_loop import CHECKPOINT_FILE, plain_metrics, write_checkpoint_dir

__all__ = ["DatabaseReporter", "run_task"]


class DatabaseReporter(Reporter):
    """Writes every epoch and checkpoint of an in-task run to the database and the artifact store."""

    def __init__(self, ctx: JobContext) -> None:
        from service.db.engine import Database

        self.ctx = ctx
        self.db = Database.from_url(ctx.database_url)
        self.log = JobLog(ctx.log_path)
        self.components: Components | None = None

    def on_setup(self, components: Any) -> None:
        self.components = components

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        row = plain_metrics(metrics)
        if "phase" not in row or "epoch" not in row:
            return
        self.log.write(format_epoch(row))
        directory = None
        if checkpoint is not None:
            name = f"attempt-{self.ctx.attempt}-{row['phase']}-{int(row['epoch']):05d}"
            directory = self.ctx.job_dir / "checkpoints" / name
            write_checkpoint_dir(directory, row, checkpoint, self.components)
        record_epoch(
            self.db,
            job_id=self.ctx.job_id,
            attempt=self.ctx.attempt,
            trial_key="",
            row=row,
            checkpoint_dir=directory,
            outage_s=self.ctx.db_outage_s,
        )

    def close(self) -> None:
        self.db.dispose()


def run_task(ctx: JobContext, spec: JobSpec) -> dict[str, Any]:
    """Train in this process and return the job's summary."""
    # As a Ray Train worker does: intra-op threads follow the CPUs this task holds.
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    resume = None
    if ctx.resume_path and (Path(ctx.resume_path) / CHECKPOINT_FILE).exists():
        resume = load_checkpoint(Path(ctx.resume_path) / CHECKPOINT_FILE)
    device = torch.device("cuda") if spec.resources.use_gpu else torch.device("cpu")
    reporter = DatabaseReporter(ctx)
    try:
        fit(spec.train_spec(), reporter, resume=resume, device=device)
        return job_summary(ctx, db=reporter.db)
    finally:
        reporter.close()

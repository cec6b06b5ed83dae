"""What every Ray Train worker runs: fsg_core's ``fit`` with a reporter that talks to Ray Train.

Each epoch every rank calls ``ray.train.report`` (Ray requires all of them); rank 0 attaches a
checkpoint directory (``fsg_core.checkpoint_dir``: the resumable state and, in the binarized phase,
the 1-bit packed model). A restarted worker group, or a new attempt of the job, resumes from the
latest checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from fsg_core.checkpoint_dir import read_checkpoint_dir, write_checkpoint_dir
from fsg_core.reporting import Reporter
from fsg_core.spec import TrainSpec
from fsg_core.train import Components, fit

__all__ = ["NODE_KEY", "RayReporter", "plain_metrics", "train_loop_per_worker"]

NODE_KEY = "node_id"  # the metric that carries a rank's node to the controller's callback


def plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of an epoch's metrics (what Ray and the database take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


class RayReporter(Reporter):
    """Forwards epochs and checkpoints to ``ray.train.report`` (or ``ray.tune.report``)."""

    def __init__(self) -> None:
        self.components: Components | None = None

    def on_setup(self, components: Any) -> None:
        self.components = components

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        # Which node each rank runs on reaches the controller's callback (placement events).
        clean = {**plain_metrics(metrics), NODE_KEY: ray.get_runtime_context().get_node_id()}
        if checkpoint is None:
            ray.train.report(clean)
            return
        tmp = Path(tempfile.mkdtemp(prefix="fsg-ckpt-"))
        try:
            write_checkpoint_dir(tmp, clean, checkpoint, self.components)
            ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _resume_state(config: dict[str, Any]) -> dict[str, Any] | None:
    """The state to resume from: Ray's latest checkpoint of this run (a restarted worker group), else
    the checkpoint of an earlier attempt that the dispatcher passed in, else None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            latest = read_checkpoint_dir(directory)
            if latest is not None:
                return latest.load_state()
    earlier = read_checkpoint_dir(config.get("resume_path"))
    return earlier.load_state() if earlier is not None else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: ``config`` holds ``spec`` (a TrainSpec as JSON data) and
    optionally ``resume_path`` (a checkpoint directory of an earlier attempt)."""
    spec = TrainSpec.model_validate(config["spec"])
    # Intra-op threads follow the CPUs Ray reserved for this worker: more would fight the other
    # workers on the node, fewer would leave the reservation idle.
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    device = ray.train.torch.get_device()
    fit(spec, RayReporter(), resume=_resume_state(config), device=device)

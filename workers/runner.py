"""The seam between the dispatcher and Ray: start an attempt, see which ended, take its result, stop
it, and read the cluster's resources.

``RayRunner`` is the real one (each attempt a zero-CPU Ray task running ``job_runner.run_job``, owned
by the dispatcher's process). The dispatcher's tick is unit-tested with a scripted runner on a real
SQLite queue (``tests/workers/test_dispatcher.py``); the real-Ray tests of the faults stay in
``tests/e2e``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import ray
from ray.exceptions import TaskCancelledError

from workers.attempt import AttemptContext
from workers.job_runner import run_job
from workers.ray_cluster import RayCluster

__all__ = ["AttemptCancelled", "RayRunner", "Runner"]


class AttemptCancelled(Exception):
    """The attempt was stopped by ``Runner.stop`` (a cancel or a timeout), not failed by itself."""


class Runner(Protocol):
    """What the dispatcher needs of a cluster. A handle is whatever ``start`` returned."""

    started_here: bool  # the dispatcher started this cluster (and its record goes with it)

    def start(self, ctx: AttemptContext, *, name: str, num_cpus: float | None, num_gpus: float | None) -> Any:
        """Launch the attempt; ``num_cpus``/``num_gpus``: what the attempt's own process holds (None:
        nothing, its Ray Train workers hold the job's resources). Raises if the cluster refuses it."""
        ...

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        """The handles whose attempt has ended, without waiting."""
        ...

    def result(self, handle: Any) -> dict[str, Any]:
        """The ended attempt's summary; raises its error, or ``AttemptCancelled`` when it was stopped."""
        ...

    def stop(self, handle: Any, *, force: bool = False) -> None:
        """Ask the attempt to stop (``force``: kill it now)."""
        ...

    def wait(self, handle: Any, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the attempt to end (shutting down)."""
        ...

    def free(self) -> tuple[float, float]:
        """CPUs and GPUs free now."""
        ...

    def total(self) -> tuple[float, float]:
        """The cluster's CPUs and GPUs."""
        ...

    def run_url(self, handle: Any) -> str | None:
        """Where an operator watches the launched attempt ``handle`` (None without a dashboard)."""
        ...

    def release_leaked(self, created_before_ns: int) -> list[str]:
        """Free what ended attempts left holding resources (placement groups) created before
        ``created_before_ns``; what was freed."""
        ...


class RayRunner:
    """Attempts as Ray tasks on the cluster ``connect`` joined or started."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self.started_here = cluster.started_here
        # Attempts must not be retried by Ray behind our back: retries are the queue's decision.
        self._remote = ray.remote(num_cpus=0, max_retries=0)(run_job)

    def start(self, ctx: AttemptContext, *, name: str, num_cpus: float | None, num_gpus: float | None) -> Any:
        options: dict[str, Any] = {"name": name}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if num_gpus is not None:
            options["num_gpus"] = num_gpus
        return self._remote.options(**options).remote(ctx)  # Ray refuses some options here (ValueError)

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        if not handles:
            return []
        ready, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0)
        return list(ready)

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return dict(ray.get(handle))
        except (TaskCancelledError, KeyboardInterrupt):
            raise AttemptCancelled from None

    def stop(self, handle: Any, *, force: bool = False) -> None:
        # Without force, a KeyboardInterrupt in the task ends its TorchTrainer/Tuner, whose actors
        # (owned by the task) go with it and return their CPUs.
        ray.cancel(handle, force=force)

    def wait(self, handle: Any, timeout_s: float) -> None:
        ray.wait([handle], timeout=max(0.0, timeout_s))

    def free(self) -> tuple[float, float]:
        return self.cluster.free()

    def total(self) -> tuple[float, float]:
        return self.cluster.total()

    def run_url(self, handle: Any) -> str | None:
        return self.cluster.task_url(handle.task_id().hex())

    def release_leaked(self, created_before_ns: int) -> list[str]:
        return self.cluster.release_placement_groups(created_before_ns)

"""Start or join Ray, on its own ports, and read its free resources.

A local Ray started here takes a random GCS port (never 6379, which Redis holds) and its dashboard
on ``FSG_RAY_DASHBOARD_PORT``; the dashboard stays on because Ray needs it to free a cancelled Train
run's placement group. ``RAY_ADDRESS`` joins an existing cluster instead. Call from the main thread:
Ray started from a thread that then exits takes the local cluster down with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from service.settings import Settings

__all__ = ["RayCluster", "connect"]


@dataclass
class RayCluster:
    address: str
    dashboard_url: str | None
    started_here: bool

    def free(self) -> tuple[float, float]:
        """Available (CPUs, GPUs) right now, as Ray sees them."""
        available = ray.available_resources()
        return float(available.get("CPU", 0.0)), float(available.get("GPU", 0.0))

    def total(self) -> tuple[float, float]:
        resources = ray.cluster_resources()
        return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))

    def release_placement_groups(self, created_before_ns: int) -> list[str]:
        """Remove this driver's placement groups created before ``created_before_ns`` (wall clock, ns);
        the ids removed.

        Why: a placement group lives as long as the Ray *job* that created it, not the task. Every attempt
        runs as a task of the dispatcher's job, and its Ray Train and Tune runs create placement groups
        there; when the attempt's process is killed (a cancel, a timeout, a lost worker) their cleanup
        never runs and the groups hold their CPUs until the dispatcher exits. Two such leaks, one bundle
        per node, once left no node with a whole CPU, and a 1-CPU job waited forever (``bench.chaos``).
        The dispatcher calls this with the launch time of its oldest live attempt: a group older than
        every live attempt belongs to none of them.
        """
        from ray.util.placement_group import PlacementGroup, remove_placement_group
        from ray.util.state import list_placement_groups

        context = ray.get_runtime_context()
        groups = list_placement_groups(
            address=context.gcs_address,  # this cluster's, even where a machine runs several
            filters=[("creator_job_id", "=", context.get_job_id())],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )
        released = []
        for group in groups:
            created = int((group.stats or {}).get("creation_request_received_ns") or 0)
            if group.state in ("REMOVED",) or group.is_detached or not 0 < created < created_before_ns:
                continue
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.placement_group_id)))
            released.append(group.placement_group_id)
        return released

    def task_url(self, task_id: str) -> str | None:
        """The dashboard page of one of this driver's tasks (an attempt: its state, its logs, and the Ray
        Train or Tune actors it started), under the driver's Ray job."""
        if not self.dashboard_url:
            return None
        job_id = ray.get_runtime_context().get_job_id()
        return f"{self.dashboard_url.rstrip('/')}/#/jobs/{job_id}/tasks/{task_id}"


def _ray_log_level(settings: Settings) -> int:
    # Ray's driver logs its token-auth notice and start-up lines as warnings and info: errors only, unless
    # FSG_VERBOSE. fsg prints the dashboard and how to sign in itself (the dispatcher's start-up line).
    return logging.INFO if settings.verbose else logging.ERROR


def connect(settings: Settings) -> RayCluster:
    """Join ``settings.ray_address``, or start a local Ray sized by the settings."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        context = ray.get_runtime_context()
        return RayCluster(context.gcs_address, settings.ray_dashboard_url, started_here=False)
    if settings.ray_address:
        info = ray.init(
            address=settings.ray_address, namespace="fsg", log_to_driver=False, logging_level=_ray_log_level(settings)
        )
        dashboard = settings.ray_dashboard_url or (f"http://{info.dashboard_url}" if info.dashboard_url else None)
        return RayCluster(ray.get_runtime_context().gcs_address, dashboard, started_here=False)
    info = ray.init(
        num_cpus=settings.ray_num_cpus,
        num_gpus=settings.ray_num_gpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=settings.ray_dashboard_port,
        object_store_memory=settings.ray_object_store_mb * 2**20,
        namespace="fsg",
        log_to_driver=False,
        logging_level=_ray_log_level(settings),
    )
    dashboard = settings.ray_dashboard_url or (f"http://{info.dashboard_url}" if info.dashboard_url else None)
    return RayCluster(ray.get_runtime_context().gcs_address, dashboard, started_here=True)

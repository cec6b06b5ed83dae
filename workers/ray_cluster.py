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

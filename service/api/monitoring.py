"""Prometheus metrics of one app: HTTP requests (a pure ASGI middleware, so streaming responses are
untouched) and the job gauges that ``GET /metrics`` refreshes from the database at scrape time.

Each app gets its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db.states import JobState

__all__ = ["HttpMetricsMiddleware", "Telemetry"]


class Telemetry:
    """The app's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fsg_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fsg_http_request_duration_seconds",
            "time until the response headers were sent (streams keep going after)",
            ["method", "route"],
            registry=self.registry,
        )
        self.jobs = Gauge("fsg_jobs", "jobs by state, all tenants", ["state"], registry=self.registry)
        self.queue_depth = Gauge("fsg_queue_depth", "queued jobs waiting for a dispatcher", registry=self.registry)

    def render(self, jobs_by_state: Mapping[str, int]) -> bytes:
        """The exposition text, with the job gauges set from ``jobs_by_state`` (every state listed)."""
        for state in JobState:
            self.jobs.labels(state=state.value).set(jobs_by_state.get(state.value, 0))
        self.queue_depth.set(jobs_by_state.get(JobState.queued.value, 0))
        return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The matched route as a template (``/v1/jobs/{job_id}/metrics``): bounded label values.

    Rebuilt from the path and its path parameters, because an included router's route object keeps
    its own relative path; ``unmatched`` when no route matched (404s for unknown paths).
    """
    if scope.get("route") is None:
        return "unmatched"
    names = {str(value): name for name, value in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{names[part]}}}" if part in names else part for part in scope["path"].split("/"))


class HttpMetricsMiddleware:
    """Counts requests by route template, and the time until their response headers."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.telemetry.latency.labels(scope["method"], route_label(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.telemetry.requests.labels(scope["method"], route_label(scope), str(status)).inc()

"""Prometheus metrics of one app: HTTP requests (a pure ASGI middleware, so streaming responses are
untouched) and the job, queue and dispatcher gauges that ``GET /metrics`` refreshes from the database at
scrape time. The dispatchers' own counters and histograms are on their endpoint (``workers/telemetry.py``).

Each app gets its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db.models import utcnow
from service.db.states import JobState

__all__ = ["ALIVE_BEATS", "DISPATCHER_SERIES", "HttpMetricsMiddleware", "Telemetry", "dispatcher_window"]

# A dispatcher is alive while its latest heartbeat is younger than this many heartbeat periods.
ALIVE_BEATS = 3
# Label cardinality: at most this many dispatcher series per scrape (the freshest heartbeats), and only
# dispatchers heard from within ``dispatcher_window``: a crashed one shows up stale for that long, then
# drops out, so restarts (each a new owner string) do not pile up series.
DISPATCHER_SERIES = 50


def dispatcher_window(heartbeat_s: float) -> timedelta:
    """How far back a scrape looks for dispatchers: an hour, or ten heartbeats when that is longer."""
    return max(timedelta(hours=1), timedelta(seconds=10 * heartbeat_s))


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
        self.queue_oldest_age = Gauge(
            "fsg_queue_oldest_age_seconds",
            "how long the longest-waiting queued job has waited since it last entered queued (0: empty queue)",
            registry=self.registry,
        )
        self.heartbeat_age = Gauge(
            "fsg_dispatcher_heartbeat_age_seconds",
            "seconds since each running (not cleanly stopped) dispatcher's latest heartbeat",
            ["dispatcher"],
            registry=self.registry,
        )
        self.dispatchers_alive = Gauge(
            "fsg_dispatchers_alive",
            f"dispatchers whose latest heartbeat is younger than {ALIVE_BEATS} heartbeat periods",
            registry=self.registry,
        )
        # Concurrent scrapes (a threadpool) must not interleave clearing and setting the labelled gauge.
        self._render_lock = threading.Lock()

    def render(
        self,
        jobs_by_state: Mapping[str, int],
        *,
        oldest_queued_at: datetime | None = None,
        heartbeats: Sequence[tuple[str, datetime]] = (),
        heartbeat_s: float = 5.0,
        now: datetime | None = None,
    ) -> bytes:
        """The exposition text, with the gauges set from what the scrape read from the database.

        Args:
            jobs_by_state: job counts, every state listed.
            oldest_queued_at: when the longest-waiting queued job entered ``queued`` (None: empty queue).
            heartbeats: ``(owner, heartbeat_at)`` of the dispatchers not stopped, freshest first; the
                first ``DISPATCHER_SERIES`` get an age series, all count towards ``fsg_dispatchers_alive``.
            heartbeat_s: the dispatchers' heartbeat period (alive: age < ``ALIVE_BEATS`` periods).
            now: the scrape's time (default: now).
        """
        now = now or utcnow()
        ages = [(owner, max((now - beat).total_seconds(), 0.0)) for owner, beat in heartbeats]
        with self._render_lock:
            for state in JobState:
                self.jobs.labels(state=state.value).set(jobs_by_state.get(state.value, 0))
            self.queue_depth.set(jobs_by_state.get(JobState.queued.value, 0))
            waited = 0.0 if oldest_queued_at is None else (now - oldest_queued_at).total_seconds()
            self.queue_oldest_age.set(max(waited, 0.0))
            self.heartbeat_age.clear()  # dispatchers gone since the last scrape lose their series
            for owner, age in ages[:DISPATCHER_SERIES]:
                self.heartbeat_age.labels(dispatcher=owner).set(age)
            self.dispatchers_alive.set(sum(age < ALIVE_BEATS * heartbeat_s for _, age in ages))
            return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The matched route as a template (``/v1/jobs/{job_id}/metrics``): bounded label values.

    The route object of an included router keeps its template relative to the router's prefix, so the
    label is the request path's prefix (a fixed router prefix, the path minus the route's rendered
    template) followed by the template; a ``{name:path}`` parameter that spans segments stays one
    ``{name}``. ``unmatched`` when no route matched (404s for unknown paths).
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return "unmatched"
    params = scope.get("path_params") or {}
    rendered = template
    for name, value in params.items():
        rendered = rendered.replace(f"{{{name}}}", str(value))
    path = scope["path"]
    prefix = path[: len(path) - len(rendered)] if path.endswith(rendered) else ""
    return prefix + template


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
        route = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, route
            if message["type"] == "http.response.start":
                status = message["status"]
                route = route_label(scope)
                self.telemetry.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.telemetry.requests.labels(scope["method"], route or route_label(scope), str(status)).inc()

"""The dispatcher's own Prometheus metrics (served on ``FSG_DISPATCHER_METRICS_PORT`` when set) and its
heartbeat row in the database. The dispatcher calls ``DispatcherTelemetry``'s hooks; none of them may
stop it: database errors are logged and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import ParamSpec, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy.exc import SQLAlchemyError

from service.db import reads, records
from service.db.engine import Database
from service.db.models import Job, utcnow
from service.db.states import JobState
from service.settings import Settings
from workers.policy import Outcome

__all__ = [
    "DispatcherMetrics",
    "DispatcherTelemetry",
    "Heartbeat",
    "queue_to_running_s",
    "queued_since",
]

log = logging.getLogger("fsg.dispatcher.telemetry")
P = ParamSpec("P")

# Rows of dispatchers silent for longer than this are deleted when a dispatcher starts: crashed
# dispatchers never mark themselves stopped, and each start is a new owner string.
HEARTBEAT_RETENTION = timedelta(days=7)
# One claim is one short transaction: milliseconds, seconds when SQLite's writer lock is contended.
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A queue wait is a poll interval on an idle cluster and hours behind a long job.
QUEUE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class StateEvent(Protocol):
    """What ``queued_since`` reads of a ``JobEvent``."""

    @property
    def to_state(self) -> str | None: ...

    @property
    def created_at(self) -> datetime: ...


def queued_since(created_at: datetime, events: Iterable[StateEvent]) -> datetime:
    """When the job last entered ``queued``: its latest event to ``queued`` (submission, retry or
    requeue), else ``created_at`` (a job written without events)."""
    entered = [event.created_at for event in events if event.to_state == JobState.queued]
    return max(entered, default=created_at)


def queue_to_running_s(created_at: datetime, events: Iterable[StateEvent], launched_at: datetime) -> float:
    """Seconds from the job's latest entry into ``queued`` to ``launched_at`` (never negative: clocks of
    several hosts may disagree by a little)."""
    return max((launched_at - queued_since(created_at, events)).total_seconds(), 0.0)


class DispatcherMetrics:
    """The dispatcher's metrics, in a registry of their own (several dispatchers in one test process
    never collide, and the API's registry stays apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.claim_seconds = Histogram(
            "fsg_claim_seconds", "duration of one claim_next call", buckets=CLAIM_BUCKETS, registry=self.registry
        )
        self.queue_to_running_seconds = Histogram(
            "fsg_queue_to_running_seconds",
            "from a job's latest entry into queued (submission or retry) to its launch on Ray",
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.claims = Counter("fsg_claims", "jobs this dispatcher claimed", registry=self.registry)
        self.attempts_finished = Counter(
            "fsg_attempts_finished", "attempts that ended, by how", ["outcome"], registry=self.registry
        )
        for outcome in Outcome:  # every series exists from the start, at 0, so rate() sees the first one
            self.attempts_finished.labels(outcome=outcome.value)
        self.running_attempts = Gauge(
            "fsg_dispatcher_running_attempts", "attempts this dispatcher runs on Ray", registry=self.registry
        )
        self.last_heartbeat = Gauge(
            "fsg_dispatcher_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat written to the database",
            registry=self.registry,
        )


class Heartbeat:
    """Writes the dispatcher's row of the ``dispatchers`` table, at most once every ``interval_s``.

    Args:
        db: the dispatcher's database.
        owner: the dispatcher's owner string (the primary key, as in job leases).
        interval_s: the least time between two writes (``FSG_HEARTBEAT_S``).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, db: Database, owner: str, *, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db, self.owner, self.interval_s, self.clock = db, owner, interval_s, clock
        self.hostname, self.pid = socket.gethostname(), os.getpid()
        self.started_at = utcnow()
        self.last_written: float | None = None  # wall time (time.time()) of the last successful write
        self._last_try: float | None = None

    def beat(
        self, *, running_attempts: int, claims: int, cluster: tuple[float, float] | None = None, force: bool = False
    ) -> bool:
        """Write the row unless the last try was under ``interval_s`` ago (``force``: write anyway), with
        the Ray cluster's totals (CPUs, GPUs) when given.

        A failed write is logged, and the next try waits ``interval_s`` too, so an unreachable
        database costs one attempt per interval rather than one per loop.

        Returns:
            True when the row was written now.
        """
        now = self.clock()
        if not force and self._last_try is not None and now - self._last_try < self.interval_s:
            return False
        self._last_try = now
        try:
            with self.db.write() as session:
                records.record_heartbeat(
                    session,
                    owner=self.owner,
                    hostname=self.hostname,
                    pid=self.pid,
                    started_at=self.started_at,
                    running_attempts=running_attempts,
                    claims=claims,
                    cluster=cluster,
                )
        except SQLAlchemyError as exc:
            log.warning("heartbeat not written: %s", _first_line(exc), extra={"dispatcher": self.owner})
            return False
        self.last_written = time.time()
        return True

    def prune(self) -> None:
        """Delete the rows of dispatchers silent for longer than ``HEARTBEAT_RETENTION``."""
        try:
            with self.db.write() as session:
                records.prune_heartbeats(session, older_than=utcnow() - HEARTBEAT_RETENTION)
        except SQLAlchemyError as exc:
            log.warning("old heartbeats not pruned: %s", _first_line(exc), extra={"dispatcher": self.owner})

    def stop(self) -> bool:
        """Mark the row stopped (a clean shutdown: ``/metrics`` no longer reports this dispatcher).

        Returns:
            True when the row was marked.
        """
        try:
            with self.db.write() as session:
                return records.record_stopped(session, self.owner)
        except SQLAlchemyError as exc:
            log.warning("stop not recorded: %s", _first_line(exc), extra={"dispatcher": self.owner})
            return False


class _DispatcherContext(logging.Filter):
    """Adds ``dispatcher=<owner>`` to the dispatcher logger's records (the JSON and text formatters show
    it). One dispatcher per process is the deployment; in a test process running several, a record keeps
    the first owner that was set."""

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "dispatcher", None) is None:
            record.dispatcher = self.owner
        return True


class DispatcherTelemetry:
    """What the dispatcher's hooks call: metrics, the heartbeat and the metrics endpoint.

    Args:
        settings: ``heartbeat_s``, ``dispatcher_metrics_port`` and the host to serve on (``api_host``).
        db: the dispatcher's database.
        owner: the dispatcher's owner string.
    """

    def __init__(self, settings: Settings, db: Database, owner: str) -> None:
        self.settings, self.db, self.owner = settings, db, owner
        self.metrics = DispatcherMetrics()
        self.heartbeat = Heartbeat(db, owner, interval_s=settings.heartbeat_s)
        self.claims = 0
        self.running_attempts = 0
        self.server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._log_context = _DispatcherContext(owner)

    @property
    def metrics_port(self) -> int | None:
        """The port the endpoint listens on (the bound one when 0 was asked), None when it is off."""
        return None if self.server is None else int(self.server.server_port)

    # --- hooks ----------------------------------------------------------------------------------
    def start(self, *, cluster: tuple[float, float] | None = None) -> None:
        """Serve the metrics (when a port is set), prune old heartbeats and write the first one."""
        logging.getLogger("fsg.dispatcher").addFilter(self._log_context)
        port = self.settings.dispatcher_metrics_port
        if port is not None and self.server is None:
            self.server, self._server_thread = start_http_server(
                port, addr=self.settings.api_host, registry=self.metrics.registry
            )
            log.info("metrics on http://%s:%d/metrics", self.settings.api_host, self.metrics_port)
        self.heartbeat.prune()
        self.tick(self.running_attempts, cluster=cluster, force=True)

    def tick(self, running_attempts: int, *, cluster: tuple[float, float] | None = None, force: bool = False) -> None:
        """Once per loop: the running-attempts gauge, and the heartbeat (with the cluster's totals) when due."""
        self.running_attempts = running_attempts
        self.metrics.running_attempts.set(running_attempts)
        if self.heartbeat.beat(running_attempts=running_attempts, claims=self.claims, cluster=cluster, force=force):
            assert self.heartbeat.last_written is not None
            self.metrics.last_heartbeat.set(self.heartbeat.last_written)

    def claim(self, claim_next: Callable[P, Job | None], *args: P.args, **kwargs: P.kwargs) -> Job | None:
        """Call ``claim_next(*args, **kwargs)``, timing it (``fsg_claim_seconds``, failures included)
        and counting a claimed job (``fsg_claims_total``)."""
        with self.metrics.claim_seconds.time():  # observes in a finally: failures count too
            job = claim_next(*args, **kwargs)
        if job is not None:
            self.claims += 1
            self.metrics.claims.inc()
        return job

    def observe_launch(self, job: Job, launched_at: datetime) -> float | None:
        """Observe the job's queue-to-running time (``launched_at``: when it went to Ray).

        Returns:
            The seconds observed, None when its events could not be read (logged).
        """
        try:
            with self.db.read() as session:
                events = reads.state_events(session, job.id)
        except SQLAlchemyError as exc:
            log.warning("queue time of job %s not observed: %s", job.id, _first_line(exc), extra={"job_id": job.id})
            return None
        waited = queue_to_running_s(job.created_at, events, launched_at)
        self.metrics.queue_to_running_seconds.observe(waited)
        return waited

    def observe_finish(self, outcome: Outcome) -> None:
        """Count an attempt that ended (``fsg_attempts_finished_total{outcome}``)."""
        self.metrics.attempts_finished.labels(outcome=Outcome(outcome).value).inc()

    def stop(self) -> None:
        """Mark the heartbeat row stopped and close the metrics endpoint."""
        self.running_attempts = 0
        self.metrics.running_attempts.set(0)
        self.heartbeat.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(timeout=5)
            self.server, self._server_thread = None, None
        logging.getLogger("fsg.dispatcher").removeFilter(self._log_context)


def _first_line(exc: BaseException) -> str:
    """An exception's first line: SQLAlchemy appends the statement and a link, noise in a warning."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

"""The dispatcher's telemetry without Ray: queue-to-running from events, the metrics each hook moves
(read back from its registry), the heartbeat row on a real SQLite file, and the metrics endpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from service.db import queue
from service.db.engine import Database
from service.db.migrate import upgrade
from service.db.models import DispatcherHeartbeat, Job, JobEvent
from service.settings import Settings
from tests.service.db.conftest import job_spec
from workers.policy import Outcome
from workers.telemetry import DispatcherTelemetry, Heartbeat, queue_to_running_s, queued_since

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Event:
    to_state: str | None
    created_at: datetime


# --- queue-to-running, from constructed events ------------------------------------------------------


def test_a_first_attempt_waits_from_its_submission() -> None:
    events = [Event("queued", at(0)), Event("dispatching", at(7))]
    assert queued_since(at(0), events) == at(0)
    assert queue_to_running_s(at(0), events, launched_at=at(8.5)) == 8.5


def test_a_retried_job_waits_from_its_latest_requeue() -> None:
    events = [
        Event("queued", at(0)),
        Event("dispatching", at(1)),
        Event("running", at(2)),
        Event("retrying", at(50)),
        Event("queued", at(50)),
        Event("dispatching", at(61)),
        Event("retrying", at(62)),  # a dispatcher stopped: requeued again
        Event("queued", at(62)),
        Event(None, at(63)),  # a metric or checkpoint event has no state
        Event("dispatching", at(70)),
    ]
    assert queued_since(at(0), events) == at(62)
    assert queue_to_running_s(at(0), events, launched_at=at(72)) == 10


def test_without_events_the_wait_counts_from_created_at_and_is_never_negative() -> None:
    assert queue_to_running_s(at(5), [], launched_at=at(9)) == 4
    # Another host's clock a little ahead: a launch "before" the submission is a zero wait.
    assert queue_to_running_s(at(5), [Event("queued", at(10))], launched_at=at(9)) == 0


# --- hooks and their metrics ------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'fsg.db'}"
    upgrade(url)
    database = Database.from_url(url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def telemetry(tmp_path: Path, db: Database) -> DispatcherTelemetry:
    return DispatcherTelemetry(Settings(home=tmp_path / "home", heartbeat_s=5), db, "host:1:abcdef")


def value(telemetry: DispatcherTelemetry, name: str, **labels: str) -> float:
    found = telemetry.metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} is not in the registry"
    return found


def test_claim_is_timed_and_a_claimed_job_counted(telemetry: DispatcherTelemetry) -> None:
    job = Job(id="j1")

    def claim_next(db: str, *, owner: str) -> Job | None:
        return job if (db, owner) == ("db", "me") else None

    assert telemetry.claim(claim_next, "db", owner="me") is job
    assert telemetry.claim(lambda: None) is None
    assert value(telemetry, "fsg_claim_seconds_count") == 2
    assert value(telemetry, "fsg_claim_seconds_sum") >= 0
    assert value(telemetry, "fsg_claims_total") == 1
    assert telemetry.claims == 1


def test_a_failed_claim_is_timed_and_not_counted(telemetry: DispatcherTelemetry) -> None:
    def broken() -> Job | None:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError):
        telemetry.claim(broken)
    assert value(telemetry, "fsg_claim_seconds_count") == 1
    assert value(telemetry, "fsg_claims_total") == 0


def test_launch_observes_the_queue_wait_from_the_jobs_events(telemetry: DispatcherTelemetry, db: Database) -> None:
    with db.write() as session:
        job, _ = queue.enqueue(session, tenant="t", spec=job_spec())
        session.execute(update(JobEvent).where(JobEvent.job_id == job.id).values(created_at=at(0)))
    claimed = queue.claim_next(db, owner="host:1:abcdef", lease_s=30, free_cpus=8, free_gpus=0)
    assert claimed is not None
    assert telemetry.observe_launch(claimed, launched_at=at(42)) == 42
    assert value(telemetry, "fsg_queue_to_running_seconds_count") == 1
    assert value(telemetry, "fsg_queue_to_running_seconds_sum") == 42
    assert value(telemetry, "fsg_queue_to_running_seconds_bucket", le="30.0") == 0
    assert value(telemetry, "fsg_queue_to_running_seconds_bucket", le="60.0") == 1


def test_finished_attempts_are_counted_by_outcome(telemetry: DispatcherTelemetry) -> None:
    for outcome in (Outcome.succeeded, Outcome.failed, Outcome.failed, Outcome.timed_out):
        telemetry.observe_finish(outcome)
    counts = {o.value: value(telemetry, "fsg_attempts_finished_total", outcome=o.value) for o in Outcome}
    assert counts == {"succeeded": 1, "failed": 2, "cancelled": 0, "timed_out": 1}


# --- the heartbeat ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def row(db: Database, owner: str) -> DispatcherHeartbeat | None:
    with db.read() as session:
        return session.get(DispatcherHeartbeat, owner)


def test_heartbeat_writes_at_most_once_per_interval(db: Database) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(db, "d1", interval_s=5, clock=clock)
    assert heartbeat.beat(running_attempts=0, claims=0) is True
    first = row(db, "d1")
    assert first is not None and first.claims == 0
    clock.now += 4.9
    assert heartbeat.beat(running_attempts=2, claims=3) is False  # too soon: nothing written
    assert heartbeat.beat(running_attempts=2, claims=3, force=True) is True
    clock.now += 5
    assert heartbeat.beat(running_attempts=1, claims=4) is True
    latest = row(db, "d1")
    assert latest is not None
    assert (latest.running_attempts, latest.claims, latest.stopped_at) == (1, 4, None)
    assert latest.heartbeat_at >= first.heartbeat_at
    assert latest.started_at == first.started_at
    assert heartbeat.stop() is True
    stopped = row(db, "d1")
    assert stopped is not None and stopped.stopped_at is not None


def test_a_heartbeat_never_raises_for_the_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "db").mkdir()  # a directory where the SQLite file should be: every connection fails
    broken = Database.from_url(f"sqlite:///{tmp_path / 'db'}")
    try:
        telemetry = DispatcherTelemetry(Settings(home=tmp_path / "home"), broken, "d1")
        with caplog.at_level(logging.WARNING, logger="fsg.dispatcher.telemetry"):
            telemetry.start()
            telemetry.tick(3, force=True)
            telemetry.stop()
        assert "heartbeat not written" in caplog.text and "stop not recorded" in caplog.text
        assert telemetry.heartbeat.last_written is None
        assert value(telemetry, "fsg_dispatcher_last_heartbeat_timestamp_seconds") == 0
    finally:
        broken.dispose()


def test_hooks_set_the_gauges_and_the_heartbeat_row(telemetry: DispatcherTelemetry, db: Database) -> None:
    telemetry.start()
    assert value(telemetry, "fsg_dispatcher_last_heartbeat_timestamp_seconds") > 0
    telemetry.claim(lambda: Job(id="j"))
    telemetry.tick(2, force=True)
    assert value(telemetry, "fsg_dispatcher_running_attempts") == 2
    written = row(db, "host:1:abcdef")
    assert written is not None and (written.running_attempts, written.claims) == (2, 1)
    telemetry.stop()
    assert value(telemetry, "fsg_dispatcher_running_attempts") == 0
    stopped = row(db, "host:1:abcdef")
    assert stopped is not None and stopped.stopped_at is not None


def test_start_prunes_long_silent_dispatchers(telemetry: DispatcherTelemetry, db: Database) -> None:
    Heartbeat(db, "crashed-last-month", interval_s=5).beat(running_attempts=1, claims=9)
    with db.write() as session:
        session.execute(update(DispatcherHeartbeat).values(heartbeat_at=datetime.now(UTC) - timedelta(days=30)))
    telemetry.start()
    assert row(db, "crashed-last-month") is None
    assert row(db, "host:1:abcdef") is not None
    telemetry.stop()


# --- the endpoint and the log context ---------------------------------------------------------------


def test_the_metrics_endpoint_serves_the_registry(tmp_path: Path, db: Database) -> None:
    settings = Settings(home=tmp_path / "home", dispatcher_metrics_port=0)  # 0: any free port
    telemetry = DispatcherTelemetry(settings, db, "d1")
    assert telemetry.metrics_port is None
    telemetry.start()
    try:
        port = telemetry.metrics_port
        assert port
        telemetry.observe_finish(Outcome.succeeded)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'fsg_attempts_finished_total{outcome="succeeded"} 1.0' in text
        assert "fsg_claim_seconds_bucket" in text and "fsg_queue_to_running_seconds_bucket" in text
    finally:
        telemetry.stop()
    assert telemetry.metrics_port is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_dispatcher_log_records_carry_the_owner_while_started(
    telemetry: DispatcherTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("fsg.dispatcher")
    with caplog.at_level(logging.INFO, logger="fsg.dispatcher"):
        telemetry.start()
        logger.info("job x launched", extra={"job_id": "x", "attempt": 1})
        telemetry.stop()
        logger.info("after stop")
    during, after = (r for r in caplog.records if r.name == "fsg.dispatcher")
    assert (during.dispatcher, during.job_id, during.attempt) == ("host:1:abcdef", "x", 1)  # type: ignore[attr-defined]
    assert not hasattr(after, "dispatcher")

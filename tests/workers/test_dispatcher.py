"""The dispatcher's tick on a real SQLite queue with Ray replaced by a script: one job's trouble ends or
retries that job alone, and the loop goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from service.db import queue, tenants
from service.db.engine import Database
from service.db.migrate import upgrade
from service.db.models import Job, utcnow
from service.db.states import Decision, Fate
from service.settings import Settings
from tests.service.db.conftest import job_spec
from tests.workers.test_policy import _infrastructure, _non_retryable, _ray_task_error
from workers import dispatcher as dispatcher_module
from workers.dispatcher import Dispatcher
from workers.runner import AttemptCancelled


@dataclass
class ScriptedRunner:
    """A ``workers.runner.Runner`` driven by the test: launched attempts, their results (a summary, or an
    exception to raise, as Ray would), stops, refusals at launch, and the cluster's size."""

    cpus: float = 8.0
    results: dict[str, Any] = field(default_factory=dict)  # handle (the job id) -> summary or exception
    refuse: dict[str, BaseException] = field(default_factory=dict)  # task name fragment -> error at start
    launched: list[str] = field(default_factory=list)
    held: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # job id -> its task's CPUs, GPUs
    cancelled: list[str] = field(default_factory=list)
    started_here: bool = False
    releases: list[int] = field(default_factory=list)  # created_before_ns of each release_leaked call
    release_error: BaseException | None = None

    def start(self, ctx: Any, *, name: str, num_cpus: float | None, num_gpus: float | None) -> str:
        for fragment, error in self.refuse.items():
            if fragment in name:
                raise error
        self.launched.append(ctx.job_id)
        self.held[ctx.job_id] = (num_cpus, num_gpus)
        return str(ctx.job_id)  # the handle is the job id

    def finished(self, handles: list[str]) -> list[str]:
        return [h for h in handles if h in self.results]

    def result(self, handle: str) -> dict[str, Any]:
        value = self.results[handle]
        if isinstance(value, BaseException):
            raise value
        return dict(value)

    def stop(self, handle: str, *, force: bool = False) -> None:
        self.cancelled.append(handle)

    def wait(self, handle: str, timeout_s: float) -> None:
        pass

    def free(self) -> tuple[float, float]:
        return self.cpus, 0.0

    def total(self) -> tuple[float, float]:
        return self.cpus, 0.0

    def run_url(self, handle: str) -> str:
        return f"http://ray/#/jobs/01000000/tasks/task-of-{handle}-{self.launched.count(handle)}"

    def release_leaked(self, created_before_ns: int) -> list[str]:
        self.releases.append(created_before_ns)
        if self.release_error is not None:
            raise self.release_error
        return ["pg"]


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def dispatcher(tmp_path: Path, runner: ScriptedRunner) -> Iterator[Dispatcher]:
    url = f"sqlite:///{tmp_path / 'fsg.db'}"
    upgrade(url)
    settings = Settings(home=tmp_path, database_url=url, lease_s=30, poll_interval_s=0.1)
    db = Database.from_url(url)
    d = Dispatcher(settings, db, owner="test-dispatcher", runner=runner)
    try:
        yield d
    finally:
        db.dispose()


def submit(d: Dispatcher, tenant: str = "t", **overrides: Any) -> str:
    with d.db.write() as session:
        job, _ = queue.enqueue(session, tenant=tenant, spec=job_spec(**overrides))
        return job.id


def state(d: Dispatcher, job_id: str) -> tuple[str, str | None, int]:
    with d.db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return str(job.state), job.error, job.attempts


def test_a_job_that_succeeds_records_its_summary(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    job = submit(dispatcher)
    dispatcher.tick()
    assert runner.launched == [job] and state(dispatcher, job)[0] == "running"
    with dispatcher.db.read() as session:  # the attempt's own dashboard page, from the runner's handle
        assert session.get(Job, job).ray_run_url == f"http://ray/#/jobs/01000000/tasks/task-of-{job}-1"
    runner.results[job] = {"best_val_acc": 0.9}
    dispatcher.tick()
    assert state(dispatcher, job)[0] == "succeeded"


@pytest.mark.parametrize("which", range(6))
def test_an_error_of_the_job_itself_fails_it_at_once_and_the_next_job_runs(
    dispatcher: Dispatcher, runner: ScriptedRunner, which: int
) -> None:
    error = _non_retryable()[which]
    bad = submit(dispatcher, max_retries=3)
    dispatcher.tick()
    runner.results[bad] = _ray_task_error(error)
    good = submit(dispatcher)
    dispatcher.tick()  # finishes the bad one, launches the good one
    status, message, attempts = state(dispatcher, bad)
    assert (status, attempts) == ("failed", 1)  # no retry, although 3 were allowed
    assert message is not None and message.startswith(type(error).__name__) and "Traceback" not in message
    assert runner.launched == [bad, good]


@pytest.mark.parametrize("which", range(7))
def test_an_infrastructure_error_retries_the_job_and_then_fails_it(
    dispatcher: Dispatcher, runner: ScriptedRunner, which: int
) -> None:
    error = _infrastructure()[which]
    job = submit(dispatcher, max_retries=1)
    dispatcher.tick()
    runner.results[job] = error
    dispatcher.tick()  # attempt 1 failed: back to the queue, and claimed again in the same tick
    assert state(dispatcher, job)[:1] == ("running",) and state(dispatcher, job)[2] == 2
    assert runner.launched == [job, job]
    dispatcher.tick()  # attempt 2 fails the same way: no retries left
    status, message, attempts = state(dispatcher, job)
    assert (status, attempts) == ("failed", 2) and message is not None and type(error).__name__ in message


def test_a_launch_ray_refuses_ends_that_job_and_the_loop_goes_on(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    bad = submit(dispatcher, max_retries=0)
    runner.refuse[bad] = ValueError("The precision of the fractional quantity of resource CPU cannot go beyond 0.0001")
    good = submit(dispatcher)
    dispatcher.tick()
    status, message, _ = state(dispatcher, bad)
    assert status == "failed" and message is not None and "0.0001" in message
    assert state(dispatcher, good)[0] == "running" and runner.launched == [good]


def test_a_stored_spec_that_no_longer_validates_fails_naming_the_field(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    bad = submit(dispatcher, max_retries=2)
    with dispatcher.db.write() as session:
        job = session.get(Job, bad)
        assert job is not None
        session.execute(update(Job).where(Job.id == bad).values(spec={**job.spec, "data": {"root": "a" * 300}}))
    good = submit(dispatcher)
    dispatcher.tick()
    status, message, attempts = state(dispatcher, bad)
    assert (status, attempts) == ("failed", 1)  # not retried: the spec will not get better
    assert message is not None and "data.root" in message and "SpecError" in message
    assert runner.launched == [good]


def test_a_data_root_the_file_system_refuses_fails_the_job(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_long(self: Path) -> bool:
        raise OSError(36, "File name too long")

    monkeypatch.setattr(dispatcher_module.Path, "exists", too_long)
    problem = dispatcher._preflight(job_spec(data={"dataset": "digits", "root": "/data/x"}))
    assert problem is not None and "data.root" in problem and "File name too long" in problem


def test_the_tick_survives_an_unexpected_error_and_still_dispatches(
    dispatcher: Dispatcher, runner: ScriptedRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def watch() -> None:
        raise RuntimeError("a bug in watch")

    monkeypatch.setattr(dispatcher, "watch", watch)
    job = submit(dispatcher)
    with caplog.at_level(logging.ERROR, logger="fsg.dispatcher"):
        dispatcher.tick()
    assert "dispatcher watch failed" in caplog.text
    assert runner.launched == [job]  # the phases after the broken one still ran


def test_one_attempt_whose_bookkeeping_fails_does_not_stall_the_others(
    dispatcher: Dispatcher, runner: ScriptedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = submit(dispatcher), submit(dispatcher)
    dispatcher.tick()
    runner.results[a] = {"ok": 1}
    runner.results[b] = {"ok": 2}
    real_finish = dispatcher.finish

    def finish(attempt: Any) -> None:
        if attempt.job_id == a:
            raise RuntimeError("summary could not be written")
        real_finish(attempt)

    monkeypatch.setattr(dispatcher, "finish", finish)
    dispatcher.tick()
    assert state(dispatcher, b)[0] == "succeeded"
    assert a not in dispatcher.attempts  # left to its lease: a reap settles it


# -- admission, backfill, fair share ------------------------------------------------------------


def test_a_job_no_cluster_can_hold_fails_naming_the_resource(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    huge = submit(dispatcher, cpus=64)
    small = submit(dispatcher)
    dispatcher.tick()  # the heartbeat publishes 8 CPUs; the admission pass refuses what can never fit
    status, message, attempts = state(dispatcher, huge)
    assert (status, attempts) == ("failed", 0)
    assert message is not None and "needs 64 CPUs" in message and "8 CPUs and 0 GPUs" in message
    assert runner.launched == [small]


def test_a_big_job_that_fits_later_does_not_hold_back_another_tenants_small_job(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    runner.cpus = 4
    running = submit(dispatcher, tenant="a", cpus=2)
    dispatcher.tick()
    big = submit(dispatcher, tenant="a", cpus=4, priority=1000)
    small = submit(dispatcher, tenant="b", cpus=1)
    dispatcher.tick()
    assert runner.launched == [running, small]  # within one tick, beside the waiting big job
    assert state(dispatcher, big)[0] == "queued"
    runner.results[running] = {}
    runner.results[small] = {}
    dispatcher.tick()
    assert state(dispatcher, big)[0] == "running"


def test_a_big_job_that_waited_long_stops_smaller_jobs_from_passing_it(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    runner.cpus = 4
    running = submit(dispatcher, tenant="a", cpus=2)
    dispatcher.tick()
    big = submit(dispatcher, tenant="a", cpus=4, priority=1000)
    with dispatcher.db.write() as session:  # queued for longer than reserve_after_s (600 s)
        session.execute(update(Job).where(Job.id == big).values(updated_at=utcnow() - timedelta(seconds=601)))
    small = submit(dispatcher, tenant="b", cpus=1)
    dispatcher.tick()
    assert runner.launched == [running]  # 2 CPUs free, but held for the big job
    runner.results[running] = {}
    dispatcher.tick()
    assert runner.launched == [running, big] and state(dispatcher, small)[0] == "queued"


def test_fair_share_the_second_tenant_gets_the_next_free_slot(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    runner.cpus = 2
    a_jobs = [submit(dispatcher, tenant="a") for _ in range(20)]
    dispatcher.tick()
    assert runner.launched == a_jobs[:2]
    b_jobs = [submit(dispatcher, tenant="b") for _ in range(2)]
    runner.results[a_jobs[0]] = {}
    dispatcher.tick()
    assert runner.launched[2] == b_jobs[0]  # not a's third, although it is older
    runner.results[a_jobs[1]] = {}
    dispatcher.tick()
    assert runner.launched[3] == a_jobs[2]  # a and b hold one slot each: equal shares, then age


def test_a_tenant_quota_holds_its_jobs_back_and_lets_others_run(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    dispatcher.settings = dispatcher.settings.model_copy(update={"tenant_max_running": 1})
    a_jobs = [submit(dispatcher, tenant="a") for _ in range(3)]
    b_job = submit(dispatcher, tenant="b")
    dispatcher.tick()
    assert runner.launched == [a_jobs[0], b_job]
    with dispatcher.db.write() as session:
        tenants.set_quota(session, "a", max_running=2)
    dispatcher.tick()
    assert runner.launched == [a_jobs[0], b_job, a_jobs[1]]


# -- leases, cancels, timeouts, shutdown ---------------------------------------------------------


def test_a_dead_dispatchers_expired_lease_is_reaped_and_its_job_resumes_here(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    job = submit(dispatcher, max_retries=1)
    assert queue.claim_next(dispatcher.db, owner="dead", lease_s=30, free_cpus=8, free_gpus=0) is not None
    with dispatcher.db.write() as session:  # its dispatcher stopped renewing a while ago
        session.execute(update(Job).where(Job.id == job).values(lease_until=utcnow() - timedelta(seconds=1)))
    dispatcher.tick()  # reaped (retry), then claimed again here as attempt 2
    status, _, attempts = state(dispatcher, job)
    assert (status, attempts) == ("running", 2) and runner.launched == [job]


def test_a_cancel_stops_the_attempt_and_ends_the_job_cancelled(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    job = submit(dispatcher)
    dispatcher.tick()
    with dispatcher.db.write() as session:
        row = session.get(Job, job)
        assert row is not None
        queue.request_cancel(session, row)
    dispatcher.tick()
    assert runner.cancelled == [job] and state(dispatcher, job)[0] == "cancelling"
    runner.results[job] = AttemptCancelled()
    dispatcher.tick()
    assert state(dispatcher, job)[0] == "cancelled"


def test_an_attempt_that_finished_before_the_cancel_landed_succeeds(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    job = submit(dispatcher)
    dispatcher.tick()
    runner.results[job] = {"best_val_acc": 0.5}
    with dispatcher.db.write() as session:
        row = session.get(Job, job)
        assert row is not None
        queue.request_cancel(session, row)
    dispatcher.tick()
    assert state(dispatcher, job)[0] == "succeeded" and runner.cancelled == []


def test_a_timed_out_attempt_is_stopped_and_retried(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    job = submit(dispatcher, max_retries=1, timeout_s=1)
    dispatcher.tick()
    dispatcher.attempts[job].started = utcnow() - timedelta(seconds=5)
    dispatcher.tick()
    assert runner.cancelled == [job]
    runner.results[job] = RuntimeError("interrupted on the way out")  # not the job's error: we stopped it
    dispatcher.tick()
    status, message, attempts = state(dispatcher, job)
    assert (status, attempts) == ("running", 2)  # retried, and claimed again
    assert message == "attempt 1 exceeded timeout_s=1"


def test_a_lost_lease_stops_our_attempt_at_once(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    job = submit(dispatcher, max_retries=2)
    dispatcher.tick()
    with dispatcher.db.write() as session:  # another dispatcher reaped it during our database outage
        row = session.get(Job, job)
        assert row is not None
        queue.apply(session, row, Decision(Fate.retry, "lease of test-dispatcher expired"))
    dispatcher.attempts[job].last_renewal = utcnow() - timedelta(seconds=60)
    dispatcher.tick()  # the renewal finds the lease gone: attempt 1 is killed; the requeued job is claimed anew
    assert runner.cancelled == [job] and dispatcher.attempts[job].number == 2
    assert state(dispatcher, job)[2] == 2


def test_shutdown_gives_running_jobs_back_without_counting_the_attempt(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    running, cancelling = submit(dispatcher), submit(dispatcher)
    dispatcher.tick()
    with dispatcher.db.write() as session:
        row = session.get(Job, cancelling)
        assert row is not None
        queue.request_cancel(session, row)
    dispatcher.shutdown(timeout_s=0)
    assert sorted(runner.cancelled) == sorted([running, cancelling])
    assert state(dispatcher, running)[0::2] == ("queued", 0)
    assert state(dispatcher, cancelling)[0] == "cancelled"


def test_only_placement_groups_older_than_every_live_attempt_are_released(
    dispatcher: Dispatcher, runner: ScriptedRunner
) -> None:
    margin = dispatcher_module.RELEASE_MARGIN_NS
    before = time.time_ns()
    assert dispatcher.release_leaked() == ["pg"] and runner.releases[-1] >= before - margin  # no attempt: all ours
    first = submit(dispatcher)
    dispatcher.tick()
    second = submit(dispatcher)
    dispatcher.tick()
    launched = {job: dispatcher.attempts[job].launched_ns for job in (first, second)}
    assert before <= launched[first] <= launched[second]
    dispatcher.release_leaked()
    assert runner.releases[-1] == launched[first] - margin  # a group newer than the oldest live attempt may be its
    runner.results[first] = {"best_val_acc": 0.5}
    dispatcher.tick()
    dispatcher.release_leaked()
    assert runner.releases[-1] == launched[second] - margin
    runner.release_error = ConnectionError("the dashboard is restarting")
    assert dispatcher.release_leaked() == []  # logged; the next pass tries again


def test_only_a_ray_task_train_jobs_attempt_holds_the_jobs_cpus(dispatcher: Dispatcher, runner: ScriptedRunner) -> None:
    """A ``ray_task`` train job trains in its attempt's task, which holds its CPUs; a ``ray_task`` study's
    attempt only drives Tune (its trials hold them): were it to hold a CPU too, the trials would wait for it."""
    task = {"num_workers": 1, "executor": "ray_task", "cpus_per_worker": 1.5}
    train = submit(dispatcher, resources=task)
    variants = [{"name": "ste", "estimator": {"name": "ste"}}, {"name": "approx", "estimator": {"name": "approx_sign"}}]
    study = submit(dispatcher, kind="study", resources=task, study={"variants": variants, "seeds": 2})
    plain = submit(dispatcher)
    dispatcher.tick()
    assert set(runner.launched) == {train, study, plain}
    assert runner.held == {train: (1.5, 0), study: (None, None), plain: (None, None)}

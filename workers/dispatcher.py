"""The dispatcher: claims queued jobs, runs each attempt on Ray, and writes back what happened.

One loop, ``tick()`` after ``tick()``: reap expired leases (jobs of dead dispatchers go back to
the queue) -> watch running attempts (finished? cancel requested? timed out? renew the lease) ->
claim and launch while Ray has room. Decisions come from ``workers.policy``; ``service.db.queue``
applies them (and holds every query the dispatcher runs); Ray is behind ``workers.runner``. An attempt
is a zero-CPU Ray task (``job_runner.run_job``) owned by this process: if the dispatcher dies, Ray
ends its attempts with it, and once the lease expires another dispatcher resumes the job from its
latest checkpoint. Whatever goes wrong with one job ends or retries that job alone: the loop serves
every tenant and never dies of a job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from fsg_core.checkpoint_dir import read_checkpoint_dir
from fsg_core.errors import SpecError
from service.db import queue, reads, records, tenants
from service.db.engine import UNAVAILABLE, Database
from service.db.models import Job, utcnow
from service.db.states import Decision, Fate, JobState
from service.schemas.jobs import JobSpec
from service.settings import Settings
from service.storage import Storage
from workers import policy
from workers.attempt import AttemptContext, JobLog
from workers.ray_cluster import connect
from workers.runner import AttemptCancelled, RayRunner, Runner
from workers.telemetry import DispatcherTelemetry

__all__ = ["Dispatcher", "main"]

log = logging.getLogger("fsg.dispatcher")
# Ray's head stamps a placement group's creation with its own clock; this much skew between it and the
# dispatcher's host cannot make a live attempt's group look older than the attempt.
RELEASE_MARGIN_NS = 30 * 10**9


@dataclass
class Attempt:
    job_id: str
    number: int
    ref: Any
    cpus: float
    gpus: float
    started: datetime
    timeout_s: float | None
    last_renewal: datetime
    stopping: policy.Outcome | None = None  # set when we asked Ray to stop it (cancel or timeout)
    stop_sent_at: float | None = None
    launched_ns: int = 0  # wall clock just before the launch: what it creates on Ray is newer
    extra: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    """Runs queued jobs on Ray. Create it in the main thread; call ``run()`` (or ``tick()`` in tests)."""

    def __init__(
        self,
        settings: Settings,
        db: Database | None = None,
        *,
        owner: str | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.settings = settings
        self.db = db or Database.from_url(settings.resolved_database_url)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.attempts: dict[str, Attempt] = {}
        self.runner = runner  # set by start() (Ray); tests pass a scripted one
        self._last_reap = 0.0
        self.stop_event = threading.Event()
        self.telemetry = DispatcherTelemetry(settings, self.db, self.owner)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Runner:
        """Connect to (or start) Ray and reclaim jobs whose dispatcher died."""
        if self.runner is None:
            cluster = connect(self.settings)
            # Tell the API where Ray is (readiness, dashboard links).
            Storage(self.settings.resolved_artifacts_dir).write_ray_record(
                {"address": cluster.address, "dashboard_url": cluster.dashboard_url}
            )
            self.runner = RayRunner(cluster)
            log.info("dispatcher %s on Ray %s", self.owner, cluster.address)
            if cluster.dashboard_url:
                log.info(
                    "Ray dashboard %s (it asks for Ray's token: `ray get-auth-token` prints it)", cluster.dashboard_url
                )
        self.reap()
        self.telemetry.start(cluster=self._totals())  # metrics endpoint (when configured), the first heartbeat
        log.info("dispatcher %s ready", self.owner)
        return self.runner

    @property
    def _runner(self) -> Runner:
        assert self.runner is not None, "start() the dispatcher first"
        return self.runner

    def run(self) -> None:
        """Tick until ``stop_event`` is set (SIGTERM/SIGINT when run by ``main``), then shut down."""
        if self.runner is None:
            self.start()
        try:
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(self.settings.poll_interval_s)
        finally:
            self.shutdown()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop our attempts and give their jobs back to the queue (they resume later)."""
        for attempt in list(self.attempts.values()):
            self._runner.stop(attempt.ref)
        deadline = time.monotonic() + timeout_s
        for attempt in list(self.attempts.values()):
            try:
                self._runner.wait(attempt.ref, deadline - time.monotonic())
            except Exception:  # noqa: BLE001 - shutting down: nothing more to do with it
                pass

            def give_back(session: Session, job_id: str = attempt.job_id) -> None:
                job = queue.lock_owned(session, job_id, self.owner)
                if job is not None and job.state in (JobState.dispatching, JobState.running, JobState.cancelling):
                    queue.apply(session, job, policy.on_shutdown(owner=self.owner, state=job.state))

            try:
                self.db.retrying(give_back, within_s=10)
            except UNAVAILABLE:
                log.warning(
                    "database unavailable: job %s is given back when its lease expires",
                    attempt.job_id,
                    extra={"job_id": attempt.job_id, "attempt": attempt.number},
                )
        self.attempts.clear()
        self.telemetry.stop()  # heartbeat row marked stopped, metrics endpoint closed
        if self.runner is not None and self.runner.started_here:
            Storage(self.settings.resolved_artifacts_dir).clear_ray_record()

    # --- one iteration --------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass; a database outage skips the rest of the pass (attempts keep running on Ray, and
        their verdicts wait in ``self.attempts`` until the database answers again)."""
        # Heartbeat when due, with the cluster's totals (the API's admission); never raises for the database.
        self.telemetry.tick(len(self.attempts), cluster=self._totals())
        for phase in (self.watch, self._reap_when_due, self.dispatch):
            try:
                phase()
            except UNAVAILABLE as exc:
                log.warning("database unavailable (%s); retrying next tick", type(exc).__name__)
                return
            except Exception:  # noqa: BLE001 - the loop serves every tenant: log it, go on with the next phase
                log.exception("dispatcher %s failed; going on", phase.__name__.strip("_"))

    def _reap_when_due(self) -> None:
        if time.monotonic() - self._last_reap >= self.settings.lease_s / 2:
            self.reap()
            self.refuse_unfittable()
            self.release_leaked()

    def release_leaked(self) -> list[str]:
        """Free what ended attempts of this dispatcher left on Ray: placement groups older than every live
        attempt (a killed attempt's Train and Tune runs never remove theirs; ``Runner.release_leaked``)."""
        oldest_live = min((a.launched_ns for a in self.attempts.values()), default=time.time_ns())
        try:
            released = self._runner.release_leaked(oldest_live - RELEASE_MARGIN_NS)
        except Exception:  # noqa: BLE001 - Ray's state API briefly away: try again next time
            log.warning("could not list Ray's placement groups; trying again later", exc_info=True)
            return []
        if released:
            log.warning("released %d placement group(s) that ended attempts left behind", len(released))
        return released

    def _totals(self) -> tuple[float, float] | None:
        try:
            return self.runner.total() if self.runner is not None else None
        except Exception:  # noqa: BLE001 - Ray's GCS briefly away: the heartbeat goes without totals
            log.warning("Ray's cluster totals unavailable; heartbeat without them", exc_info=True)
            return None

    def refuse_unfittable(self) -> list[str]:
        """Fail the queued jobs that no live dispatcher's Ray cluster can hold any more (a cluster shrank
        under them, or they came before any dispatcher had published its totals)."""
        since = utcnow() - timedelta(seconds=3 * self.settings.heartbeat_s)
        with self.db.write() as session:
            failed = queue.fail_unfittable(session, reads.live_clusters(session, since=since))
            refused = [(job.id, job.error or "") for job in failed]
        for job_id, reason in refused:
            log.warning("job %s refused: %s", job_id, reason, extra={"job_id": job_id})
            JobLog(self._log_path(job_id)).write(reason)
        return [job_id for job_id, _ in refused]

    def reap(self) -> list[str]:
        self._last_reap = time.monotonic()
        with self.db.write() as session:
            reaped = queue.reap_expired(session, policy.after_lease_expiry, alive=self.owner)
            settled = [(job.id, job.state) for job in reaped]
        for job_id, state in settled:
            JobLog(self._log_path(job_id)).write(f"lease expired (dispatcher gone): {state}")
        return [job_id for job_id, _ in settled]

    def free_resources(self, total: tuple[float, float]) -> tuple[float, float]:
        """Ray's free resources, minus what our just-launched attempts will take but may not hold yet
        (``total``: the cluster's totals)."""
        cpus, gpus = self._runner.free()
        total_cpus, total_gpus = total
        ours_cpus = sum(a.cpus for a in self.attempts.values())
        ours_gpus = sum(a.gpus for a in self.attempts.values())
        return min(cpus, total_cpus - ours_cpus), min(gpus, total_gpus - ours_gpus)

    def dispatch(self) -> None:
        defaults = tenants.default_quota(self.settings)
        total_cpus, total_gpus = self._runner.total()  # one question to Ray's GCS per pass, not per claim
        while not self.stop_event.is_set():
            cpus, gpus = self.free_resources((total_cpus, total_gpus))
            job = self.telemetry.claim(  # times the claim, counts a claimed job
                queue.claim_next,
                self.db,
                owner=self.owner,
                lease_s=self.settings.lease_s,
                free_cpus=cpus,
                free_gpus=gpus,
                total_cpus=total_cpus,
                total_gpus=total_gpus,
                defaults=defaults,
                reserve_after_s=self.settings.reserve_after_s,
            )
            if job is None:
                return
            try:
                self.launch(job)
            except UNAVAILABLE:
                raise
            except Exception as exc:  # noqa: BLE001 - that job's fault or Ray's: it ends or retries, alone
                log.warning("job %s could not be launched: %s", job.id, policy.describe(exc), extra={"job_id": job.id})
                self.attempts.pop(job.id, None)
                self._settle(job.id, policy.Outcome.failed, error=policy.describe(exc), retry=policy.retryable(exc))

    def launch(self, job: Job) -> None:
        try:
            spec = JobSpec.model_validate(job.spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SpecError(f"the stored spec no longer validates: {where}: {first['msg']}") from None
        log_path = self._log_path(job.id)
        problem = self._preflight(spec)
        with self.db.write() as session:
            current = queue.lock_owned(session, job.id, self.owner)
            if current is None:
                return  # reaped between the claim and now: its new owner decides
            if problem is not None:
                queue.apply(session, current, Decision(Fate.fail, problem, problem))
                JobLog(log_path).write(problem)
                return
            if current.cancel_requested or current.state == JobState.cancelling:
                queue.apply(session, current, Decision(Fate.cancel, "cancelled before it started"))
                return
            resume = self._resume_dir(session, job.id) if spec.kind == "train" else None
            queue.transition(
                session,
                current,
                JobState.running,
                message=f"attempt {current.attempts} started on Ray" + (f", resuming from {resume}" if resume else ""),
                data={"attempt": current.attempts, "resume_path": resume},
            )
            number = current.attempts
        ctx = AttemptContext(
            job_id=job.id,
            attempt=number,
            spec=job.spec,
            database_url=self.settings.resolved_database_url,
            artifacts_dir=str(self.settings.resolved_artifacts_dir),
            resume_path=resume,
            db_outage_s=self.settings.db_outage_s,
        )
        holds = spec.attempt_holds_resources  # a ray_task train job: the task is the worker
        launched_ns = time.time_ns()
        ref = self._runner.start(  # raises for options Ray refuses: dispatch() settles it
            ctx,
            name=f"fsg-job-{job.id}-attempt-{number}",
            num_cpus=spec.resources.cpus if holds else None,  # one worker: its whole share
            num_gpus=spec.resources.gpus if holds else None,
        )
        now = utcnow()
        self.attempts[job.id] = Attempt(
            job.id, number, ref, job.cpus, job.gpus, now, job.timeout_s, now, launched_ns=launched_ns
        )
        url = self._runner.run_url(ref)
        with self.db.write() as session:
            records.set_run_url(session, job.id, url)
        self.telemetry.observe_launch(job, launched_at=now)  # fsg_queue_to_running_seconds
        log.info("job %s attempt %d launched", job.id, number, extra={"job_id": job.id, "attempt": number})

    def watch(self) -> None:
        if not self.attempts:
            return
        ready = self._runner.finished([a.ref for a in self.attempts.values()])
        done = {id(r) for r in ready}
        with self.db.read() as session:
            states = reads.watched_states(session, list(self.attempts))
        now = utcnow()
        for attempt in list(self.attempts.values()):
            try:
                self._watch_one(attempt, id(attempt.ref) in done, states, now)
            except UNAVAILABLE:
                raise
            except Exception:  # noqa: BLE001 - one attempt's trouble must not stall the others
                log.exception(
                    "watching attempt %d of job %s failed; its lease decides it now",
                    attempt.number,
                    attempt.job_id,
                    extra={"job_id": attempt.job_id, "attempt": attempt.number},
                )
                self.attempts.pop(attempt.job_id, None)  # not renewed: once expired, a reap settles the job

    def _watch_one(self, attempt: Attempt, done: bool, states: dict[str, Any], now: datetime) -> None:
        """Finish a done attempt, or stop one that was cancelled or timed out, and renew its lease."""
        if done:
            self.finish(attempt)
            return
        state, cancel_requested = states.get(attempt.job_id, (None, False))
        if attempt.stopping is None and (cancel_requested or state == JobState.cancelling):
            self._stop(attempt, policy.Outcome.cancelled)
        elif attempt.stopping is None and policy.timed_out(attempt.started, attempt.timeout_s, now):
            self._stop(attempt, policy.Outcome.timed_out)
        if policy.lease_renewal_due(attempt.last_renewal, self.settings.lease_s, now):
            with self.db.write() as session:
                held = queue.renew_lease(session, attempt.job_id, owner=self.owner, lease_s=self.settings.lease_s)
            attempt.last_renewal = now
            if not held:
                # Another dispatcher reaped it: our attempt must not run beside its new one.
                log.warning(
                    "lost the lease of job %s; stopping its attempt",
                    attempt.job_id,
                    extra={"job_id": attempt.job_id, "attempt": attempt.number},
                )
                self._runner.stop(attempt.ref, force=True)
                del self.attempts[attempt.job_id]

    def _stop(self, attempt: Attempt, why: policy.Outcome) -> None:
        """Ask Ray to stop the attempt: a KeyboardInterrupt in the task ends its TorchTrainer/Tuner,
        whose actors (owned by the task) go with it and return their CPUs."""
        attempt.stopping = why
        attempt.stop_sent_at = time.monotonic()
        self._runner.stop(attempt.ref)
        JobLog(self._log_path(attempt.job_id)).write(f"stopping attempt {attempt.number}: {why}")

    def finish(self, attempt: Attempt) -> None:
        summary: dict[str, Any] | None = None
        error: str | None = None
        retry = True
        try:
            summary = self._runner.result(attempt.ref)
            outcome = policy.Outcome.succeeded
        except AttemptCancelled:
            outcome = attempt.stopping or policy.Outcome.cancelled
        except Exception as exc:  # noqa: BLE001 - any Ray error (OOM, node died, object lost, ...) or the job's own
            if attempt.stopping is not None:
                outcome = attempt.stopping  # we stopped it: whatever it raised on the way out is not the job's error
            else:
                outcome = policy.Outcome.failed
                error = policy.describe(exc)
                retry = policy.retryable(exc)
        final = self._settle(attempt.job_id, outcome, summary=summary, error=error, retry=retry)
        # Only now: if the database was down, the attempt stays here and is finished on a later tick.
        del self.attempts[attempt.job_id]
        self.telemetry.observe_finish(outcome)  # fsg_attempts_finished_total{outcome}
        if final is not None:
            JobLog(self._log_path(attempt.job_id)).write(f"job {final[0]}: {final[1]}")

    def _settle(
        self,
        job_id: str,
        outcome: policy.Outcome,
        *,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
        retry: bool = True,
    ) -> tuple[str, str] | None:
        """Apply the policy's decision for ``job_id`` after an attempt ended (or could not start).

        Returns the job's new state and the reason, or None when the job is no longer ours (reaped
        meanwhile: its new owner decides).
        """
        with self.db.write() as session:
            job = queue.lock_owned(session, job_id, self.owner)
            if job is None:
                return None
            decision = policy.after_attempt(
                outcome,
                attempts=job.attempts,
                max_retries=job.max_retries,
                cancel_requested=job.cancel_requested,
                error=error,
                retry=retry,
                timeout_s=job.timeout_s,
            )
            state = queue.apply(session, job, decision, summary=summary)
            return str(state), decision.reason + (f" ({decision.error})" if decision.error else "")

    # --- helpers --------------------------------------------------------------------------------
    def _log_path(self, job_id: str) -> Path:
        return Storage(self.settings.resolved_artifacts_dir).log_path(job_id)

    def _preflight(self, spec: JobSpec) -> str | None:
        root = spec.data.root
        try:
            if root and not Path(root).exists():
                return f"data.root {root!r} does not exist on the dispatching node"
        except OSError as exc:  # a name the file system refuses (too long, ...)
            return f"data.root cannot be read on the dispatching node: {exc.strerror or type(exc).__name__}"
        return None

    def _resume_dir(self, session: Session, job_id: str) -> str | None:
        """The directory of the job's latest checkpoint, when its files are still there."""
        latest = reads.latest_checkpoint_file(session, job_id)
        if latest is None or read_checkpoint_dir(Path(latest).parent) is None:
            return None
        return str(Path(latest).parent)


def main(settings: Settings | None = None) -> None:
    """Run a dispatcher until SIGTERM or SIGINT (``fsg dispatcher`` and ``fsg up`` call this)."""
    from service.db.migrate import upgrade
    from service.logging_config import configure_logging

    settings = settings or Settings()
    configure_logging(settings)  # FSG_LOG_FORMAT: text or one JSON object per line
    upgrade(settings.resolved_database_url)
    dispatcher = Dispatcher(settings)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        dispatcher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dispatcher.start()
    dispatcher.run()


if __name__ == "__main__":
    main()

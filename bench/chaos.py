"""The chaos soak: the whole service under faults, then its invariants checked from the database and
the artifact store.

    python -m bench.chaos [--minutes M] [--seed S] [--dispatchers D] [--jobs-per-minute R] [--json FILE]

Three tenants (``a`` with ``max_running`` 1, ``b`` with 2, ``c`` unlimited) submit a seeded mix of small
jobs (train on Ray Train, ``ray_task``, search, study; R a minute, default 3) to a private PostgreSQL
server through the REST API, served by D dispatchers (default 3) on a Ray cluster of two nodes (a head
and a worker, ``ray start`` processes of our own). Meanwhile a seeded injector, every 6-15 s, does one
of: SIGKILL a dispatcher (restarted 2-6 s later), SIGKILL a Ray worker process (a task or a Train/Tune
actor), SIGKILL the API (restarted 1-3 s later), stop PostgreSQL for 3-10 s, or cancel a random
unfinished job. After M minutes the submissions and faults stop, everything dead is restarted and the
soak waits for every job to end.

Then, from the database and the artifact store:
- none lost: every job the API accepted (201) is in the database; every job is terminal;
- no attempt overlaps another of the same job: no epoch row written by attempt k after attempt k+1
  started, and attempt numbers only grow along a job's epochs;
- no epoch recorded twice and none skipped: each (job, trial, phase) has epochs 1..n;
- every succeeded train job's packed checkpoint loads, and its logits on the test split give exactly the
  test accuracy its metrics promise;
- quotas held: no tenant ever had more jobs claimed at once (from its state events) than ``max_running``.

Prints the figures (jobs by kind and state, faults injected by kind, each invariant held or not with
its counterexamples) and exits 1 if an invariant failed. ``tests/bench/test_chaos.py`` runs a 2-minute
soak in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import RAY_TEST_ENV, PrivatePostgres, free_port, start_ray_node, stop_ray_node, wait_port
from bench.output import write_json

TENANTS = {"a": 1, "b": 2, "c": None}  # max_running
KINDS = ("train", "ray_task", "search", "study")
TERMINAL = {"succeeded", "failed", "cancelled"}
FAULTS = ("kill_dispatcher", "kill_ray_worker", "kill_api", "stop_postgres", "cancel")


def job_spec(kind: str, rng: random.Random, n: int) -> dict[str, Any]:
    """A small job of ``kind``: a couple of digits steps per epoch, checkpoints every epoch, retries."""
    spec: dict[str, Any] = {
        "name": f"chaos-{kind}-{n}",
        "model": {"arch": "resnet20"},
        "data": {"dataset": "digits", "crop_padding": 1, "flip": False, "max_train_samples": 256},
        "estimator": {"name": rng.choice(["ste", "reste"])},
        "epochs": 2,
        "batch_size": 32,
        "max_steps_per_epoch": 2,
        "eval_batch_size": 512,
        "seed": n,
        "init": {"pretrain_epochs": 0},
        "max_retries": 6,
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    if kind == "ray_task":
        spec["resources"]["executor"] = "ray_task"
    elif kind == "search":
        spec["kind"] = "search"
        spec["epochs"] = 1
        spec["search"] = {"space": {"optimizer.lr": {"type": "choice", "values": [1e-3, 3e-3]}}, "num_samples": 1}
    elif kind == "study":
        spec["kind"] = "study"
        spec["epochs"] = 1
        spec["init"] = {"pretrain_epochs": 0}  # 4 Train runs, not 6: the soak is about faults, not studies
        spec["study"] = {
            "variants": [
                {"name": "ste", "estimator": {"name": "ste"}},
                {"name": "reste", "estimator": {"name": "reste"}},
            ],
            "seeds": 2,
            "baseline": "ste",
            "max_concurrent_trials": 2,  # its four Train runs two at a time: the soak drains sooner
        }
    return spec


@dataclass
class Proc:
    """A service process we may kill and restart."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM if self.name != "api" else signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _ray_workers() -> list[int]:
    """Pids of Ray's worker processes on this machine that run our code (tasks, Train and Tune actors):
    ``ray::<name>`` processes, Ray's own agents and idle workers left out."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::") and not any(
            word in cmdline for word in ("IDLE", "Dashboard", "RuntimeEnv", "Agent", "dashboard")
        ):
            pids.append(int(entry.name))
    return pids


@dataclass
class Soak:
    seed: int
    minutes: float
    dispatchers: int
    work: Path
    jobs_per_minute: float = 3.0
    rng: random.Random = field(init=False)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()

    # --- the service -------------------------------------------------------------------------------
    def up(self) -> None:
        from service.db import tenants
        from service.db.engine import Database
        from service.db.migrate import upgrade
        from service.security import create_token

        self.pg = PrivatePostgres()
        upgrade(self.pg.url)
        db = Database.from_url(self.pg.url)
        with db.write() as session:
            self.tokens = {t: create_token(session, t, "chaos", 1) for t in TENANTS}
            for tenant, limit in TENANTS.items():
                if limit is not None:
                    tenants.set_quota(session, tenant, max_running=limit)
        db.dispose()
        head_port, dashboard = free_port(), free_port()
        self.ray_nodes = [start_ray_node(self.work / "ray", num_cpus=2, head_port=head_port, dashboard_port=dashboard)]
        wait_port(head_port, 60)
        self.ray_nodes.append(start_ray_node(self.work / "ray", num_cpus=2, head_port=head_port))
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        env = {
            **os.environ,
            **RAY_TEST_ENV,
            "FSG_HOME": str(self.work / "home"),
            "FSG_DATABASE_URL": self.pg.url,
            "FSG_API_PORT": str(self.api_port),
            "FSG_LEASE_S": "8",
            "FSG_POLL_INTERVAL_S": "0.5",
            "FSG_HEARTBEAT_S": "2",
            "FSG_DB_OUTAGE_S": "60",
            "RAY_ADDRESS": f"127.0.0.1:{head_port}",
            "FSG_RAY_DASHBOARD_URL": f"http://127.0.0.1:{dashboard}",
        }
        cli = [sys.executable, "-m", "service.cli"]
        self.api = Proc("api", [*cli, "api"], env, self.work / "api.log")
        self.disps = [
            Proc(f"dispatcher-{i}", [*cli, "dispatcher"], env, self.work / f"dispatcher-{i}.log")
            for i in range(self.dispatchers)
        ]
        for proc in [self.api, *self.disps]:
            proc.start()
        wait_port(self.api_port, 60)

    def down(self) -> None:
        for proc in [*getattr(self, "disps", []), getattr(self, "api", None)]:
            if proc is not None:
                proc.stop()
        for node in reversed(getattr(self, "ray_nodes", [])):
            stop_ray_node(node)
        if hasattr(self, "pg"):
            self.pg.close()

    # --- load and faults ---------------------------------------------------------------------------
    def _post(self, method: str, path: str, tenant: str, **kw: Any) -> httpx.Response | None:
        """One request, retried while the API or the database is down (up to 90 s)."""
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}", **kw.pop("headers", {})}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                response = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kw)
            except httpx.HTTPError:
                time.sleep(1)
                continue
            if response.status_code in (502, 503):
                time.sleep(1)
                continue
            return response
        return None

    def submitter(self) -> None:
        n = 0
        while not self.stop.is_set():
            with self.lock:
                tenant = self.rng.choice(list(TENANTS))
                kind = self.rng.choices(KINDS, weights=[4, 4, 1, 1])[0]
                spec = job_spec(kind, self.rng, n)
                mean_pause = 60.0 / self.jobs_per_minute
                pause = self.rng.uniform(0.5 * mean_pause, 1.5 * mean_pause)
            n += 1
            key = uuid.uuid4().hex  # the same key on every retry: a retried submit is never a second job
            response = self._post("POST", "/v1/jobs", tenant, json=spec, headers={"Idempotency-Key": key})
            if response is not None and response.status_code == 201:
                with self.lock:
                    self.submitted.append({"id": response.json()["id"], "tenant": tenant, "kind": kind})
            else:
                self.refused[str(None if response is None else response.status_code)] += 1
            self.stop.wait(pause)

    def _restart_later(self, proc: Proc, low: float, high: float) -> None:
        delay = self.rng.uniform(low, high)

        def run() -> None:
            time.sleep(delay)
            if not proc.alive():
                proc.start()

        threading.Thread(target=run, daemon=True).start()

    def inject(self, fault: str) -> bool:
        """Inject ``fault`` now; False if there was nothing to inject it into."""
        if fault == "kill_dispatcher":
            live = [p for p in self.disps if p.alive()]
            if len(live) < 2:  # keep one, so the soak makes progress between faults
                return False
            victim = self.rng.choice(live)
            victim.kill()
            self._restart_later(victim, 2, 6)
        elif fault == "kill_ray_worker":
            pids = _ray_workers()
            if not pids:
                return False
            try:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                return False
        elif fault == "kill_api":
            self.api.kill()
            self._restart_later(self.api, 1, 3)
        elif fault == "stop_postgres":
            self.pg.stop("immediate")
            time.sleep(self.rng.uniform(3, 10))
            self.pg.start()
        elif fault == "cancel":
            with self.lock:
                candidates = list(self.submitted)
            if not candidates:
                return False
            job = self.rng.choice(candidates)
            response = self._post("POST", f"/v1/jobs/{job['id']}/cancel", job["tenant"])
            if (
                response is None
                or response.status_code != 200
                or response.json()["state"] not in ("cancelled", "cancelling")
            ):
                return False  # already finished (409): not a fault
        return True

    def injector(self) -> None:
        while not self.stop.wait(self.rng.uniform(6, 15)):
            with self.lock:
                fault = self.rng.choices(FAULTS, weights=[3, 3, 2, 2, 2])[0]
            if self.inject(fault):
                self.faults[fault] += 1

    def run(self, log: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        threads = [threading.Thread(target=f, daemon=True) for f in (self.submitter, self.injector)]
        for t in threads:
            t.start()
        end = t0 + self.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30, max(0.0, end - time.monotonic())))
            log(f"{(time.monotonic() - t0) / 60:.1f} min: {len(self.submitted)} jobs, faults {dict(self.faults)}")
        self.stop.set()
        for t in threads:
            t.join(timeout=120)
        for proc in [self.api, *self.disps]:
            if not proc.alive():
                proc.start()
        wait_port(self.api_port, 60)
        drained = self.drain(log, timeout_s=max(600.0, self.minutes * 60))
        return {"wall_s": time.monotonic() - t0, "drained": drained}

    def drain(self, log: Any, timeout_s: float) -> bool:
        from service.db.engine import Database
        from service.db.models import Job

        db = Database.from_url(self.pg.url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                with db.read() as session:
                    open_jobs = session.query(Job).filter(Job.state.notin_(TERMINAL)).count()
                if open_jobs == 0:
                    return True
                log(f"draining: {open_jobs} jobs not finished")
                time.sleep(10)
            return False
        finally:
            db.dispose()

    # --- invariants --------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        from service.db.engine import Database
        from service.db.models import Checkpoint, Job, JobEvent, Metric

        db = Database.from_url(self.pg.url)
        try:
            with db.read() as session:
                jobs = {j.id: j for j in session.query(Job)}
                events = defaultdict(list)
                for e in session.query(JobEvent).order_by(JobEvent.id):
                    events[e.job_id].append(e)
                metrics = defaultdict(list)
                for m in session.query(Metric):
                    metrics[m.job_id].append(m)
                packed = {}
                for c in session.query(Checkpoint).order_by(Checkpoint.created_at, Checkpoint.id):
                    if c.packed_path and not c.trial_key:
                        packed[c.job_id] = c  # the newest of the job's own checkpoints
                states = Counter(j.state for j in jobs.values())
                results = {
                    "none_lost": self._none_lost(jobs),
                    "all_terminal": [j.id for j in jobs.values() if j.state not in TERMINAL],
                    "no_overlapping_attempts": self._overlaps(events, metrics),
                    "epochs_once_each": self._epochs(metrics),
                    "packed_models_match_their_metrics": self._packed(jobs, packed, metrics),
                    "quotas_held": self._quotas(jobs, events),
                }
                attempts = sum(j.attempts for j in jobs.values())
                timings = self._timings(jobs)
        finally:
            db.dispose()
        return {
            "jobs": len(jobs),
            "by_kind": dict(Counter(s["kind"] for s in self.submitted)),
            "by_state": dict(states),
            "attempts": attempts,
            "refused_submits": dict(self.refused),
            "faults": dict(self.faults),
            "seconds_by_kind": timings,
            "invariants": {name: {"held": not bad, "counterexamples": bad[:10]} for name, bad in results.items()},
        }

    @staticmethod
    def _timings(jobs: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Per kind: mean and max seconds queued (submit to first start) and running (first start to end);
        a job cancelled before it started counts only in ``queued``."""
        waits: dict[str, list[float]] = defaultdict(list)
        runs: dict[str, list[float]] = defaultdict(list)
        for j in jobs.values():
            kind = "ray_task" if (j.spec.get("resources") or {}).get("executor") == "ray_task" else j.kind
            end = j.finished_at
            if j.started_at is not None:
                waits[kind].append((j.started_at - j.created_at).total_seconds())
                if end is not None:
                    runs[kind].append((end - j.started_at).total_seconds())
            elif end is not None:
                waits[kind].append((end - j.created_at).total_seconds())
        out = {}
        for kind in sorted(waits):
            w, r = waits[kind], runs.get(kind, [])
            out[kind] = {
                "queued_mean": round(sum(w) / len(w), 1),
                "queued_max": round(max(w), 1),
                "run_mean": round(sum(r) / len(r), 1) if r else float("nan"),
                "run_max": round(max(r), 1) if r else float("nan"),
            }
        return out

    def _none_lost(self, jobs: dict[str, Any]) -> list[str]:
        return [s["id"] for s in self.submitted if s["id"] not in jobs]

    @staticmethod
    def _overlaps(events: dict[str, list[Any]], metrics: dict[str, list[Any]]) -> list[str]:
        bad = []
        for job_id, rows in metrics.items():
            starts: dict[int, datetime] = {}
            for e in events.get(job_id, []):
                attempt = (e.data or {}).get("attempt")
                if e.to_state == "running" and isinstance(attempt, int):
                    starts.setdefault(attempt, e.created_at)
            for m in rows:
                later = [t for a, t in starts.items() if a > m.attempt]
                if later and m.created_at > min(later):
                    bad.append(
                        f"{job_id}: epoch {m.phase}/{m.epoch} of attempt {m.attempt} after a later attempt began"
                    )
            by_series: dict[tuple[str, str], list[Any]] = defaultdict(list)
            for m in rows:
                by_series[(m.trial_key, m.phase)].append(m)
            for (trial, phase), series in by_series.items():
                attempts = [m.attempt for m in sorted(series, key=lambda m: m.epoch)]
                if attempts != sorted(attempts):
                    bad.append(f"{job_id}/{trial or '-'}/{phase}: attempts {attempts} along the epochs")
        return bad

    @staticmethod
    def _epochs(metrics: dict[str, list[Any]]) -> list[str]:
        bad = []
        for job_id, rows in metrics.items():
            series: dict[tuple[str, str], list[int]] = defaultdict(list)
            for m in rows:
                series[(m.trial_key, m.phase)].append(m.epoch)
            for (trial, phase), epochs in series.items():
                if sorted(epochs) != list(range(1, len(epochs) + 1)):
                    bad.append(f"{job_id}/{trial or '-'}/{phase}: epochs {sorted(epochs)}")
        return bad

    def _packed(self, jobs: dict[str, Any], packed: dict[str, Any], metrics: dict[str, list[Any]]) -> list[str]:
        import torch

        from fsg_core.data import build_splits
        from fsg_core.packed import load_packed
        from service.schemas.jobs import JobSpec

        bad = []
        for job in jobs.values():
            if job.state != "succeeded" or job.kind != "train":
                continue
            ckpt = packed.get(job.id)
            if ckpt is None:
                bad.append(f"{job.id}: succeeded without a packed checkpoint")
                continue
            rows = {(m.phase, m.epoch): m for m in metrics.get(job.id, []) if not m.trial_key}
            row = rows.get((ckpt.phase, ckpt.epoch))
            try:
                model = load_packed(ckpt.packed_path).model
                spec = JobSpec.model_validate(job.spec).train_spec()
                test = build_splits(spec.data, seed=spec.seed).test
                with torch.no_grad():
                    correct = int((model(test.images).argmax(1) == test.labels).sum())
            except Exception as exc:  # noqa: BLE001 - a model that does not load is the finding
                bad.append(f"{job.id}: the packed model does not load: {type(exc).__name__}: {exc}")
                continue
            promised = None if row is None else row.values.get("test_acc")
            if promised is None or correct != round(promised * len(test)):
                bad.append(f"{job.id}: {correct}/{len(test)} correct, its metrics promise {promised}")
        return bad

    @staticmethod
    def _quotas(jobs: dict[str, Any], events: dict[str, list[Any]]) -> list[str]:
        """A job holds a place from its claim (``dispatching``) until it leaves ``running`` or ``dispatching``."""
        sweeps: dict[str, list[tuple[datetime, int, str]]] = defaultdict(list)
        for job_id, rows in events.items():
            tenant = jobs[job_id].tenant if job_id in jobs else "?"
            held = False
            for e in rows:
                if e.kind != "state":
                    continue
                holds = e.to_state in ("dispatching", "running", "cancelling")
                if holds and not held:
                    sweeps[tenant].append((e.created_at, 1, job_id))
                elif not holds and held:
                    sweeps[tenant].append((e.created_at, -1, job_id))
                held = holds
        bad = []
        for tenant, points in sweeps.items():
            limit = TENANTS.get(tenant)
            if limit is None:
                continue
            running, peak = 0, 0
            for _, delta, _job in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts at a tie
                running += delta
                peak = max(peak, running)
            if peak > limit:
                bad.append(f"tenant {tenant}: {peak} jobs claimed at once, max_running {limit}")
        return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dispatchers", type=int, default=3)
    parser.add_argument(
        "--jobs-per-minute", type=float, default=3.0, help="mean submission rate (the queue drains after the soak)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[chaos] {msg}", file=sys.stderr, flush=True)

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) unwind through ``finally``: the Ray
    # nodes, the service processes and the private PostgreSQL are stopped, never left behind.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    with tempfile.TemporaryDirectory(prefix="fsg-chaos-") as tmp:
        soak = Soak(args.seed, args.minutes, args.dispatchers, Path(tmp), args.jobs_per_minute)
        try:
            soak.up()
            log(f"up: API {soak.url}, {args.dispatchers} dispatchers, 2 Ray nodes, PostgreSQL :{soak.pg.port}")
            run = soak.run(log)
            report = {
                "seed": args.seed,
                "minutes": args.minutes,
                "dispatchers": args.dispatchers,
                "jobs_per_minute": args.jobs_per_minute,
                **run,
            }
            report |= soak.check()
        finally:
            soak.down()
    print(json.dumps(report, indent=1, default=str))
    write_json(args.json, report)
    held = run["drained"] and all(v["held"] for v in report["invariants"].values())
    log("every invariant held" if held else "INVARIANTS FAILED")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

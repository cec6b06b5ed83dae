"""Benchmark many dispatchers on one PostgreSQL queue: N small jobs drained by D dispatcher
processes sharing one local Ray cluster. Counts every job's attempts and runs; prints jobs/min.

    python -m bench.dispatchers [--jobs 500] [--dispatchers 3] [--database-url URL] [--json FILE]

Without ``--database-url`` a fresh database is created on the local PostgreSQL server
(``postgresql+psycopg://postgres@127.0.0.1:5432``) and dropped afterwards. The jobs run with
``resources.executor = "ray_task"`` (one Ray task each: a one-step digits run), so the figure is
the queue's and the dispatchers', not Ray Train's start-up. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.output import write_json
from bench.service import _stop, _token, free_port
from service.cli.server import wait_healthy

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def small_job(i: int) -> dict[str, Any]:
    return {
        "name": f"drain-{i}",
        "model": {"arch": "resnet20"},
        "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
        "estimator": {"name": "ste"},
        "epochs": 1,
        "batch_size": 32,
        "max_steps_per_epoch": 1,
        "init": {"pretrain_epochs": 0},
        "seed": i,
        "resources": {"num_workers": 1, "executor": "ray_task"},
    }


class _Scratch:
    """A database of its own on the local PostgreSQL server."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"fsg_bench_{uuid.uuid4().hex[:12]}"
        self.admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True)
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"

    def close(self) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


def _start_ray(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port, dashboard = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--num-cpus={os.cpu_count() or 1}",
            "--include-dashboard=true",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
            f"--temp-dir={home / 'ray'}",
            "--object-store-memory=200000000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, f"127.0.0.1:{port}"


def bench(jobs: int, dispatchers: int, database_url: str | None) -> dict[str, Any]:
    from sqlalchemy import func, select

    from service.db.engine import Database
    from service.db.models import Job, JobEvent

    scratch = None if database_url else _Scratch()
    url_db = database_url or scratch.url  # type: ignore[union-attr]
    home = Path(tempfile.mkdtemp(prefix="fsg-drain-"))
    # A private local cluster for the benchmark: token auth off on loopback.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # Each dispatcher is its own Ray driver, and a driver's tasks run only in its own worker
    # processes. Ray keeps idle workers up to one per CPU by default: with several drivers it
    # would kill and restart workers (and re-import torch) between small jobs.
    env.setdefault("RAY_num_workers_soft_limit", str(dispatchers * (os.cpu_count() or 1)))
    ray_proc, address = _start_ray(home, env)
    port = free_port()
    env.update(
        FSG_HOME=str(home),
        FSG_DATABASE_URL=url_db,
        FSG_API_PORT=str(port),
        FSG_POLL_INTERVAL_S="0.5",
        RAY_ADDRESS=address,
    )
    token = _token(url_db)
    procs: list[subprocess.Popen[bytes]] = []
    db = Database.from_url(url_db)
    try:
        api = subprocess.Popen([sys.executable, "-m", "service.cli", "api"], env=env)
        procs.append(api)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, api)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            ids = [client.post("/v1/jobs", json=small_job(i)).raise_for_status().json()["id"] for i in range(jobs)]
        logs = [(home / f"dispatcher-{d}.log").open("wb") for d in range(dispatchers)]
        start = time.perf_counter()
        for log in logs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "dispatcher"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        terminal = ("succeeded", "failed", "cancelled")
        last = -1
        while True:
            with db.read() as session:
                done = session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(terminal))) or 0
            if done != last:
                print(f"\r{done}/{jobs} jobs finished, {time.perf_counter() - start:.0f} s", end="", flush=True)
                last = done
            if done >= jobs:
                break
            time.sleep(1)
        elapsed = time.perf_counter() - start
        print()
        with db.read() as session:
            rows = session.execute(select(Job.id, Job.state, Job.attempts)).all()
            events = session.execute(
                select(JobEvent.job_id, JobEvent.to_state, JobEvent.data).where(JobEvent.kind == "state")
            ).all()
    finally:
        for proc in procs[1:]:
            _stop(proc, signal.SIGTERM)
        if procs:
            _stop(procs[0])
        db.dispose()
        _stop(ray_proc, signal.SIGTERM)
        if scratch is not None:
            scratch.close()
    runs = Counter(job_id for job_id, to_state, _ in events if to_state == "running")
    claims = Counter((data or {}).get("owner", "?") for _, to_state, data in events if to_state == "dispatching")
    states = Counter(state for _, state, _ in rows)
    return {
        "jobs": jobs,
        "dispatchers": dispatchers,
        "elapsed_s": elapsed,
        "jobs_per_min": jobs / elapsed * 60,
        "states": dict(states),
        "lost": len(set(ids) - {job_id for job_id, state, _ in rows if state == "succeeded"}),
        "attempts": dict(Counter(attempts for _, _, attempts in rows)),
        "ran_more_than_once": sum(1 for job_id in ids if runs[job_id] > 1),
        "claims_by_dispatcher": sorted(claims.values(), reverse=True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--dispatchers", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    r = bench(args.jobs, args.dispatchers, args.database_url)
    table = Table(title=f"{r['jobs']} small jobs, {r['dispatchers']} dispatchers, one PostgreSQL queue, one Ray")
    for col in (
        "jobs/min",
        "wall",
        "succeeded",
        "lost",
        "attempts (count: jobs)",
        "ran twice",
        "claims per dispatcher",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{r['jobs_per_min']:.0f}",
        f"{r['elapsed_s']:.0f} s",
        str(r["states"].get("succeeded", 0)),
        str(r["lost"]),
        ", ".join(f"{k}: {v}" for k, v in sorted(r["attempts"].items())),
        str(r["ran_more_than_once"]),
        " / ".join(map(str, r["claims_by_dispatcher"])),
    )
    Console().print(table)
    write_json(args.json, r)


if __name__ == "__main__":
    main()

"""Benchmark the service: submit throughput and latency, queue-to-running latency, and the overhead
of running a job through the service instead of ``fsg train``.

    python -m bench.service [--submissions 2000] [--concurrency 64] [--database-url URL]
                            [--skip-submit] [--skip-queue] [--skip-overhead] [--json FILE]

1. Submit: one API process (uvicorn, no dispatcher, so jobs stay queued) receives N job
   submissions from ``concurrency`` concurrent HTTP clients; prints submissions/s and p50/p99
   latency, then lists every job back through the paginated API and checks that all are there.
2. Queue to running: ``fsg up`` (API + dispatcher + local Ray); after one warm-up job, the time
   from each submission to its ``running`` event, for a few small jobs.
3. Overhead: the same ~2-minute training spec with ``fsg train`` and through the service
   (submit -> succeeded); prints both wall times and the ratio.

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.output import write_json
from service.cli.server import wait_healthy

TINY_JOB: dict[str, Any] = {
    "name": "bench",
    "model": {"arch": "resnet20"},
    "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
    "estimator": {"name": "ste"},
    "epochs": 1,
    "batch_size": 32,
    "max_steps_per_epoch": 2,
    "resources": {"num_workers": 1},
}

# About two minutes of training on 2 cores with `fsg train` (FSG lite on digits, one worker).
OVERHEAD_JOB: dict[str, Any] = {
    "name": "bench-overhead",
    "model": {"arch": "resnet20"},
    "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
    "estimator": {"name": "fsg"},
    "epochs": 8,
    "batch_size": 64,
    "init": {"pretrain_epochs": 4},
    # `fsg train` uses every core; so does the service's one worker.
    "resources": {"num_workers": 1, "cpus_per_worker": os.cpu_count() or 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _token(database_url: str) -> str:
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.security import create_token

    upgrade(database_url)
    db = Database.from_url(database_url)
    try:
        with db.write() as session:
            return create_token(session, "bench", "bench", 1)
    finally:
        db.dispose()


# --------------------------------------------------------------------------------------------- submit
async def _submit_all(url: str, token: str, n: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """POST ``n`` jobs over ``concurrency`` keep-alive connections.

    A minimal HTTP/1.1 client on asyncio streams: a general-purpose async client (httpx) spent 2.5x
    the server's CPU on this 2-core machine and measured itself rather than the API.
    """
    host, port = url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(n))

    def request(i: int) -> bytes:
        body = json.dumps({**TINY_JOB, "name": f"bench-{i}", "seed": i}).encode()
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                t0 = time.perf_counter()
                writer.write(request(i))
                await writer.drain()
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not status_line.split()[1].startswith(b"2"):
                    raise RuntimeError(f"{status_line.decode().strip()}: {payload[:300]!r}")
                ids.append(json.loads(payload)["id"])
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, ids, time.perf_counter() - start


def _list_all(url: str, token: str) -> list[str]:
    found: list[str] = []
    cursor = None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/jobs", params=params).raise_for_status().json()
            found += [job["id"] for job in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                return found


def bench_submit(n: int, concurrency: int, database_url: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fsg-bench-"))
    url_db = database_url or f"sqlite:///{home / 'fsg.db'}"
    token = _token(url_db)
    port = free_port()
    env = {**os.environ, "FSG_HOME": str(home), "FSG_DATABASE_URL": url_db, "FSG_API_PORT": str(port)}
    api = subprocess.Popen([sys.executable, "-m", "service.cli", "api"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, api)
        latencies, ids, elapsed = asyncio.run(_submit_all(url, token, n, concurrency))
        found = _list_all(url, token)
    finally:
        _stop(api)
    missing = set(ids) - set(found)
    return {
        "database": url_db.split(":", 1)[0],
        "submissions": n,
        "concurrency": concurrency,
        "per_s": n / elapsed,
        "p50_ms": _pct(latencies, 50) * 1000,
        "p99_ms": _pct(latencies, 99) * 1000,
        "listed": len(found),
        "missing": len(missing),
        "duplicates": len(found) - len(set(found)),
    }


# ------------------------------------------------------------------------------------ the whole service
class LocalService:
    """``fsg up`` in a temporary FSG_HOME."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="fsg-bench-"))
        self.port = free_port()
        env = {
            **os.environ,
            "FSG_HOME": str(self.home),
            "FSG_API_PORT": str(self.port),
            "FSG_POLL_INTERVAL_S": "0.5",
            "FSG_RAY_DASHBOARD_PORT": str(free_port()),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "up"], env=env, stdout=subprocess.DEVNULL, start_new_session=True
        )
        from service.client import Client

        deadline = time.monotonic() + 180
        while True:
            try:
                self.client = Client.from_env(self.home)
                self.client.health()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("fsg up did not start") from None
                time.sleep(0.5)

    def close(self) -> None:
        _stop(self.proc)


def _running_latency(client: Any, spec: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    job = client.submit(spec)
    for event in client.events(job["id"]):
        if event.kind == "state" and event.data.get("to_state") == "running":
            latency = time.perf_counter() - t0
            client.wait(job["id"], poll_s=0.5, timeout_s=600)
            return latency
    raise RuntimeError(f"job {job['id']} never ran")


def bench_queue(jobs: int) -> dict[str, Any]:
    svc = LocalService()
    try:
        warm = _running_latency(svc.client, TINY_JOB)
        latencies = [_running_latency(svc.client, {**TINY_JOB, "seed": i}) for i in range(jobs)]
    finally:
        svc.close()
    return {"cold_s": warm, "warm_p50_s": statistics.median(latencies), "warm_max_s": max(latencies)}


def bench_overhead() -> dict[str, Any]:
    from service.schemas.jobs import JobSpec

    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(JobSpec.model_validate(OVERHEAD_JOB).train_spec().model_dump_json())
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "service.cli", "train", str(spec_path), "--out", str(Path(tmp) / "out"), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        direct = time.perf_counter() - t0
    svc = LocalService()
    try:
        _running_latency(svc.client, TINY_JOB)  # warm the cluster, as a running service is
        t0 = time.perf_counter()
        job = svc.client.submit(OVERHEAD_JOB)
        final = svc.client.wait(job["id"], poll_s=0.5, timeout_s=1800)
        through = time.perf_counter() - t0
    finally:
        svc.close()
    return {"fsg_train_s": direct, "service_s": through, "ratio": through / direct, "state": final["state"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary FSG_HOME")
    parser.add_argument("--queue-jobs", type=int, default=3)
    parser.add_argument("--skip-submit", action="store_true")
    parser.add_argument("--skip-queue", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    results: dict[str, Any] = {}
    if not args.skip_submit:
        r = results["submit"] = bench_submit(args.submissions, args.concurrency, args.database_url)
        table = Table(title=f"Submit: {r['submissions']} jobs, {r['concurrency']} concurrent clients, one API process")
        for col in ("database", "submissions/s", "p50", "p99", "listed back", "missing", "duplicates"):
            table.add_column(col, justify="right")
        table.add_row(
            r["database"],
            f"{r['per_s']:.0f}",
            f"{r['p50_ms']:.1f} ms",
            f"{r['p99_ms']:.1f} ms",
            str(r["listed"]),
            str(r["missing"]),
            str(r["duplicates"]),
        )
        console.print(table)
    if not args.skip_queue:
        r = results["queue"] = bench_queue(args.queue_jobs)
        console.print(
            f"Queue to running (fsg up, local Ray): first job {r['cold_s']:.1f} s; warm p50 {r['warm_p50_s']:.1f} s,"
            f" max {r['warm_max_s']:.1f} s"
        )
    if not args.skip_overhead:
        r = results["overhead"] = bench_overhead()
        console.print(
            f"Overhead: fsg train {r['fsg_train_s']:.1f} s; through the service {r['service_s']:.1f} s"
            f" ({r['ratio']:.2f}x, job {r['state']})"
        )
    write_json(args.json, results)


if __name__ == "__main__":
    main()

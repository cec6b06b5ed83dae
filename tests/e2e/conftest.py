"""One real Ray cluster for the whole session, and a real service (API + dispatcher processes) per test.

Ray runs as ``ray start --head --block`` on free ports in a process we own, stopped by signalling
that process (never ``ray stop``, which would kill every Ray on the machine). Token auth and usage
stats are off for tests; production keeps auth on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import (
    RAY_TEST_ENV,
    NoPostgres,
    PrivatePostgres,
    free_port,
    start_ray_node,
    stop_ray_node,
    wait_port,
)

RAY_CPUS = 2
TEST_ENV = RAY_TEST_ENV
_wait_port = wait_port


@dataclass
class RayHead:
    address: str
    dashboard_url: str

    def resources(self) -> tuple[float, float]:
        """(available CPUs, total CPUs) from this test process's Ray client."""
        import ray

        return float(ray.available_resources().get("CPU", 0.0)), float(ray.cluster_resources().get("CPU", 0.0))


def run_ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """The session's Ray head and this process's client of it, behind the ``ray_head`` fixture of
    tests/conftest.py: tests/e2e and tests/service/web share that one cluster."""
    for key, value in TEST_ENV.items():
        os.environ[key] = value
    port, dashboard = free_port(), free_port()
    proc = start_ray_node(tmp_path_factory.mktemp("ray"), num_cpus=RAY_CPUS, head_port=port, dashboard_port=dashboard)
    try:
        _wait_port(port, 60)
        _wait_port(dashboard, 60)
        import ray

        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")
    finally:
        import ray

        ray.shutdown()
        stop_ray_node(proc)


@dataclass
class Service:
    home: Path
    env: dict[str, str]
    url: str
    token: str
    api: subprocess.Popen[bytes]
    dispatchers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> Any:
        from service.client import Client

        return Client(self.url, self.token)

    def start_dispatcher(self) -> subprocess.Popen[bytes]:
        log = (self.home / f"dispatcher-{len(self.dispatchers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dispatcher"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.dispatchers.append(proc)
        return proc

    def database(self) -> Any:
        from service.db.engine import Database

        return Database.from_url(self.env["FSG_DATABASE_URL"])


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


@contextmanager
def run_service(
    ray_address: str,
    dashboard_url: str,
    home: Path,
    *,
    database_url: str | None = None,
    dispatchers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """The API and ``dispatchers`` dispatcher processes on ``ray_address``; stopped on exit."""
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.security import create_token

    port = free_port()
    url = database_url or f"sqlite:///{home / 'fsg.db'}"
    env = {
        **os.environ,
        **TEST_ENV,
        "FSG_HOME": str(home),
        "FSG_DATABASE_URL": url,
        "FSG_API_PORT": str(port),
        "FSG_LEASE_S": "6",
        "FSG_POLL_INTERVAL_S": "0.5",
        "RAY_ADDRESS": ray_address,
        "FSG_RAY_DASHBOARD_URL": dashboard_url,
        **(extra_env or {}),
    }
    home.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    db = Database.from_url(url)
    with db.write() as session:
        token = create_token(session, "e2e", "tests", 1)
    db.dispose()
    api_log = (home / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api"], env=env, stdout=api_log, stderr=subprocess.STDOUT
    )
    svc = Service(home, env, f"http://127.0.0.1:{port}", token, api)
    try:
        wait_for(lambda: _healthy(svc.url), 60, "the API answers /healthz")
        for _ in range(dispatchers):
            svc.start_dispatcher()
        yield svc
    finally:
        for proc in [*svc.dispatchers, api]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is not api else signal.SIGINT)
        for proc in [*svc.dispatchers, api]:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def service(ray_head: RayHead, tmp_path: Path) -> Iterator[Service]:
    with run_service(ray_head.address, ray_head.dashboard_url, tmp_path / "fsg") as svc:
        yield svc
    # The next test must find the cluster idle.
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        server = PrivatePostgres()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()

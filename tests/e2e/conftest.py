"""One real Ray cluster for the whole session, and a real service (API + dispatcher processes) per test.

Ray runs as ``ray start --head --block`` on free ports in a process we own, stopped by signalling
that process (never ``ray stop``, which would kill every Ray on the machine). Token auth and usage
stats are off for tests; production keeps auth on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

RAY_CPUS = 2
TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


@dataclass
class RayHead:
    address: str
    dashboard_url: str

    def resources(self) -> tuple[float, float]:
        """(available CPUs, total CPUs) from this test process's Ray client."""
        import ray

        return float(ray.available_resources().get("CPU", 0.0)), float(ray.cluster_resources().get("CPU", 0.0))


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    for key, value in TEST_ENV.items():
        os.environ[key] = value
    port, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("ray")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--num-cpus={RAY_CPUS}",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--object-store-memory=200000000",
        ],
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port, 60)
        _wait_port(dashboard, 60)
        import ray

        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")
    finally:
        import ray

        ray.shutdown()
        proc.send_signal(signal.SIGTERM)  # --block: stops the processes this command started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


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


@pytest.fixture
def service(ray_head: RayHead, tmp_path: Path) -> Iterator[Service]:
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.security import create_token

    home = tmp_path / "fsg"
    port = free_port()
    url = f"sqlite:///{home / 'fsg.db'}"
    env = {
        **os.environ,
        **TEST_ENV,
        "FSG_HOME": str(home),
        "FSG_DATABASE_URL": url,
        "FSG_API_PORT": str(port),
        "FSG_LEASE_S": "6",
        "FSG_POLL_INTERVAL_S": "0.5",
        "RAY_ADDRESS": ray_head.address,
        "FSG_RAY_DASHBOARD_URL": ray_head.dashboard_url,
    }
    home.mkdir(parents=True)
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
        # The next test must find the cluster idle.
        wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

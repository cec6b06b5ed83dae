"""One real Ray cluster for the whole session, and a real service (API + dispatcher processes) per test.

Ray runs as ``ray start --head --block`` on free ports in a process we own, stopped by signalling
that process (never ``ray stop``, which would kill every Ray on the machine). Token auth and usage
stats are off for tests; production keeps auth on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def start_ray_node(
    temp: Path, *, num_cpus: int, head_port: int, dashboard_port: int | None = None
) -> subprocess.Popen[bytes]:
    """``ray start --block``: the head (``dashboard_port`` given) or a node joining ``head_port``.

    Several nodes on one machine are a multi-node cluster to Ray (each its own raylet and resources);
    ``--block`` ties the node's processes to ours, so SIGTERM stops exactly that node.
    """
    ray = str(Path(sys.executable).parent / "ray")
    common = [f"--num-cpus={num_cpus}", "--num-gpus=0", "--disable-usage-stats", "--block"]
    if dashboard_port is not None:
        args = [
            ray,
            "start",
            "--head",
            f"--port={head_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp}",
            "--object-store-memory=200000000",
            *common,
        ]
    else:
        args = [ray, "start", f"--address=127.0.0.1:{head_port}", "--object-store-memory=100000000", *common]
    return subprocess.Popen(
        args,
        env={**os.environ, **TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_ray_node(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # --block: stops the processes this command started
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory, a free port), which a
    fault test may stop and start without touching the machine's shared server."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = bins[-1].parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fsg-pg-"))
        self.data = self.dir / "data"
        # The server refuses to run as root: everything runs as the postgres user, in a dir it owns.
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._run(str(self.bin / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "fsg")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/fsg"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l", str(self.dir / "log"), "start"
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()

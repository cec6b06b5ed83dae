"""Processes a benchmark (and the end-to-end tests) run a service on: Ray nodes of our own, a private
PostgreSQL server that may be stopped and started, free ports.

Ray nodes run as ``ray start --block`` in a process we own, stopped by signalling that process (never
``ray stop``, which would kill every Ray on the machine).
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
from pathlib import Path

__all__ = ["RAY_TEST_ENV", "NoPostgres", "PrivatePostgres", "free_port", "start_ray_node", "stop_ray_node", "wait_port"]

# Token auth and usage stats off for the processes of a test or benchmark cluster (production keeps auth on).
RAY_TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


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
        env={**os.environ, **RAY_TEST_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_ray_node(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM (``--block`` stops the processes it started), then SIGKILL to the node's process group.

    An idle node stops in about 2 s; one that ran many jobs' drivers and workers was seen taking the
    whole of a 30 s grace, twice per test session, with nothing left to save: its GCS, raylet and
    agents are in this process group, and its workers exit when their raylet is gone."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class NoPostgres(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb in a temporary directory, a free port), which a fault test
    or the chaos soak may stop and start without touching the machine's shared server."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise NoPostgres("no PostgreSQL server binaries under /usr/lib/postgresql")
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

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)

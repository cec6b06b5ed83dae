"""``fsg up`` as a person runs it (joined to the tests' Ray): what it prints, a taken port, and an API
that dies with it, even when ``fsg up`` is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.cli.server import port_in_use
from tests.e2e.conftest import TEST_ENV, RayHead, free_port, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of ``pid``'s children, from /proc (Linux)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append((int(entry.name), cmdline))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _reader(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_fsg_up_prints_what_a_person_needs_refuses_a_taken_port_and_its_api_dies_with_it(
    ray_head: RayHead, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **TEST_ENV,
        "FSG_HOME": str(tmp_path / "fsg"),
        "FSG_API_PORT": str(port),
        "RAY_ADDRESS": ray_head.address,
        "FSG_RAY_DASHBOARD_URL": ray_head.dashboard_url,
    }
    env.pop("FSG_DATABASE_URL", None)
    up = [sys.executable, "-m", "service.cli", "up"]
    proc = subprocess.Popen(up, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    _reader(proc, lines)
    try:
        wait_for(lambda: any(" ready" in line for line in lines), 120, "the dispatcher of fsg up is ready")
        text = "\n".join(lines)
        assert f"http://127.0.0.1:{port}" in text and "/ui/" in text
        assert "client.json" in text and "token" in text
        assert "ray get-auth-token" in text and ray_head.dashboard_url in text
        assert "alembic" not in text.lower() and "Context impl" not in text, text

        taken = subprocess.run(up, env=env, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 1 and f"port {port}" in taken.stderr and "is taken" in taken.stderr

        (api,) = [pid for pid, cmdline in _children(proc.pid) if cmdline.rstrip().endswith("service.cli api")]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not _alive(api), 20, "the API is gone with fsg up")  # PR_SET_PDEATHSIG
        wait_for(lambda: not port_in_use("127.0.0.1", port), 20, "the port is free again")
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(0.1)

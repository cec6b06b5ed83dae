"""`make demo`: the whole service on this machine, from a fresh FSG_HOME to a downloaded 1-bit model.

Starts `fsg up` (API + dispatcher + local Ray), submits a 2-worker FSG training job (Ray Train) and a
4-trial ASHA search over FSG's alpha and history length (each trial trains in its Tune trial:
``executor: ray_task``), follows both with progress bars, downloads the packed
checkpoint, loads it and checks its test accuracy against what the job reported, then shuts down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from fsg_core.data import build_splits
from fsg_core.packed import load_packed
from service.cli.jobs import follow_many
from service.client import Client
from service.schemas.jobs import JobSpec

HERE = Path(__file__).parent
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="fsg-demo-"))
    port = free_port()
    env = {**os.environ, "FSG_HOME": str(home), "FSG_API_PORT": str(port), "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("FSG_RAY_DASHBOARD_PORT", str(free_port()))
    console.rule(f"fsg up (FSG_HOME={home})")
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        client = None
        while time.monotonic() < deadline and client is None:
            if up.poll() is not None:
                raise RuntimeError(f"fsg up exited with {up.returncode}")
            try:
                candidate = Client.from_env(home)
                candidate.health()
                client = candidate
            except Exception:  # not up yet
                time.sleep(0.5)
        if client is None:
            raise RuntimeError("fsg up did not come up within 120 s")
        train_spec = json.loads((HERE / "service_train_fsg.json").read_text())
        search_spec = json.loads((HERE / "service_search_fsg.json").read_text())
        train = client.submit(train_spec)
        search = client.submit(search_spec)
        console.print(f"submitted training job {train['id']} and search job {search['id']}")
        finals = follow_many(client, [train, search])
        for job in finals:
            console.print(f"{job['name']}: [bold]{job['state']}[/bold] {job.get('error') or ''}")
        if any(job["state"] != "succeeded" for job in finals):
            return 1
        trials = client.trials(search["id"])
        for t in trials:
            mark = " <- best" if t["is_best"] else ""
            console.print(f"  trial {t['trial_key']}: {t['state']} val_acc={t['metric']} config={t['config']}{mark}")
        path = client.download(train["id"], home / "model.packed.safetensors")
        packed = load_packed(path)
        reported = client.metrics(train["id"])[-1]["test_acc"]
        test = build_splits(JobSpec.model_validate(train_spec).train_spec().data, seed=0).test
        with torch.no_grad():
            accuracy = (packed.model(test.images).argmax(1) == test.labels).float().mean().item()
        console.print(
            f"downloaded {path.name} ({path.stat().st_size:,} bytes): test accuracy {accuracy:.4f}, "
            f"the job reported {reported:.4f}"
        )
        if round(accuracy * len(test)) != round(reported * len(test)):
            console.print("[red]the packed model does not reproduce the reported accuracy[/red]")
            return 1
        return 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        console.rule("fsg stopped")


if __name__ == "__main__":
    sys.exit(main())

"""``fsg up``, ``fsg api`` and ``fsg dispatcher``: run the service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


def _settings(**overrides: Any) -> Any:
    from service.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def ensure_client_config(settings: Any) -> Path:
    """Write ``<FSG_HOME>/client.json`` (API address and a token of tenant ``default``) if missing."""
    from service.client import client_config_path
    from service.db.engine import Database
    from service.security import create_token

    path = client_config_path(settings.home)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("url") == settings.resolved_api_url:
            return path
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.write() as session:
            token = create_token(session, "default", "fsg up", settings.token_ttl_days)
    finally:
        db.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 (not written, then chmod-ed): the token is never readable by others, not for an instant.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"url": settings.resolved_api_url, "token": token}))
    tmp.replace(path)
    return path


def _settings_env(settings: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["FSG_HOME"] = str(settings.home)
    env["FSG_DATABASE_URL"] = settings.resolved_database_url
    env["FSG_API_HOST"] = settings.api_host
    env["FSG_API_PORT"] = str(settings.api_port)
    return env


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (an API left behind by a killed ``fsg up``)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """In the API's child process, before exec: SIGTERM when ``fsg up`` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the API outlives a killed parent, as before
        pass


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0, instance: str | None = None) -> None:
    """Until ``proc`` answers ``/healthz`` (with ``instance`` in ``X-FSG-Instance`` when given: another process
    answering on the port does not count)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}")
        try:
            answer = httpx.get(f"{url}/healthz", timeout=2)
            if answer.status_code == 200 and (instance is None or answer.headers.get("x-fsg-instance") == instance):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer on {url} within {timeout_s:.0f} s")


def up(
    home: Annotated[Path | None, typer.Option(help="state directory (FSG_HOME, default ./.fsg)")] = None,
    host: Annotated[str | None, typer.Option(help="API host (FSG_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="API port (FSG_API_PORT)")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (FSG_RAY_NUM_CPUS)")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="also library chatter: Alembic's migrations, Ray's start-up (FSG_VERBOSE)")
    ] = False,
) -> None:
    """Start everything on this machine: the API, the dispatcher and a local Ray (or RAY_ADDRESS's)."""
    from service.db.migrate import upgrade
    from service.logging_config import configure_logging
    from workers.dispatcher import main as run_dispatcher

    settings = _settings(home=home, api_host=host, api_port=port, ray_num_cpus=num_cpus, verbose=verbose or None)
    settings.home.mkdir(parents=True, exist_ok=True)
    if port_in_use(settings.api_host, settings.api_port):
        console.print(
            f"[red]port {settings.api_port} on {settings.api_host} is taken[/red]: another fsg up, or an API a killed "
            "one left behind? Stop it, or choose another with --port / FSG_API_PORT."
        )
        raise typer.Exit(1)
    configure_logging(settings)  # the one place that quiets Alembic unless --verbose (the dispatcher calls it too)
    upgrade(settings.resolved_database_url)
    config = ensure_client_config(settings)
    instance = uuid.uuid4().hex
    env = _settings_env(settings) | {"FSG_VERBOSE": "1" if settings.verbose else "0", "FSG_INSTANCE_ID": instance}
    # Its own session (a Ctrl-C in the terminal reaches fsg up alone, which stops the API in order), and it
    # dies with fsg up however fsg up ends: never an orphan API holding the port.
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api"], env=env, start_new_session=True, preexec_fn=_die_with_parent
    )
    try:
        wait_healthy(settings.resolved_api_url, api, instance=instance)
        url = settings.resolved_api_url
        console.print(f"[green]API[/green] {url}  (docs {url}/docs, dashboard {url}/ui/)")
        console.print(
            f"[green]token[/green] in {config} (the CLI reads it with FSG_HOME={settings.home}; paste it into the "
            "dashboard's sign-in)"
        )
        console.print(f"[green]database[/green] {settings.database_url_for_display}")
        run_dispatcher(settings)  # blocks; returns on SIGTERM/SIGINT
    finally:
        if api.poll() is None:
            api.send_signal(signal.SIGINT)
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api.kill()
        console.print("fsg stopped")


def api(
    host: Annotated[str | None, typer.Option(help="FSG_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="FSG_API_PORT")] = None,
) -> None:
    """Run only the REST API (uvicorn)."""
    import uvicorn

    from service.app import create_app
    from service.logging_config import configure_logging

    settings = _settings(api_host=host, api_port=port)
    configure_logging(settings)  # FSG_LOG_FORMAT; log_config=None below keeps uvicorn's records in it
    uvicorn.run(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning", log_config=None
    )


def dispatcher() -> None:
    """Run only a dispatcher (several may run against PostgreSQL)."""
    from workers.dispatcher import main as run_dispatcher

    run_dispatcher(_settings())


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("api")(api)
    app.command("dispatcher")(dispatcher)

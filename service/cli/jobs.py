"""``fsg submit``, ``jobs``, ``show``, ``cancel``, ``logs``, ``download``: the service from a terminal."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

console = Console()
err = Console(stderr=True)


def _client() -> Any:
    from service.client import ApiError, Client

    try:
        return Client.from_env()
    except ApiError as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    err.print(f"[red]{exc}[/red]")
    raise typer.Exit(1)


def _epochs(job: dict[str, Any]) -> int:
    spec = job["spec"]
    epochs = spec.get("epochs", 0) + spec.get("init", {}).get("pretrain_epochs", 0)
    trials = (spec.get("search") or {}).get("num_samples", 1) if spec.get("kind") == "search" else 1
    return int(epochs * trials)


def estimate_eta_s(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left at the pace so far: ``elapsed_s / done`` per epoch, times the epochs left.

    None before the first epoch (no pace yet) or without a total; 0 once ``done`` reaches ``total``.
    """
    if done <= 0 or total <= 0 or elapsed_s < 0:
        return None
    return elapsed_s / done * max(total - done, 0)


def _server_time(value: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


class JobWatch:
    """What one job's progress line shows, updated by its events: state, epochs done of the total,
    search trials, the latest epoch's validation accuracy, and the time left.

    Times come from the events' server timestamps, so attaching to a job that has run for an hour (its
    past events replay at once) estimates from its real pace.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        self.total = _epochs(job)
        self.num_trials = int((spec.get("search") or {}).get("num_samples", 1)) if job["kind"] == "search" else 0
        self.state: str = job["state"]
        self.done = 0
        self.latest = ""  # "binary 3 val_acc=0.512"
        self.running_since: datetime | None = None  # when the job first ran (server clock)
        self.latest_at: datetime | None = None  # when its latest epoch was reported
        self.trials: set[str] = set()
        self.trials_ended: set[str] = set()
        self._seen: set[tuple[str, str, int]] = set()

    def on_event(self, event: Any) -> None:
        """Take one ``Client.events`` event (a state change, an epoch's metrics or a trial)."""
        stamp = _server_time(event.data.get("created_at"))
        data = event.data.get("data") or {}
        if event.kind == "state":
            self.state = str(event.data.get("to_state") or self.state)
            if self.state == "running" and self.running_since is None:
                self.running_since = stamp
        elif event.kind == "metric":  # data: {"trial_key", "phase", "epoch", "attempt", "values"}
            key = (str(data.get("trial_key", "")), str(data.get("phase")), int(data.get("epoch", 0)))
            if key not in self._seen:  # a resumed attempt re-reports epochs: count each once
                self._seen.add(key)
                self.done += 1
            if key[0]:
                self.trials.add(key[0])
            self.latest_at = stamp or self.latest_at
            acc = (data.get("values") or {}).get("val_acc")
            self.latest = f"{key[1]} {key[2]}" + (f" val_acc={acc:.3f}" if isinstance(acc, float) else "")
        elif event.kind == "trial" and data.get("trial_key"):
            self.trials.add(str(data["trial_key"]))
            if data.get("state") in ("succeeded", "failed", "stopped"):
                self.trials_ended.add(str(data["trial_key"]))

    def eta_s(self, now: datetime | None = None) -> float | None:
        """Seconds left from ``now`` (default: this machine's clock): the pace from the job's first run
        to its latest epoch, times the epochs left, less the time since that epoch. None once the job
        has ended or before its first epoch."""
        from service.client import TERMINAL

        if self.state in TERMINAL or self.running_since is None or self.latest_at is None:
            return None
        eta = estimate_eta_s((self.latest_at - self.running_since).total_seconds(), self.done, self.total)
        if eta is None:
            return None
        since_latest = ((now or datetime.now(UTC)) - self.latest_at).total_seconds()
        return max(eta - max(since_latest, 0.0), 0.0)

    def status(self) -> str:
        parts = [self.state]
        if self.num_trials:
            running = len(self.trials - self.trials_ended)
            parts.append(f"trials {len(self.trials_ended)}/{self.num_trials} done, {running} running")
        if self.latest:
            parts.append(self.latest)
        return " · ".join(parts)


class _EtaColumn(ProgressColumn):
    """Time left, counting down from the latest estimate (the task's ``eta_at``, a monotonic deadline)."""

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("eta_at")
        if deadline is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = timedelta(seconds=max(int(deadline - time.monotonic()), 0))
        return Text(f"eta {left}", style="progress.remaining")


class JobProgress:
    """Progress bars of jobs (epochs done of the total, state, trials, elapsed, ETA), each fed by the
    job's event stream on a background thread.

    with JobProgress(client, jobs) as progress:
        progress.print("a line above the bars")
        progress.wait()  # until every job has ended
    """

    def __init__(self, client: Any, jobs: list[dict[str, Any]], *, quiet: bool = False) -> None:
        self.client, self.jobs = client, jobs
        self.watches = {job["id"]: JobWatch(job) for job in jobs}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=console,
            disable=quiet,
        )
        self._threads = [threading.Thread(target=self._watch, args=(job,), daemon=True) for job in jobs]

    def __enter__(self) -> JobProgress:
        self.progress.start()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def print(self, line: str) -> None:
        """Write ``line`` as is (no markup) above the bars."""
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()

    def _watch(self, job: dict[str, Any]) -> None:
        watch = self.watches[job["id"]]
        description = f"{job['name']} ({job['id'][:8]})"
        task = self.progress.add_task(description, total=watch.total, status=watch.status(), eta_at=None)
        for event in self.client.events(job["id"]):
            watch.on_event(event)
            eta = watch.eta_s()
            self.progress.update(
                task,
                completed=watch.done,
                status=watch.status(),
                eta_at=None if eta is None else time.monotonic() + eta,
            )


def follow_many(client: Any, jobs: list[dict[str, Any]], *, quiet: bool = False) -> list[dict[str, Any]]:
    """Progress bars (epochs done, state, trials, last validation accuracy, ETA) fed by each job's event
    stream, until every job ends; returns the final jobs."""
    with JobProgress(client, jobs, quiet=quiet) as progress:
        progress.wait()
    return [client.job(job["id"]) for job in jobs]


def follow(client: Any, job: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Show one job's progress until it ends; returns the final job."""
    return follow_many(client, [job], quiet=quiet)[0]


def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.json", help="job spec (JSON)")],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow the job with a progress bar until it ends")
    ] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="replaying the same key returns the same job")] = None,
    dry_run: Annotated[bool, typer.Option(help="validate only; print the resolved spec")] = False,
) -> None:
    """Submit a training or search job."""
    from service.client import ApiError

    client = _client()
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        _fail(ValueError(f"cannot read {spec_path}: {exc}"))
    try:
        job = client.submit(spec, idempotency_key=idempotency_key, dry_run=dry_run)
    except ApiError as exc:
        _fail(exc)
    if dry_run:
        console.print_json(json.dumps(job))
        return
    console.print(f"submitted [bold]{job['id']}[/bold] ({job['state']})")
    if wait:
        final = follow(client, job)
        console.print(
            f"{final['id']}: [bold]{final['state']}[/bold]" + (f" — {final['error']}" if final.get("error") else "")
        )
        if final.get("summary"):
            console.print_json(json.dumps(final["summary"]))
        if final["state"] != "succeeded":
            raise typer.Exit(1)


def jobs(
    status: Annotated[list[str] | None, typer.Option(help="filter by state (repeatable)")] = None,
    name: Annotated[str | None, typer.Option(help="filter by name")] = None,
    limit: Annotated[int, typer.Option(help="rows")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    from service.client import ApiError

    try:
        page = _client().jobs(limit=limit, status=status, name=name)
    except ApiError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(page))
        return
    table = Table()
    for col in ("id", "name", "kind", "state", "estimator", "attempts", "best val acc", "created"):
        table.add_column(col)
    for job in page["items"]:
        summary = job.get("summary") or {}
        best = summary.get("best_val_acc")
        table.add_row(
            job["id"][:12],
            job["name"],
            job["kind"],
            job["state"],
            job["spec"].get("estimator", {}).get("name", ""),
            str(job["attempts"]),
            f"{best:.3f}" if isinstance(best, float) else "-",
            str(job["created_at"])[:19],
        )
    console.print(table)


def show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's state, attempts, summary and error."""
    from service.client import ApiError

    try:
        job = _client().job(job_id)
    except ApiError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(job))
        return
    for key in ("id", "name", "kind", "state", "attempts", "created_at", "started_at", "finished_at", "error"):
        console.print(f"[bold]{key}[/bold]: {job.get(key)}")
    if job.get("ray_dashboard_url"):
        console.print(f"[bold]ray dashboard[/bold]: {job['ray_dashboard_url']}")
    if job.get("summary"):
        console.print_json(json.dumps(job["summary"]))


def cancel(job_id: str) -> None:
    """Cancel a job: at once if queued, after Ray has stopped if running."""
    from service.client import ApiError

    try:
        job = _client().cancel(job_id)
    except ApiError as exc:
        _fail(exc)
    console.print(f"{job['id']}: {job['state']}")


def logs(
    job_id: str, follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False
) -> None:
    """Print a job's log; with --follow on a terminal, under a progress bar (epochs, trials, ETA)."""
    from service.client import ApiError

    client = _client()
    try:
        if follow_ and console.is_terminal:
            with JobProgress(client, [client.job(job_id)]) as progress:
                for line in client.logs(job_id, follow=True):
                    progress.print(line)
                progress.wait()
        else:  # piped or not following: the plain lines, nothing else
            for line in client.logs(job_id, follow=follow_):
                typer.echo(line)
    except ApiError as exc:
        _fail(exc)


_DOWNLOAD_SUFFIX = {"packed": "packed.safetensors", "onnx": "onnx", "full": "checkpoint.pt"}


def download(
    job_id: str,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="destination file")] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="packed (1-bit model), onnx (the packed model as ONNX) or full (training state)"),
    ] = "packed",
    checkpoint: Annotated[str, typer.Option(help="checkpoint id, or latest")] = "latest",
) -> None:
    """Download a job's checkpoint."""
    from service.client import ApiError

    if fmt not in _DOWNLOAD_SUFFIX:
        _fail(ValueError(f"--format must be one of {', '.join(_DOWNLOAD_SUFFIX)}"))
    dest = out or Path(f"{job_id}.{_DOWNLOAD_SUFFIX[fmt]}")
    try:
        path = _client().download(job_id, dest, checkpoint=checkpoint, fmt=fmt)
    except ApiError as exc:
        _fail(exc)
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("jobs")(jobs)
    app.command("show")(show)
    app.command("cancel")(cancel)
    app.command("logs")(logs)
    app.command("download")(download)

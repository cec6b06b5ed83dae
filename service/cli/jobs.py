"""``fsg submit``, ``jobs``, ``show``, ``cancel``, ``logs``, ``download``: the service from a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


def follow_many(client: Any, jobs: list[dict[str, Any]], *, quiet: bool = False) -> list[dict[str, Any]]:
    """Progress bars (epochs done, state, last validation accuracy) fed by each job's event stream,
    until every job ends; returns the final jobs."""
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as progress:

        def watch(job: dict[str, Any]) -> None:
            task = progress.add_task(f"{job['name']} ({job['id'][:8]})", total=_epochs(job), status=job["state"])
            seen: set[tuple[str, str, int]] = set()
            for event in client.events(job["id"]):
                if event.kind == "state":
                    progress.update(task, status=str(event.data.get("to_state", "")))
                elif event.kind == "metric":
                    data = event.data.get("data") or {}  # {"trial_key", "phase", "epoch", "attempt", "values"}
                    key = (str(data.get("trial_key", "")), str(data.get("phase")), int(data.get("epoch", 0)))
                    if key not in seen:
                        seen.add(key)
                        progress.advance(task)
                    acc = (data.get("values") or {}).get("val_acc")
                    progress.update(
                        task, status=f"{key[1]} {key[2]}" + (f" val_acc={acc:.3f}" if isinstance(acc, float) else "")
                    )

        threads = [threading.Thread(target=watch, args=(job,), daemon=True) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
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
    """Print a job's log."""
    from service.client import ApiError

    try:
        for line in _client().logs(job_id, follow=follow_):
            typer.echo(line)
    except ApiError as exc:
        _fail(exc)


def download(
    job_id: str,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="destination file")] = None,
    fmt: Annotated[str, typer.Option("--format", help="packed (1-bit model) or full (training state)")] = "packed",
    checkpoint: Annotated[str, typer.Option(help="checkpoint id, or latest")] = "latest",
) -> None:
    """Download a job's checkpoint."""
    from service.client import ApiError

    if fmt not in ("packed", "full"):
        _fail(ValueError("--format must be packed or full"))
    dest = out or Path(f"{job_id}.{'packed.safetensors' if fmt == 'packed' else 'checkpoint.pt'}")
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

"""``fsg study SPEC.json [--wait]`` submits a study (variants x seeds) and, with ``--wait``, shows its
trials finishing and then its table; ``fsg study JOB_ID`` prints the table of a study so far."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.cli.jobs import _client, _fail, console

# (figure, header, format): the table's columns, each a mean with its interval.
COLUMNS = (
    ("best_val_acc", "best val acc", ".4f"),
    ("test_acc_at_best_val", "test @ best val", ".4f"),
    ("final_test_acc", "final test acc", ".4f"),
    ("final_train_loss", "final train loss", ".4f"),
    ("mean_step_time_s", "step (s)", ".4f"),
)


def _interval(cell: dict[str, Any] | None, fmt: str) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    text = format(cell["mean"], fmt)
    if cell.get("low") is not None:
        text += f" [{format(cell['low'], fmt)}, {format(cell['high'], fmt)}]"
    return text


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def study_rows(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The study's table as text: per variant each figure's mean [95% interval], and against the
    baseline the mean difference of best val accuracy [interval], paired t-test and sign-test p, wins/losses.
    Shared by the terminal table and ``fsg report``."""
    headers = ["variant", "seeds", *(header for _, header, _ in COLUMNS), "Δ best val vs baseline", "t-test p"]
    headers += ["sign p", "W/L"]
    rows = []
    for row in study["variants"]:
        vs = (row.get("vs_baseline") or {}).get("best_val_acc")
        rows.append(
            [
                row["name"],
                str(row["trials_done"]),
                *(_interval(row["figures"].get(key), fmt) for key, _, fmt in COLUMNS),
                _interval(vs, "+.4f") if vs else "(baseline)",
                _p(vs.get("t_p")) if vs else "",
                _p(vs.get("sign_p")) if vs else "",
                f"{vs['wins']}/{vs['losses']}" if vs else "",
            ]
        )
    return headers, rows


def study_title(study: dict[str, Any]) -> str:
    level = f"{study['confidence']:.0%}"
    return f"{study['seeds']} seeds; means [{level} t interval]; baseline {study['baseline']}"


def study_table(study: dict[str, Any]) -> Table:
    """The study as a rich table (``study_rows``)."""
    headers, rows = study_rows(study)
    table = Table(title=study_title(study))
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def study(
    spec_or_job: Annotated[
        str, typer.Argument(metavar="SPEC.json|JOB_ID", help="a study spec to submit, or a study job")
    ],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="show the trials finishing, then the table")] = False,
    poll_s: Annotated[float, typer.Option(min=0.2, help="seconds between two looks at the study")] = 5.0,
) -> None:
    """Run a study (variants x seeds, each seed with its own split and shared pre-training) or show one."""
    from service.client import ApiError

    client = _client()
    path = Path(spec_or_job)
    try:
        if path.suffix == ".json" or path.exists():
            try:
                spec = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                _fail(ValueError(f"cannot read {path}: {exc}"))
            job = client.submit({**spec, "kind": "study"})
            console.print(f"submitted study [bold]{job['id']}[/bold] ({job['state']})")
        else:
            job = client.job(spec_or_job)
            wait = wait and job["state"] not in ("succeeded", "failed", "cancelled")
        if wait:
            job = _follow(client, job, poll_s)
        console.print(study_table(client.study(job["id"])))
    except ApiError as exc:
        _fail(exc)
    if wait and job["state"] != "succeeded":
        console.print(f"{job['id']}: [bold]{job['state']}[/bold]" + (f" — {job['error']}" if job.get("error") else ""))
        raise typer.Exit(1)


def _follow(client: Any, job: dict[str, Any], poll_s: float) -> dict[str, Any]:
    """Show trials done / total until the study ends; returns the final job."""
    spec = job["spec"]["study"]
    total = len(spec["variants"]) * spec["seeds"]
    with console.status("") as status:
        while True:
            job = client.job(job["id"])
            done = sum(row["trials_done"] for row in client.study(job["id"])["variants"])
            status.update(f"study {job['id'][:8]} {job['state']}: {done}/{total} trials done")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(poll_s)


def register(app: typer.Typer) -> None:
    app.command("study")(study)

"""``fsg train``, ``fsg summary`` and ``fsg estimators``: the core, without the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


def _load_spec(path: Path):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from fsg_core.spec import TrainSpec

    try:
        text = path.read_text()
    except OSError as exc:
        err.print(f"[red]cannot read {path}: {exc.strerror}[/red]")
        raise typer.Exit(2) from None
    try:
        return TrainSpec.model_validate_json(text)
    except ValidationError as exc:
        err.print(f"[red]{path} is not a valid training spec:[/red]")
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(root)"
            err.print(f"  [bold]{loc}[/bold]: {e['msg']}")
        raise typer.Exit(2) from None


def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.json", help="training spec (JSON)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output directory (default runs/<spec name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/checkpoint.pt if it exists")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Train SPEC.json in this process; write metrics (JSON, CSV), checkpoint.pt and model.packed.safetensors."""
    from fsg_core.checkpoint import CheckpointError
    from fsg_core.checkpoint_dir import PACKED_FILE, read_checkpoint_dir
    from fsg_core.data import DatasetError
    from fsg_core.reporting import FileReporter, MultiReporter, TqdmReporter
    from fsg_core.train import fit

    spec = _load_spec(spec_path)
    out_dir = out or Path("runs") / spec_path.stem
    files = FileReporter(out_dir)
    found = read_checkpoint_dir(out_dir) if resume else None
    # A path, not the loaded state: fit loads it inside the try below, where a bad file is reported.
    resume_from = found.checkpoint_path if found else None
    if resume_from:
        console.print(f"resuming from {resume_from}")
    try:
        result = fit(spec, MultiReporter([files, TqdmReporter(disable=quiet)]), resume=resume_from)
    except (DatasetError, CheckpointError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    packed = out_dir / PACKED_FILE
    size = result.save_packed(packed)
    table = Table(title=f"{spec.estimator.name} on {spec.data.dataset} ({spec.model.arch})", show_header=False)
    for key, value in result.summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("packed model", f"{packed} ({size / 1024:.1f} KiB)")
    console.print(table)
    console.print(f"metrics: {out_dir / 'metrics.csv'}  checkpoint: {files.checkpoint_path}")


def summary(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="a packed model (.safetensors)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Print the larq-style table of a packed model with its measured size and compression ratio."""
    from fsg_core.packed import PackedFormatError
    from fsg_core.summary import ModelSummary, describe_packed, format_summary

    try:
        info = describe_packed(path)
    except (PackedFormatError, FileNotFoundError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(info))
        return
    # Already laid out at its own width; rich would re-wrap it at 80 columns when piped.
    typer.echo(format_summary(ModelSummary.from_dict(info["summary"])))
    console.print(
        f"file: {info['file_bytes']:,} bytes; fp32 state dict: {info['fp32_state_dict_bytes']:,} bytes; "
        f"compression x{info['compression_ratio']:.1f}"
    )


def estimators(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List the gradient estimators with their hyperparameters and defaults."""
    from fsg_core.estimators import describe

    rows = describe()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="gradient estimators")
    for col in ("name", "kind", "hyperparameters (default)", "reference"):
        table.add_column(col)
    for row in rows:
        params = ", ".join(f"{p['name']}={p.get('default')}" for p in row["params"]) or "-"
        table.add_row(row["name"], row["kind"], params, row["reference"])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("summary")(summary)
    app.command("estimators")(estimators)

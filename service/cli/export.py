"""``fsg export``: a packed model as a file other runtimes open (ONNX), without the service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


def export(
    path: Annotated[Path, typer.Argument(metavar="MODEL", help="a packed model (.packed.safetensors)")],
    fmt: Annotated[Literal["onnx"], typer.Option("--format", help="the output format")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="destination (default: MODEL with .onnx)")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 17)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="store the ±1 weights as float16: half the file")] = False,
) -> None:
    """Export a packed 1-bit model to ONNX: ±1 weights as initializers, BatchNorm folded, input
    normalisation in the graph, the packed header as metadata; runs in ONNX Runtime, TensorRT, OpenVINO."""
    from fsg_core.export import DEFAULT_OPSET, ExportError, MissingExportExtra, to_onnx
    from fsg_core.packed import PackedFormatError

    name = path.name.removesuffix(".safetensors").removesuffix(".packed")
    dest = out or path.with_name(f"{name if name != path.name else path.stem}.{fmt}")
    try:
        written = to_onnx(path, dest, opset=opset or DEFAULT_OPSET, fp16=fp16)
    except MissingExportExtra as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(3) from None
    except (PackedFormatError, ExportError) as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    except FileNotFoundError as exc:
        err.print(f"[red]{exc.filename or path}: no such file[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"wrote {dest} ({written:,} bytes, opset {opset or DEFAULT_OPSET}{', fp16' if fp16 else ''})")


def register(app: typer.Typer) -> None:
    app.command("export")(export)

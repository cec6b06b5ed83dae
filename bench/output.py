"""What every bench script shares around its figures: ``--json`` (keep every figure), ``--report``
(print the tables of an earlier ``--json`` file, no measuring), ``--markdown`` (the same tables as
GitHub markdown, for the README: ``TableConsole``) and progress on stderr, so stdout carries the
tables alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fsg_core.files import write_atomic

__all__ = ["MarkdownTable", "TableConsole", "add_output_options", "log", "read_report", "write_json"]


def add_output_options(parser: argparse.ArgumentParser, *, markdown: bool = True) -> None:
    """``--json`` and ``--report`` (and ``--markdown`` unless the script prints rich tables only)."""
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of an earlier --json file")
    if markdown:
        parser.add_argument("--markdown", action="store_true", help="tables as GitHub markdown")


def log(msg: str) -> None:
    """A progress line: stderr, flushed at once (a long run shows where it is)."""
    print(msg, file=sys.stderr, flush=True)


def read_report(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path | None, result: Any) -> None:
    """``result`` to ``path`` (when given), whole or not at all: an interrupted run leaves no half file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=1, default=str).encode())


class MarkdownTable:
    """The few ``rich.table.Table`` calls the bench scripts use, rendered as a GitHub markdown table."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.columns: list[tuple[str, str]] = []
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, name: str, justify: str = "left") -> None:
        self.columns.append((name, justify))

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        head = "| " + " | ".join(c for c, _ in self.columns) + " |"
        rule = "|" + "|".join("---:" if j == "right" else "---" for _, j in self.columns) + "|"
        body = ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join([f"**{self.title}**", "", head, rule, *body, ""])


class TableConsole:
    """Prints rich tables to stdout, or (``markdown``) the same tables as GitHub markdown."""

    def __init__(self, markdown: bool, width: int = 160) -> None:
        from rich.console import Console
        from rich.table import Table

        self.Table: Any = MarkdownTable if markdown else Table
        self._console = None if markdown else Console(width=width)

    def table(self, title: str) -> Any:
        return self.Table(title=title)

    def print(self, obj: Any) -> None:
        if self._console is not None:
            self._console.print(obj)
        else:
            print(obj.render() if isinstance(obj, MarkdownTable) else f"{obj}\n")

"""The bench scripts' shared output: markdown tables, --json written whole, --report reprinting it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.output import MarkdownTable, TableConsole, add_output_options, read_report, write_json


def test_a_markdown_table_right_aligns_the_columns_it_is_told_to() -> None:
    table = MarkdownTable("Cost")
    table.add_column("variant")
    table.add_column("step", justify="right")
    table.add_row("ste", "1.0 ms")
    table.add_row("fsg", "1.3 ms")
    assert table.render().splitlines() == [
        "**Cost**",
        "",
        "| variant | step |",
        "|---|---:|",
        "| ste | 1.0 ms |",
        "| fsg | 1.3 ms |",
    ]


def test_the_markdown_console_prints_tables_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    console = TableConsole(markdown=True)
    table = console.table("T")
    assert isinstance(table, MarkdownTable)
    table.add_column("a")
    table.add_row("1")
    console.print("meta line")
    console.print(table)
    out = capsys.readouterr().out
    assert out.index("meta line") < out.index("| a |") and "| 1 |" in out


def test_json_is_written_whole_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "figures.json"
    write_json(target, {"ratio": 1.25, "when": Path("x")})  # default=str: a Path is kept as its text
    assert read_report(target) == {"ratio": 1.25, "when": "x"}
    assert [p.name for p in target.parent.iterdir()] == ["figures.json"]  # no temporary file left behind
    write_json(None, {"ignored": True})  # no --json: nothing written, no error


def test_the_options_parse_as_every_script_documents() -> None:
    parser = argparse.ArgumentParser()
    add_output_options(parser)
    args = parser.parse_args(["--json", "a.json", "--report", "b.json", "--markdown"])
    assert (args.json, args.report, args.markdown) == (Path("a.json"), Path("b.json"), True)
    plain = argparse.ArgumentParser()
    add_output_options(plain, markdown=False)
    with pytest.raises(SystemExit):
        plain.parse_args(["--markdown"])


def test_fsg_cost_reprints_an_earlier_run_without_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import fsg_cost

    saved = {
        "meta": {"threads": 2, "reps": 3},
        "shapes": {
            "digits": {
                "ste": {"step_time_s": 0.002, "step_time_median_s": 0.0019},
                "fsg": {
                    "step_time_s": 0.0026,
                    "step_time_median_s": 0.0025,
                    "step_time_vs_ste": 1.3,
                    "round_ratios": [1.29, 1.31],
                },
            }
        },
        "goals": [{"goal": "FSG on digits at most 1.5x STE", "ratio": 1.3, "met": True}],
    }
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(saved))
    assert fsg_cost.main(["--report", str(path), "--markdown"]) == saved
    out = capsys.readouterr().out
    assert "| fsg | 2.6 ms | 2.5 ms | 1.30x | 1.29 1.31 |" in out
    assert "- FSG on digits at most 1.5x STE: 1.30x, met" in out

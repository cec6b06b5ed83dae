"""``fsg compare`` and ``fsg report`` through typer's CliRunner, their Client bound to the test app."""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from fsg_core.train import summarize_history
from service.cli import app as cli
from service.cli import compare as compare_cli
from service.client import Client

runner = CliRunner()


def history(pretrain: int, binary: int, *, shift: float) -> list[dict[str, Any]]:
    rows = [
        {"phase": "pretrain", "epoch": e, "train_loss": 2.4 - 0.2 * e, "val_acc": 0.3 + 0.05 * e + shift}
        for e in range(1, pretrain + 1)
    ]
    for e in range(1, binary + 1):
        rows.append(
            {
                "phase": "binary",
                "epoch": e,
                "train_loss": 1.5 / e + shift,
                "train_acc": 0.4 + 0.03 * e,
                "val_acc": 0.45 + 0.04 * e - 0.006 * e * e + shift,
                "test_acc": 0.44 + 0.035 * e - 0.005 * e * e,
                "step_time_s": 0.012 + shift,
            }
        )
    return rows


@pytest.fixture
def two_jobs(submit: Any, worker: Any) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    a = submit(name="baseline", estimator={"name": "ste"})
    b = submit(name="clipped", estimator={"name": "clipped_ste"}, init={"pretrain_epochs": 3})
    rows_a, rows_b = history(1, 6, shift=0.0), history(3, 5, shift=0.03)
    rows_b[4]["val_acc"] = math.nan  # stored as null: drawn as a gap
    worker.start(a["id"])
    worker.report(a["id"], rows_a)
    worker.report(b["id"], rows_b)
    return [(a, rows_a), (b, rows_b)]


def test_compare_prints_the_table_and_plots_the_stored_metrics(
    api: Client, two_jobs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Any] = []

    def spy(payload: dict[str, Any]) -> Any:
        drawn.append(real(payload))
        return drawn[-1]

    real = compare_cli.build_figure
    monkeypatch.setattr(compare_cli, "build_figure", spy)
    png = tmp_path / "plots" / "cmp.png"
    (a, _), (b, _) = two_jobs
    result = runner.invoke(cli, ["compare", a["id"], b["id"], "--plot", str(png)])
    assert result.exit_code == 0, result.output

    for header in ("job", "estimator", "state", "best val acc", "last-k test acc", "final train loss", "packed size"):
        assert header in result.output
    for job, rows in two_jobs:
        line = next(line for line in result.output.splitlines() if job["id"][:8] in line)
        assert job["name"] in line and job["spec"]["estimator"]["name"] in line
        assert f"{summarize_history(rows)['best_val_acc']:.4f}" in line
        assert f"{summarize_history(rows)['last_k_test_acc']:.4f}" in line

    with Image.open(png) as image:  # a real PNG, of the figure's size
        assert image.format == "PNG" and image.size[0] > 600
    (figure,) = drawn
    loss_ax, val_ax = figure.axes[:2]
    assert (loss_ax.get_title(), val_ax.get_title()) == ("train loss", "val accuracy")
    for ax, key in ((loss_ax, "train_loss"), (val_ax, "val_acc")):
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert [line.get_label() for line in curves] == ["baseline / ste", "clipped / clipped_ste"]
        for line, (job, rows) in zip(curves, two_jobs, strict=True):
            stored = api.metrics(job["id"])  # what the database holds, in the order the curve draws it
            assert [(r["phase"], r["epoch"]) for r in stored] == [(r["phase"], r["epoch"]) for r in rows]
            expected = [math.nan if r.get(key) is None else r[key] for r in stored]
            assert list(line.get_xdata()) == list(range(1, len(stored) + 1))  # the global epoch
            assert list(line.get_ydata()) == pytest.approx(expected, nan_ok=True)
            assert expected == pytest.approx([r.get(key, math.nan) for r in rows], nan_ok=True)
        # Dotted: where each job's binarization starts (after 1 and after 3 pre-training epochs).
        starts = [line for line in ax.get_lines() if line.get_label().startswith("_binarization")]
        assert sorted(line.get_xdata()[0] for line in starts) == [1.5, 3.5]
        assert {line.get_linestyle() for line in starts} == {":"}


def test_compare_json_prints_the_api_answer(api: Client, two_jobs: Any) -> None:
    (a, _), (b, _) = two_jobs
    result = runner.invoke(cli, ["compare", b["id"], a["id"], "--json"])
    assert result.exit_code == 0, result.output
    assert [job["id"] for job in json.loads(result.output)["jobs"]] == [b["id"], a["id"]]


def test_compare_of_an_unknown_job_fails_naming_it(api: Client, two_jobs: Any) -> None:
    (a, _), _ = two_jobs
    result = runner.invoke(cli, ["compare", a["id"], "f" * 32])
    assert result.exit_code == 1
    assert f"job {'f' * 32} not found" in result.output


class Page(HTMLParser):
    """Checks nesting while it reads, and collects tags and every attribute that could load something."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: Counter[str] = Counter()
        self.references: list[str] = []
        self.ids: set[str] = set()

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href", "xlink:href", "action", "srcset", "data", "poster"):
                self.references.append(value or "")
            self.references.extend(re.findall(r"url\(\s*['\"]?([^'\")]*)", value or ""))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def read_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    assert page.open == [], f"unclosed: {page.open}"
    return page


def test_report_is_one_self_contained_html_page(
    api: Client, two_jobs: Any, worker: Any, artifacts: Any, tmp_path: Path
) -> None:
    (job, rows), _ = two_jobs
    packed, full = artifacts(job["id"], 6)
    worker.checkpoint(job["id"], epoch=6, packed=packed, full=full)
    worker.finish(job["id"])
    out = tmp_path / "report.html"
    result = runner.invoke(cli, ["report", job["id"], "--out", str(out)])
    assert result.exit_code == 0, result.output

    text = out.read_text(encoding="utf-8")
    page = read_page(text)
    assert text.startswith("<!DOCTYPE html>")
    assert page.tags["svg"] == 1 and page.tags["details"] == 1 and page.tags["table"] >= 2
    # Every reference (glyphs, markers, clip paths of the SVG) points at an element of the page itself.
    assert page.references and {ref.removeprefix("#") for ref in page.references} <= page.ids, page.references
    assert all(ref.startswith("#") for ref in page.references)
    outside_spec = text[: text.index("<details>")] + text[text.index("</details>") :]
    assert "http://" not in outside_spec and "https://" not in outside_spec
    assert "<script" not in text and "<link" not in text
    assert f"<h1>{job['name']}</h1>" in text
    assert f"{summarize_history(rows)['best_val_acc']:.4f}" in text
    spec = text.split("<details><summary>spec</summary><pre>")[1].split("</pre></details>")[0]
    assert json.loads(html.unescape(spec)) == job["spec"]
    assert "<b>succeeded</b>" in text
    model = text.split("<h2>Model</h2>")[1]  # the model summary of the packed file
    assert "Compression ratio" in model and "x smaller" in model


def test_report_of_a_search_lists_its_trials(api: Client, submit: Any, worker: Any, tmp_path: Path) -> None:
    search = {"space": {"optimizer.lr": {"type": "choice", "values": [0.1, 0.01]}}, "num_samples": 1}
    job = submit(name="lr-search", kind="search", search=search)
    worker.start(job["id"])
    worker.report(job["id"], history(0, 3, shift=0.0), trial_key="t-1")
    worker.trial(job["id"], "t-1", {"optimizer.lr": 0.1}, "succeeded", 0.61)
    worker.trial(job["id"], "t-2", {"optimizer.lr": 0.01}, "running")
    out = tmp_path / "search.html"
    result = runner.invoke(cli, ["report", job["id"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    read_page(text)
    trials = text.split("<h2>Trials</h2>")[1].split("<h2>")[0]
    assert "t-1" in trials and "t-2" in trials and "0.6100" in trials
    assert "no epoch reported yet by a best trial" in text  # no best trial marked yet: no curve
    assert "no packed model yet" in text

"""``fsg compare`` and ``fsg report``: jobs side by side (a table, a plot) and one job as an HTML page.

Both read ``GET /v1/compare`` (``Client.compare``). The figure and the page are built by pure functions
of what the API returned (``build_figure``, ``render_report``), so tests read back what was drawn.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from service.cli.jobs import _client, _fail, console

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["build_figure", "comparison_table", "figure_svg", "render_report"]


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def format_bytes(size: Any) -> str:
    """``1536`` -> ``1.5 KiB``; ``-`` when unknown."""
    if not isinstance(size, int) or isinstance(size, bool):
        return "-"
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _step_time(job: dict[str, Any]) -> str:
    value = job.get("mean_step_time_s")
    return _number(value * 1000, ".1f") + " ms" if isinstance(value, int | float) else "-"


def _last_k(job: dict[str, Any]) -> str:
    """The last-k mean with its window: k depends on the run's length, so it is always shown."""
    value = _number(job.get("last_k_test_acc"), ".4f")
    return f"{value} (k={job['last_k']})" if job.get("last_k") else value


# The summary columns, shared by the terminal table and the HTML report: (header, cell of a compared job).
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("job", lambda j: f"{j['name']} ({j['id'][:8]})"),
    ("estimator", lambda j: j.get("estimator") or "-"),
    ("state", lambda j: j["state"]),
    ("best val acc", lambda j: _number(j.get("best_val_acc"), ".4f")),
    (
        "last-k test acc",
        lambda j: _number(j.get("last_k_test_acc"), ".4f") + (f" (k={j['last_k']})" if j.get("last_k") else ""),
    ),
    ("final train loss", lambda j: _number(j.get("final_train_loss"), ".4f")),
    ("step time", _step_time),
    ("packed size", lambda j: format_bytes(j.get("packed_bytes"))),
]


def comparison_table(payload: dict[str, Any]) -> Table:
    """The compared jobs as a rich table, one row per job, in the payload's order."""
    table = Table()
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("job", "estimator", "state") else "right")
    for job in payload["jobs"]:
        table.add_row(*(cell(job) for _, cell in COLUMNS))
    return table


def _labels(jobs: list[dict[str, Any]]) -> list[str]:
    """``name / estimator`` per job; the id is added where two jobs would read the same."""
    labels = [f"{job['name']} / {job.get('estimator') or '?'}" for job in jobs]
    return [
        f"{label} ({job['id'][:8]})" if labels.count(label) > 1 else label
        for label, job in zip(labels, jobs, strict=True)
    ]


def build_figure(payload: dict[str, Any]) -> Figure:
    """Train loss and validation accuracy against the global epoch (pre-training epochs, then binarized
    ones), one line per job of a ``GET /v1/compare`` payload, and a dotted vertical line where each
    job's binarization starts (grey where several jobs share it).

    The curves are the Line2D objects whose labels do not start with ``_``; their y-data are the payload's
    values (null drawn as a gap, NaN).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    jobs = payload["jobs"]
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: no display, no pyplot state
    loss_ax, val_ax = fig.subplots(1, 2)
    loss_ax.set(title="train loss", xlabel="epoch (pre-training, then binarized)", ylabel="train_loss")
    val_ax.set(title="val accuracy", xlabel="epoch (pre-training, then binarized)", ylabel="val_acc")
    colors = matplotlib.colormaps["tab10" if len(jobs) <= 10 else "tab20"]
    starts: dict[int, list[int]] = {}  # pre-training epochs -> the jobs binarized after that many
    for i, (job, label) in enumerate(zip(jobs, _labels(jobs), strict=True)):
        curves = job["curves"]
        x = list(range(1, len(curves["phase"]) + 1))
        for ax, key in ((loss_ax, "train_loss"), (val_ax, "val_acc")):
            y = [float("nan") if v is None else float(v) for v in curves[key]]
            ax.plot(x, y, label=label, color=colors(i), marker="o", markersize=2.5, linewidth=1.4)
        pretrain = curves["phase"].count("pretrain")
        if 0 < pretrain < len(x):
            starts.setdefault(pretrain, []).append(i)
    for pretrain, members in starts.items():
        color = colors(members[0]) if len(members) == 1 else "grey"
        for ax in (loss_ax, val_ax):
            ax.axvline(pretrain + 0.5, linestyle=":", color=color, linewidth=1.2, label="_binarization starts")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    handles, labels = val_ax.get_legend_handles_labels()
    if starts:
        handles.append(Line2D([], [], linestyle=":", color="grey"))
        labels.append("binarization starts")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small")
    return fig


def figure_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML: no XML prolog, DOCTYPE or namespace URLs
    (the HTML parser puts ``<svg>`` and ``xlink:href`` in their namespaces by itself)."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]
    tag_end = svg.index(">")
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg[:tag_end]) + svg[tag_end:]


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222 }
h1 { margin-bottom: .2em } .meta { color: #555 } .error { color: #a00; white-space: pre-wrap }
table { border-collapse: collapse; margin: .5em 0 1.5em } th, td { border: 1px solid #ccc; padding: .25em .6em }
th { background: #f3f3f3; text-align: left } td.num { text-align: right; font-variant-numeric: tabular-nums }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto } svg { max-width: 100%; height: auto }
"""


def _table(headers: list[str] | None, rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """An HTML table (no header row when ``headers`` is None); the columns in ``numeric`` align right."""

    def cell(i: int, text: str) -> str:
        return f"<td class='num'>{html.escape(text)}</td>" if i in (numeric or ()) else f"<td>{html.escape(text)}</td>"

    head = (
        ""
        if headers is None
        else "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>"
    )
    body = "".join("<tr>" + "".join(cell(i, text) for i, text in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _trials_section(trials: list[dict[str, Any]]) -> str:
    if not trials:
        return "<h2>Trials</h2><p>no trial has started yet</p>"
    rows = [
        [
            str(t["trial_key"]),
            str(t["state"]),
            _number(t.get("metric"), ".4f"),
            str(t.get("epochs", "")),
            "best" if t.get("is_best") else "",
            json.dumps(t.get("config") or {}, sort_keys=True),
        ]
        for t in trials
    ]
    return "<h2>Trials</h2>" + _table(["trial", "state", "metric", "epochs", "", "config"], rows, {2, 3})


def _study_section(study: dict[str, Any]) -> str:
    from service.cli.study import study_rows, study_title

    headers, rows = study_rows(study)
    parts = ["<h2>Study</h2>", f"<p>{html.escape(study_title(study))}</p>"]
    parts.append(_table(headers, rows, set(range(1, len(headers)))))
    trials = [
        [str(t["key"]), str(t["state"]), _number((t.get("figures") or {}).get("best_val_acc"), ".4f")]
        for t in study["trials"]
    ]
    parts.append(_table(["trial", "state", "best val acc"], trials, {2}))
    return "\n".join(parts)


def _model_section(summary: dict[str, Any] | None, note: str | None) -> str:
    if summary is None:
        return f"<h2>Model</h2><p>{html.escape(note or 'no packed model yet')}</p>"
    from fsg_core.summary import ModelSummary, format_summary

    text = format_summary(ModelSummary.from_dict(summary["summary"]))
    facts = (
        f"checkpoint {summary['checkpoint_id']} ({summary['phase']} epoch {summary['epoch']}): "
        f"packed file {format_bytes(summary['file_bytes'])}, fp32 state dict "
        f"{format_bytes(summary['fp32_state_dict_bytes'])}, {summary['compression_ratio']:.1f}x smaller"
    )
    return f"<h2>Model</h2><p>{html.escape(facts)}</p><pre>{html.escape(text)}</pre>"


def render_report(
    job: dict[str, Any],
    compared: dict[str, Any],
    *,
    trials: list[dict[str, Any]] | None = None,
    summary: dict[str, Any] | None = None,
    summary_note: str | None = None,
    study: dict[str, Any] | None = None,
) -> str:
    """One job as a self-contained HTML page (inline CSS and SVG, no external resource).

    Args:
        job: ``GET /v1/jobs/{id}``.
        compared: the job's entry of ``GET /v1/compare``.
        trials: ``GET /v1/jobs/{id}/trials`` for a search (None: not a search).
        summary: ``GET /v1/jobs/{id}/summary`` when the job has a packed model.
        summary_note: why there is no summary (shown instead of it).
        study: ``GET /v1/jobs/{id}/study`` for a study (its table and trials).
    """
    e = html.escape
    facts = [
        f"job <code>{e(job['id'])}</code>",
        f"{e(job['kind'])}",
        f"state <b>{e(job['state'])}</b>",
        f"estimator <b>{e(compared.get('estimator') or '-')}</b>",
        f"arch {e(compared.get('arch') or '-')}",
        f"optimizer {e(compared.get('optimizer') or '-')}",
        f"attempts {e(str(job.get('attempts', '-')))}",
        f"created {e(str(job.get('created_at', ''))[:19])}",
    ]
    if job.get("finished_at"):
        facts.append(f"finished {e(str(job['finished_at'])[:19])}")
    parts = [
        f"<h1>{e(job['name'])}</h1>",
        f"<p class='meta'>{' · '.join(facts)}</p>",
    ]
    if job.get("error"):
        parts.append(f"<p class='error'>{e(str(job['error']))}</p>")
    spec = json.dumps(job.get("spec") or {}, indent=2, sort_keys=True)
    parts.append(f"<details><summary>spec</summary><pre>{e(spec)}</pre></details>")

    parts.append("<h2>Summary</h2>")
    parts.append(_table([h for h, _ in COLUMNS], [[cell(compared) for _, cell in COLUMNS]], set(range(3, 8))))
    details = [
        ["epochs done", str(compared.get("epochs_done", 0))],
        ["best val epoch (binarized)", str(compared.get("best_val_epoch") or "-")],
        ["test acc at best val", _number(compared.get("test_acc_at_best_val"), ".4f")],
    ]
    parts.append(_table(None, details, {1}))
    if trials is not None:
        parts.append(_trials_section(trials))
    if study is not None:
        parts.append(_study_section(study))

    parts.append("<h2>Curves</h2>")
    if compared["curves"]["phase"]:
        if trials is not None:
            parts.append("<p>of the best trial</p>")
        parts.append(figure_svg(build_figure({"jobs": [compared]})))
    else:
        parts.append("<p>no epoch reported yet" + (" by a best trial" if trials is not None else "") + "</p>")
    parts.append(_model_section(summary, summary_note))

    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>fsg report: {e(job['name'])}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def compare(
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="1 to 12 job ids")],
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE.png", help="also draw train loss and val accuracy")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's answer as JSON")] = False,
) -> None:
    """Compare jobs: best and last-k accuracy, final loss, step time, packed size; --plot the curves."""
    from service.client import ApiError

    with _client() as client:
        try:
            payload = client.compare(job_ids)
        except ApiError as exc:
            _fail(exc)
    if as_json:
        console.print_json(json.dumps(payload))
    else:
        console.print(comparison_table(payload))
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        build_figure(payload).savefig(plot, format="png", dpi=120)
        if not as_json:
            console.print(f"wrote {plot}")


def report(
    job_id: str,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE.html", help="destination")] = None,
) -> None:
    """Write one job as a self-contained HTML page: header, spec, summary, trials, curves, model."""
    from service.client import ApiError

    dest = out or Path(f"report-{job_id}.html")
    with _client() as client:
        try:
            job = client.job(job_id)
            compared = client.compare([job_id])["jobs"][0]
            trials = client.trials(job_id) if job["kind"] == "search" else None
            study = client.study(job_id) if job["kind"] == "study" else None
        except ApiError as exc:
            _fail(exc)
        summary, note = None, None
        try:
            summary = client.summary(job_id)
        except ApiError as exc:  # no packed model yet (404), or one the server cannot read
            note = "no packed model yet" if exc.status == 404 else f"model summary unavailable: {exc}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(job, compared, trials=trials, summary=summary, summary_note=note, study=study)
    dest.write_text(page, encoding="utf-8")
    console.print(f"wrote {dest}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
    app.command("report")(report)

"""service/cli/jobs.py: the ETA and the progress line of ``fsg submit --wait`` / ``fsg logs --follow``
(fed with events, and through the test app's real event stream), and ``fsg jobs``' table."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from service.cli import app as cli
from service.cli import jobs as jobs_cli
from service.cli.jobs import JobProgress, JobWatch, estimate_eta_s
from service.client import Client, Event

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.mark.parametrize(
    "elapsed_s, done, total, eta",
    [
        (30.0, 3, 10, 70.0),  # 10 s an epoch, 7 to go
        (30.0, 10, 10, 0.0),
        (30.0, 12, 10, 0.0),  # more than planned (a grid search): nothing left, never negative
        (0.0, 0, 10, None),  # no pace before the first epoch
        (30.0, 3, 0, None),  # no total
    ],
)
def test_estimate_eta_s(elapsed_s: float, done: int, total: int, eta: float | None) -> None:
    assert estimate_eta_s(elapsed_s, done, total) == eta


def _event(kind: str, at_s: float, **fields: Any) -> Event:
    return Event(0, kind, {"kind": kind, "created_at": (T0 + timedelta(seconds=at_s)).isoformat(), **fields})


def _metric(at_s: float, phase: str, epoch: int, trial: str = "", **values: Any) -> Event:
    data = {"trial_key": trial, "phase": phase, "epoch": epoch, "attempt": 1, "values": values}
    return _event("metric", at_s, data=data)


def test_a_training_jobs_line_counts_epochs_once_and_estimates_from_server_times() -> None:
    job = {"id": "j", "kind": "train", "state": "queued", "spec": {"epochs": 4, "init": {"pretrain_epochs": 1}}}
    watch = JobWatch(job)
    assert (watch.total, watch.eta_s(T0)) == (5, None)
    for event in [
        _event("state", 5, to_state="dispatching"),
        _event("state", 10, to_state="running"),
        _metric(30, "pretrain", 1, val_acc=0.3),
        _metric(50, "binary", 1, val_acc=0.4),
        _metric(50, "binary", 1, val_acc=0.4),  # a resumed attempt re-reports it
    ]:
        watch.on_event(event)
    assert watch.done == 2
    # 40 s for 2 epochs since the job started running: 60 s for the 3 left, 15 s of which have passed.
    assert watch.eta_s(T0 + timedelta(seconds=65)) == pytest.approx(45.0)
    assert watch.eta_s(T0 + timedelta(seconds=500)) == 0.0
    assert watch.status() == "running · binary 1 val_acc=0.400"
    watch.on_event(_event("state", 70, to_state="succeeded"))
    assert watch.eta_s(T0 + timedelta(seconds=70)) is None


def test_a_searchs_line_counts_trials() -> None:
    spec = {"kind": "search", "epochs": 2, "init": {"pretrain_epochs": 0}, "search": {"num_samples": 3}}
    watch = JobWatch({"id": "s", "kind": "search", "state": "running", "spec": spec})
    assert watch.total == 6
    watch.on_event(_metric(1, "binary", 1, trial="t1", val_acc=0.5))
    watch.on_event(_metric(2, "binary", 1, trial="t2"))
    watch.on_event(_event("trial", 3, data={"trial_key": "t1", "state": "stopped", "metric": 0.5, "epochs": 1}))
    assert watch.status() == "running · trials 1/3 done, 1 running · binary 1"


def test_progress_follows_a_job_through_its_event_stream(
    api: Client, submit: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(jobs_cli, "console", terminal)
    job = submit(name="followed")
    worker.start(job["id"])
    worker.report(job["id"], [{"phase": "pretrain", "epoch": 1}, {"phase": "binary", "epoch": 1, "val_acc": 0.25}])
    worker.finish(job["id"])
    with JobProgress(api, [job]) as progress:
        progress.print("[a log line, not markup]")
        progress.wait()
    watch = progress.watches[job["id"]]
    assert (watch.state, watch.done, watch.total) == ("succeeded", 2, 3)
    assert watch.running_since is not None and watch.latest_at is not None
    shown = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "[a log line, not markup]" in shown
    assert "followed" in shown and "2/3" in shown and "eta -:--:--" in shown and "succeeded" in shown


def test_jobs_prints_a_table(api: Client, submit: Any) -> None:
    job = submit(name="listed")
    result = runner.invoke(cli, ["jobs"])
    assert result.exit_code == 0, result.output
    assert "┃ id" in result.output  # a rich table's header row
    assert job["id"][:12] in result.output and "listed" in result.output and "queued" in result.output


def test_logs_follow_on_a_terminal_prints_the_lines_above_a_progress_bar(
    api: Client, app: Any, submit: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(jobs_cli, "console", terminal)
    job = submit(name="logged")
    worker.start(job["id"])
    worker.report(job["id"], [{"phase": "pretrain", "epoch": 1, "val_acc": 0.5}])
    log = app.state.storage.log_path(job["id"])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1 loss 2.0\n[not] markup\n")
    worker.finish(job["id"])
    jobs_cli.logs(job["id"], follow_=True)
    shown = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "epoch 1 loss 2.0" in shown and "[not] markup" in shown
    assert "logged" in shown and "1/3" in shown and "succeeded" in shown


def test_logs_piped_prints_only_the_lines(api: Client, app: Any, submit: Any) -> None:
    job = submit()
    log = app.state.storage.log_path(job["id"])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\n")
    result = runner.invoke(cli, ["logs", job["id"]])
    assert result.exit_code == 0, result.output
    assert result.output == "one\ntwo\n"

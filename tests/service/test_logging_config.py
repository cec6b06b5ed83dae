"""Log formats: one valid JSON object per record (job context only when given), and text lines."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.logging_config import CHATTY_LOGGERS, JsonFormatter, TextFormatter, configure_logging
from service.settings import Settings


def _record(msg: str = "job %s attempt %d launched", args: tuple[Any, ...] = ("abc", 2), **extra: Any) -> Any:
    record = logging.LogRecord("fsg.dispatcher", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_has_the_job_context_when_given() -> None:
    line = JsonFormatter().format(_record(job_id="abc", attempt=2, dispatcher="host:1:ff"))
    entry = json.loads(line)
    assert entry == {
        "time": entry["time"],
        "level": "INFO",
        "logger": "fsg.dispatcher",
        "message": "job abc attempt 2 launched",
        "job_id": "abc",
        "attempt": 2,
        "dispatcher": "host:1:ff",
    }
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_json_without_context_has_no_context_keys() -> None:
    entry = json.loads(JsonFormatter().format(_record("ready", ())))
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["message"] == "ready"


def test_json_keeps_a_traceback_and_odd_values_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed: %s", ("x\ny",), job_id=Path("/odd"), exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed: x\ny" and entry["job_id"] == "/odd"
    assert "ValueError: boom" in entry["exc_info"]


def test_text_appends_the_context_that_is_set() -> None:
    formatter = TextFormatter()
    assert formatter.format(_record(job_id="abc", attempt=2)).endswith(
        "INFO fsg.dispatcher job abc attempt 2 launched [job_id=abc attempt=2]"
    )
    assert formatter.format(_record("ready", ())).endswith("INFO fsg.dispatcher ready")


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """Put the root logger back as it was (pytest's capture handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_configure_logging_switches_the_format_without_doubling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(Settings(home=tmp_path, log_format="text"))
    configure_logging(Settings(home=tmp_path, log_format="json"))
    logging.getLogger("fsg.test").info("hello", extra={"job_id": "j1"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["job_id"] == "j1"


@pytest.mark.usefixtures("root_handlers")
@pytest.mark.parametrize("verbose", [False, True])
def test_library_chatter_only_with_verbose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(Settings(home=tmp_path, log_format="text", verbose=verbose))
    try:
        for name in ("alembic.runtime.migration", "httpx"):
            logging.getLogger(name).info("%s chatter", name)
        logging.getLogger("fsg.dispatcher").info("job launched")
        logging.getLogger("httpx").warning("a real problem")
        text = stream.getvalue()
        assert "job launched" in text and "a real problem" in text
        assert ("alembic.runtime.migration chatter" in text) == verbose and ("httpx chatter" in text) == verbose
    finally:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_log_format_is_read_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSG_LOG_FORMAT", "json")
    monkeypatch.setenv("FSG_DISPATCHER_METRICS_PORT", "9101")
    monkeypatch.setenv("FSG_HEARTBEAT_S", "2.5")
    settings = Settings(home=tmp_path)
    assert (settings.log_format, settings.dispatcher_metrics_port, settings.heartbeat_s) == ("json", 9101, 2.5)
    monkeypatch.setenv("FSG_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings(home=tmp_path)

"""Process-wide logging for the API and the dispatcher: ``configure_logging(settings)`` picks text lines
or one JSON object per line (``FSG_LOG_FORMAT``); both carry a record's job context when it has one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "build_formatter", "configure_logging"]

# What a log call adds with ``extra={...}`` (the dispatcher's job-related lines) and formatters emit.
CONTEXT_FIELDS = ("job_id", "attempt", "dispatcher")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if getattr(record, name, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
    context fields that are set, and ``exc_info`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a context value that is not JSON (a Path, an enum) must not lose the line.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message``, then the set context fields as ``[job_id=... attempt=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        context = _context(record)
        return line + " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]" if context else line


def build_formatter(log_format: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


CHATTY_LOGGERS = ("alembic", "httpx", "httpcore")


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """Send the root logger's records at ``level`` and above to stderr in ``settings.log_format``.

    Replaces the root's handlers (calling it again switches the format, never doubles the lines);
    other loggers propagate to it (uvicorn's too, when it is run with ``log_config=None``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(build_formatter(settings.log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Alembic says "Context impl ..., Will assume transactional DDL" at every start, httpx logs every
    # request (fsg up's health checks, the client's calls) at INFO: chatter unless asked.
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.NOTSET if settings.verbose else logging.WARNING)

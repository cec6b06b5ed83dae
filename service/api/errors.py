"""Every error the API answers, mapped in one place: domain exceptions -> 4xx JSON, anything
unexpected -> a logged 500 that shows nothing of the server's internals.

Bodies follow FastAPI's shape: ``{"detail": [{"loc", "msg", "type"}, ...]}`` for 422 (and for a
``RequestValidationError`` raised by a handler), ``{"detail": "one sentence"}`` for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.streams import TooManyStreams
from service.db.engine import UNAVAILABLE
from service.db.queue import IdempotencyConflict, QueueFull
from service.db.states import IllegalTransition
from service.storage import ArtifactNotFound

__all__ = ["AlreadyFinished", "InvalidParameter", "JobNotFound", "install", "invalid", "public_loc"]

log = logging.getLogger(__name__)


class JobNotFound(LookupError):
    """No such job for this tenant (another tenant's job is "not found" too, never "forbidden")."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")


class AlreadyFinished(ValueError):
    """A request that needs an unfinished job (cancel) came for a finished one."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} already {state}; there is nothing to cancel")


class InvalidParameter(ValueError):
    """A query parameter or header that passed its schema but means nothing (a malformed cursor): 400."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid {name}: {reason}")


def invalid(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 for one field, raised by handlers for checks beyond the schema (``data.root`` confinement)."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])


def public_loc(loc: Sequence[str | int], body: Any) -> list[str | int]:
    """``loc`` as a path into what the client sent.

    Pydantic puts the tag of a discriminated union into the location (``estimator.ste.alpha``,
    ``search.space.lr.uniform.low``); a client only knows its own JSON, so segments that are not keys
    of the body at that point but equal one of its string values (the tag) are dropped.
    """
    out: list[str | int] = list(loc[:1])
    if not loc or loc[0] != "body":
        return list(loc)
    node: Any = body
    for part in loc[1:]:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif isinstance(part, str) and part in {v for v in node.values() if isinstance(v, str)}:
                continue  # a union tag, not a field
            else:
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        out.append(part)
    return out


def _validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for error in exc.errors():
        loc = public_loc(error.get("loc", ()), getattr(exc, "body", None))
        ctx = error.get("ctx") or {}
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found") and "discriminator" in ctx:
            loc.append(str(ctx["discriminator"]).strip("'\""))  # name the field that holds the tag
        items.append({"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", "value_error"))})
    return items


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _validation_items(exc)}, status_code=422)


async def _on_not_found(_: Request, exc: Exception) -> JSONResponse:
    return _detail(404, str(exc.args[0]) if exc.args else "not found")


async def _on_conflict(_: Request, exc: Exception) -> JSONResponse:
    return _detail(409, str(exc))


async def _on_bad_request(_: Request, exc: Exception) -> JSONResponse:
    return _detail(400, str(exc))


async def _on_unstorable(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (NUL in a string on PostgreSQL, an integer out of
    # range): the client's input, so a 400, with the database's words kept out of the answer.
    log.warning("database refused a value of %s %s: %s", request.method, request.url.path, exc)
    return _detail(400, "a value in the request cannot be stored or searched for (control characters, range)")


async def _on_queue_full(request: Request, exc: Exception) -> JSONResponse:
    settings = getattr(request.app.state, "settings", None)
    retry_after = settings.retry_after_s if settings is not None else 30
    return _detail(429, str(exc), {"Retry-After": str(retry_after)})


async def _on_too_many_streams(request: Request, exc: Exception) -> JSONResponse:
    # A stream is held for as long as the job runs: a few seconds' wait is the honest hint.
    return _detail(429, str(exc), {"Retry-After": "10"})


async def _on_database_down(_: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return _detail(503, "the database is unavailable; retry later", {"Retry-After": "5"})


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
        # FastAPI answers a body that json.loads cannot even start on (not UTF-8, nested too deep) with a
        # bare 400 "error parsing the body"; like any other malformed JSON, it is a 422 that names the body.
        reason = "is nested too deeply" if isinstance(exc.__cause__, RecursionError) else "is not UTF-8"
        body_error = invalid(("body",), f"JSON decode error: the body {reason}", "json_invalid")
        return await _on_validation(request, body_error)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on the path only (POST for /v1/jobs);
        # RFC 9110 wants every method the path supports, so each one is tried against the routes.
        path = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
        methods = [
            method
            for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
            if any(route.matches({**path, "method": method})[0] is Match.FULL for route in request.app.router.routes)
        ]
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _detail(500, "internal server error")


def install(app: FastAPI) -> None:
    """Register every mapping on ``app``."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(JobNotFound, _on_not_found)
    app.add_exception_handler(ArtifactNotFound, _on_not_found)
    app.add_exception_handler(IdempotencyConflict, _on_conflict)
    app.add_exception_handler(IllegalTransition, _on_conflict)
    app.add_exception_handler(AlreadyFinished, _on_conflict)
    app.add_exception_handler(InvalidParameter, _on_bad_request)
    app.add_exception_handler(QueueFull, _on_queue_full)
    app.add_exception_handler(TooManyStreams, _on_too_many_streams)
    app.add_exception_handler(DataError, _on_unstorable)
    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)

"""The Python client of the fsg REST API (the CLI is built on it).

from service.client import Client
client = Client.from_env()            # FSG_API_URL / FSG_TOKEN, else <FSG_HOME>/client.json
job = client.submit(spec_dict)
for event in client.events(job["id"]):
    ...
client.download(job["id"], "model.packed.safetensors")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ApiError", "Client", "Event", "client_config_path"]

TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    """A 4xx/5xx answer; ``detail`` is the server's JSON detail (it names the field)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {format_detail(detail)}")
        self.status, self.detail = status, detail


def format_detail(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: a state change, an epoch's metrics, a checkpoint or a trial.

    ``data`` is the event as the API serves it (``id, kind, from_state, to_state, message, data``);
    ``data["data"]`` holds the kind's payload, e.g. ``{"phase", "epoch", "attempt", "values"}``.
    """

    id: int
    kind: str
    data: dict[str, Any]


def client_config_path(home: str | Path | None = None) -> Path:
    return Path(home or os.environ.get("FSG_HOME", ".fsg")).expanduser().resolve() / "client.json"


class Client:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> Client:
        """``FSG_API_URL`` and ``FSG_TOKEN``, falling back to what ``fsg up`` wrote in FSG_HOME."""
        url, token = os.environ.get("FSG_API_URL"), os.environ.get("FSG_TOKEN")
        path = client_config_path(home)
        if (url is None or token is None) and path.exists():
            saved = json.loads(path.read_text())
            url, token = url or saved.get("url"), token or saved.get("token")
        if url is None:
            raise ApiError(0, f"no API address: set FSG_API_URL or start `fsg up` (looked for {path})")
        return cls(url, token)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------------
    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._check(self.http.request(method, path, **kwargs)).json()

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None, dry_run: bool = False) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"dry_run": "true"} if dry_run else {}
        return self._json("POST", "/v1/jobs", json=spec, headers=headers, params=params)

    def jobs(
        self, *, limit: int = 50, cursor: str | None = None, status: list[str] | None = None, name: str | None = None
    ) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if status:
            params["status"] = status
        if name:
            params["name"] = name
        return self._json("GET", "/v1/jobs", params=params)

    def job(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> Any:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def metrics(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}/metrics")

    def trials(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}/trials")

    def study(self, job_id: str) -> Any:
        """A study's table so far (``GET /v1/jobs/{id}/study``)."""
        return self._json("GET", f"/v1/jobs/{job_id}/study")

    def checkpoints(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}/checkpoints")

    def summary(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}/summary")

    def compare(self, job_ids: list[str]) -> dict[str, Any]:
        """``GET /v1/compare``: ``{"jobs": [...]}`` in the order of ``job_ids`` (1 to 12 of them), each with
        its best / last-k figures and per-epoch ``curves``."""
        result: dict[str, Any] = self._json("GET", "/v1/compare", params={"job": list(job_ids)})
        return result

    def health(self) -> Any:
        return self._json("GET", "/healthz")

    def download(self, job_id: str, dest: str | Path, *, checkpoint: str = "latest", fmt: str = "packed") -> Path:
        """Stream a checkpoint (``packed`` 1-bit model, ``onnx`` export of it, or ``full`` training state) to
        ``dest``."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", f"/v1/jobs/{job_id}/checkpoints/{checkpoint}", params={"format": fmt}) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            with tmp.open("wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
        tmp.replace(dest)
        return dest

    # --- streams --------------------------------------------------------------------------------
    def events(self, job_id: str, *, after: int | None = None, reconnect: bool = True) -> Iterator[Event]:
        """The job's events until it ends; reconnects with ``Last-Event-ID`` if the stream drops."""
        last = after
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        self._check(r)
                    for event in _parse_sse(r.iter_lines()):
                        last = event.id
                        yield event
                return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                if not reconnect:
                    raise
                time.sleep(1.0)

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]:
        params = {"follow": "true"} if follow else {}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/logs", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            yield from r.iter_lines()

    def wait(self, job_id: str, *, poll_s: float = 2.0, timeout_s: float | None = None) -> Any:
        """Poll until the job is terminal; returns the job."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s} s")
            time.sleep(poll_s)


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    event_id, kind = None, "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                yield Event(int(event_id) if event_id is not None else -1, kind, payload)
            event_id, kind, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "event":
                kind = value
            elif field == "data":
                data.append(value)

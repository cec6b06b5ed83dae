"""service/api/errors.py: how framework-level errors are answered (the domain ones are tested per route)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/jobs", "GET, POST"),  # Starlette named only the first route's method: POST
        ("OPTIONS", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/jobs/abc", "GET"),
        ("GET", "/v1/jobs/abc/cancel", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_allows_every_method_of_the_path(
    client: TestClient, auth: dict[str, str], method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, headers=auth)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name": "\xff"}', "is not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply"),
    ],
)
def test_a_body_that_cannot_be_decoded_is_a_422_naming_the_body(
    client: TestClient, auth: dict[str, str], counts: Any, body: bytes, reason: str
) -> None:
    before = counts()
    response = client.post("/v1/jobs", content=body, headers=auth | {"Content-Type": "application/json"})
    assert response.status_code == 422, response.text  # was a bare 400 "There was an error parsing the body"
    assert response.json() == {
        "detail": [{"loc": ["body"], "msg": f"JSON decode error: the body {reason}", "type": "json_invalid"}]
    }
    assert counts() == before


def test_malformed_json_keeps_fastapis_422(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/jobs", content=b'{"name": ', headers=auth | {"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"

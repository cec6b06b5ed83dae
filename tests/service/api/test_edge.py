"""The edge of the app: the body limit (before any token check) and the headers on every response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

LIMIT = 64 * 1024


@pytest.fixture
def small(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": LIMIT}))) as c:
        yield c


def test_a_declared_body_over_the_limit_is_413_before_the_token(small: TestClient) -> None:
    body = b"x" * (LIMIT + 1)
    response = small.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text  # not 401: the body was refused first


def test_a_streamed_body_is_cut_off_at_the_limit(small: TestClient) -> None:
    """No Content-Length (chunked): the count of bytes received decides."""
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b" " * 4096

    response = small.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_whitespace_padded_spec_is_413_and_a_normal_one_passes(
    small: TestClient, auth: dict[str, str], tiny_spec: Any
) -> None:
    spec = json.dumps(tiny_spec())
    padded = spec[:-1] + " " * (LIMIT + 10) + "}"
    assert (
        small.post("/v1/jobs", content=padded, headers={**auth, "content-type": "application/json"}).status_code == 413
    )
    ok = small.post("/v1/jobs", content=spec, headers={**auth, "content-type": "application/json"})
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("GET", "/nowhere"), ("GET", "/v1/jobs"), ("GET", "/ui/"), ("GET", "/metrics")],
)
def test_every_response_carries_the_security_headers(client: TestClient, method: str, path: str) -> None:
    headers = client.request(method, path).headers
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-eval" not in csp and "cdn" not in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_load_their_assets_from_this_origin(client: TestClient, path: str) -> None:
    import base64
    import hashlib
    import re

    page = client.get(path)
    assert page.status_code == 200
    html = page.text
    assert "cdn." not in html and "https://" not in html.split("<body>")[0]
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/docs/static/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    csp = page.headers["content-security-policy"]
    for inline in re.findall(r"<script>(.*?)</script>", html, re.S):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


@pytest.mark.parametrize(
    ("fragment", "loc"),
    [
        ('"schedule": {"kind": "cosine", "min_lr": Infinity}', ["body", "schedule", "min_lr"]),
        ('"schedule": {"kind": "cosine", "min_lr": NaN}', ["body", "schedule", "min_lr"]),
        ('"epochs": "10"', ["body", "epochs"]),
        ('"epochs": true', ["body", "epochs"]),
    ],
)
def test_odd_numbers_in_the_body_are_422_at_their_field(
    client: TestClient, auth: dict[str, str], tiny_spec: Any, fragment: str, loc: list[str]
) -> None:
    spec = tiny_spec()
    spec.pop("epochs", None)
    spec.pop("schedule", None)
    body = json.dumps(spec)[:-1] + ", " + fragment + "}"
    response = client.post("/v1/jobs", content=body, headers={**auth, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]]

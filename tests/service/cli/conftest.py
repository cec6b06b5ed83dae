"""The CLI tests that talk to the service reuse the API's fixtures: an app on a fresh database (SQLite and
PostgreSQL), tokens for two tenants, ``submit`` and the fake ``worker``; ``api`` binds the commands' Client
to that app."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.cli.jobs import console
from service.client import Client
from tests.service.api.conftest import (  # noqa: F401
    app,
    artifacts,
    auth,
    client,
    data_root,
    database,
    other_auth,
    packed_bytes,
    settings,
    submit,
    worker,
)


@pytest.fixture
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Client:
    """A Client of the test app as tenant ``alice``, like those ``Client.from_env()`` (what every command
    calls) now returns; the console is wide, so no table cell wraps in captured output."""
    request.getfixturevalue("client")  # holds the app's lifespan (its database) open
    test_app: FastAPI = request.getfixturevalue("app")
    headers: dict[str, str] = request.getfixturevalue("auth")

    def bind() -> Client:
        bound = Client("http://testserver", None)
        bound.http.close()
        bound.http = TestClient(test_app, headers=headers)
        return bound

    # A new one per call: commands close theirs.
    monkeypatch.setattr(Client, "from_env", classmethod(lambda cls, home=None: bind()))
    monkeypatch.setattr(console, "_width", 200)
    return bind()

"""What ``fsg up`` writes and prints: the client config born private, the database URL without its password."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from service.cli.server import ensure_client_config
from service.db.migrate import upgrade
from service.settings import Settings


def test_client_config_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    upgrade(settings.resolved_database_url)
    created: list[int] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).endswith("client.tmp"):
            created.append(mode)
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0o022)
    try:
        path = ensure_client_config(settings)
    finally:
        os.umask(old)
    assert created == [0o600], "the file must be born 0600, never chmod-ed afterwards"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"].startswith("fsg_")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://fsg:s3cret@db:5432/fsg", "postgresql+psycopg://fsg:***@db:5432/fsg"),
        ("sqlite:////tmp/x/fsg.db", "sqlite:////tmp/x/fsg.db"),
        ("not a url", "(unparseable database URL)"),
    ],
)
def test_the_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert Settings(database_url=url).database_url_for_display == shown

"""``fsg db upgrade`` and ``fsg db current`` against a fresh SQLite file (what the compose ``migrate`` runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.db.migrate import current_revision, head_revision

runner = CliRunner()


def test_upgrade_migrates_the_configured_database_to_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "not-yet-created"
    monkeypatch.delenv("FSG_DATABASE_URL", raising=False)
    monkeypatch.setenv("FSG_HOME", str(home))
    url = f"sqlite:///{home / 'fsg.db'}"

    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 1, before.output
    assert "never migrated" in before.output

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert current_revision(url) == head_revision()
    assert f"revision {head_revision()}" in result.output

    after = runner.invoke(app, ["db", "current"])
    assert after.exit_code == 0, after.output
    # Running it again is a no-op, as a restarted migrate container does.
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0


def test_upgrade_takes_an_explicit_url_over_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSG_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'other.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--url", url])
    assert result.exit_code == 0, result.output
    assert current_revision(url) == head_revision()
    assert not (tmp_path / "home" / "fsg.db").exists()

"""``fsg tenant set | show | list`` on a fresh SQLite file: overrides, defaults and clearing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.db import tenants
from service.db.engine import Database

runner = CliRunner()


def test_set_show_list_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FSG_DATABASE_URL", raising=False)
    monkeypatch.setenv("FSG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FSG_TENANT_MAX_QUEUED", "50")

    result = runner.invoke(app, ["tenant", "set", "alice", "--max-running", "2", "--max-cpus", "3.5", "--share", "2"])
    assert result.exit_code == 0, result.output
    assert "max_running=2," in result.output and "max_cpus=3.5," in result.output
    assert "max_queued=50 (default)" in result.output and "max_gpus=none (default)" in result.output

    db = Database.from_url(f"sqlite:///{tmp_path / 'home' / 'fsg.db'}")
    try:
        with db.read() as session:
            quota = tenants.get(session, "alice", tenants.Quota(max_queued=50))
        assert (quota.max_running, quota.max_cpus, quota.share, quota.max_queued) == (2, 3.5, 2.0, 50)

        assert runner.invoke(app, ["tenant", "set", "alice", "--max-priority", "10"]).exit_code == 0
        cleared = runner.invoke(app, ["tenant", "set", "alice", "--clear", "max_running"])
        assert "max_running=none (default)" in cleared.output and "max_priority=10," in cleared.output
        with db.read() as session:
            quota = tenants.get(session, "alice", tenants.Quota())
        assert (quota.max_running, quota.max_cpus, quota.max_priority) == (None, 3.5, 10)
    finally:
        db.dispose()

    shown = runner.invoke(app, ["tenant", "show", "bob"])
    assert shown.exit_code == 0 and shown.output.startswith("bob: max_running=none (default)")
    listed = runner.invoke(app, ["tenant", "list"])
    assert listed.output.count("\n") == 1 and listed.output.startswith("alice:")
    bad = runner.invoke(app, ["tenant", "set", "alice", "--clear", "max_everything"])
    assert bad.exit_code != 0 and "max_everything" in bad.output
    assert runner.invoke(app, ["tenant", "set", "alice", "--max-running", "0"]).exit_code != 0

"""``fsg token create | list | revoke`` on a fresh SQLite file: no secret is ever listed, a revoked
token gets 401 from the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app
from service.settings import Settings

runner = CliRunner()


def test_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FSG_DATABASE_URL", raising=False)
    monkeypatch.setenv("FSG_HOME", str(tmp_path / "home"))
    laptop = runner.invoke(app, ["token", "create", "--tenant", "alice", "--name", "laptop"]).output.strip()
    ci = runner.invoke(app, ["token", "create", "--tenant", "bob", "--name", "ci"]).output.strip()
    assert laptop.startswith("fsg_") and ci.startswith("fsg_")

    listed = runner.invoke(app, ["token", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2 and "alice  laptop" in lines[0] and "bob  ci" in lines[1]
    assert all(line.endswith("active") for line in lines)
    assert laptop not in listed.output and ci not in listed.output and "fsg_" not in listed.output
    assert runner.invoke(app, ["token", "list", "--tenant", "bob"]).output.count("\n") == 1

    with TestClient(create_app(Settings(home=tmp_path / "home"))) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {laptop}"}).status_code == 200
    laptop_id = lines[0].split()[0]
    assert runner.invoke(app, ["token", "revoke", laptop_id[:3]]).exit_code != 0  # too short to be sure
    assert runner.invoke(app, ["token", "revoke", "ffffffffffff"]).exit_code != 0
    revoked = runner.invoke(app, ["token", "revoke", laptop_id])
    assert revoked.exit_code == 0 and "alice" in revoked.output

    with TestClient(create_app(Settings(home=tmp_path / "home"))) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {laptop}"}).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {ci}"}).status_code == 200
    assert "laptop" not in runner.invoke(app, ["token", "list"]).output
    everything = runner.invoke(app, ["token", "list", "--all"]).output
    assert "laptop" in everything and everything.splitlines()[0].endswith("revoked")

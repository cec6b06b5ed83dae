"""A study's cached trials: one finished by an earlier attempt is skipped, unless what it was run for is
gone (a pre-training whose checkpoint a fault lost is run again, instead of failing every retry)."""

from __future__ import annotations

from typing import Any

import pytest

from workers import study_driver


class Store:
    def __init__(self, state: str | None) -> None:
        self.state = state
        self.recorded: list[str] = []

    def trial_state(self, key: str) -> str | None:
        return self.state

    def record_trial(self, key: str, **kw: Any) -> None:
        self.recorded.append(kw["state"])

    def results(self, key: str) -> dict[str, Any]:
        return {"best_val_acc": 0.5, "epochs": 1}


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []

    def run_trial(*args: Any, trial_key: str, **kwargs: Any) -> None:
        ran.append(trial_key)

    monkeypatch.setattr(study_driver, "run_trial", run_trial)
    return ran


@pytest.mark.parametrize(
    ("state", "kept", "runs"),
    [
        (None, None, True),  # never ran
        ("failed", None, True),
        ("succeeded", None, False),  # finished by an earlier attempt
        ("succeeded", True, False),  # ... and its checkpoint is there
        ("succeeded", False, True),  # ... but its checkpoint was lost
    ],
)
def test_a_trial_runs_again_only_when_unfinished_or_its_output_is_lost(
    fits: list[str], state: str | None, kept: bool | None, runs: bool
) -> None:
    store = Store(state)
    ctx = type("Ctx", (), {"job_id": "j"})()
    check = None if kept is None else (lambda: kept)
    study_driver._run_once(ctx, None, store, "pretrain/seed1", {}, {"seed": 1}, kept=check)  # type: ignore[arg-type]
    assert (fits == ["pretrain/seed1"]) is runs
    assert store.recorded == (["running", "succeeded"] if runs else [])

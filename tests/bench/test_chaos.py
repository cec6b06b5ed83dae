"""bench.chaos: its invariant checks catch what they look for (on made-up rows), and a 2-minute soak of
the whole service under faults holds every invariant."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace as Row
from typing import Any

import pytest

from bench import chaos
from bench.cluster import NoPostgres, PrivatePostgres

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def metric(attempt: int, epoch: int, t: float, phase: str = "binary", trial: str = "") -> Row:
    return Row(attempt=attempt, epoch=epoch, created_at=at(t), phase=phase, trial_key=trial)


def state(to: str, t: float, attempt: int | None = None) -> Row:
    return Row(kind="state", to_state=to, created_at=at(t), data={"attempt": attempt} if attempt else {})


def test_a_zombie_attempt_writing_after_its_successor_began_is_an_overlap() -> None:
    events = {"j": [state("running", 0, 1), state("queued", 10), state("running", 20, 2)]}
    fine = {"j": [metric(1, 1, 5), metric(2, 2, 25)]}
    assert chaos.Soak._overlaps(events, fine) == []
    zombie = {"j": [metric(1, 1, 5), metric(2, 2, 25), metric(1, 3, 30)]}
    found = chaos.Soak._overlaps(events, zombie)
    assert any("attempt 1 after a later attempt began" in f for f in found)
    assert any("attempts [1, 2, 1]" in f for f in found)


def test_skipped_epochs_are_found() -> None:
    assert chaos.Soak._epochs({"j": [metric(1, 1, 0), metric(1, 2, 1)]}) == []
    assert chaos.Soak._epochs({"j": [metric(1, 1, 0), metric(1, 3, 1)]}) == ["j/-/binary: epochs [1, 3]"]


def test_a_tenant_over_its_max_running_is_found() -> None:
    jobs = {"x": Row(tenant="a"), "y": Row(tenant="a"), "z": Row(tenant="c")}
    one_after_the_other = {
        "x": [state("dispatching", 0), state("running", 1), state("succeeded", 10)],
        "y": [state("dispatching", 10), state("running", 11), state("failed", 20)],
    }
    assert chaos.Soak._quotas(jobs, one_after_the_other) == []  # an end and a start at the same instant
    overlapping = {
        "x": [state("dispatching", 0), state("running", 1), state("succeeded", 10)],
        "y": [state("dispatching", 5), state("running", 6), state("queued", 8)],
        "z": [state("dispatching", 0), state("running", 1), state("succeeded", 10)],  # c: no limit
    }
    assert chaos.Soak._quotas(jobs, overlapping) == ["tenant a: 2 jobs claimed at once, max_running 1"]


def test_timings_split_queueing_from_running_and_count_ray_tasks_apart() -> None:
    jobs = {
        "t": Row(kind="train", spec={}, created_at=at(0), started_at=at(4), finished_at=at(34)),
        "r": Row(
            kind="train",
            spec={"resources": {"executor": "ray_task"}},
            created_at=at(0),
            started_at=at(1),
            finished_at=at(11),
        ),
        "c": Row(kind="train", spec={}, created_at=at(0), started_at=None, finished_at=at(2)),  # cancelled queued
    }
    timings = chaos.Soak._timings(jobs)
    assert timings["ray_task"] == {"queued_mean": 1.0, "queued_max": 1.0, "run_mean": 10.0, "run_max": 10.0}
    assert timings["train"] == {"queued_mean": 3.0, "queued_max": 4.0, "run_mean": 30.0, "run_max": 30.0}


@pytest.mark.parametrize("kind", chaos.KINDS)
def test_every_job_of_the_mix_is_a_valid_small_spec(kind: str) -> None:
    import random

    from service.schemas.jobs import JobSpec

    spec = JobSpec.model_validate(chaos.job_spec(kind, random.Random(0), 3))
    assert spec.max_retries >= 3 and (spec.max_steps_per_epoch or 99) <= 4
    assert spec.kind == {"ray_task": "train"}.get(kind, kind)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_two_minute_soak_holds_every_invariant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        PrivatePostgres().close()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    code = chaos.main(["--minutes", "2", "--seed", "0", "--json", str(tmp_path / "chaos.json")])
    report: dict[str, Any] = json.loads((tmp_path / "chaos.json").read_text())
    failed = {k: v["counterexamples"] for k, v in report["invariants"].items() if not v["held"]}
    assert code == 0 and report["drained"] and not failed, failed
    assert report["jobs"] >= 5 and sum(report["faults"].values()) >= 3, report

"""bench.fsg_cost: rounds pooled into means, ratios to STE, whole slow_every cycles, the goals' verdicts."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from bench import fsg_cost


@pytest.mark.parametrize("shape", ["cifar", "digits"])
@pytest.mark.parametrize("name", ["fsg", "fsg_paper"])
@pytest.mark.parametrize("quick", [False, True])
def test_measured_steps_hold_whole_slow_every_4_cycles(shape: str, name: str, quick: bool) -> None:
    # the first step of the measured epoch is left out; the rest must be a multiple of 4
    assert (fsg_cost._steps(shape, name, quick) - 1) % 4 == 0


def test_spec_warms_up_at_least_six_steps_before_the_measured_epoch() -> None:
    spec, warmup = fsg_cost.spec_for("digits", {"name": "fsg"}, 5)
    assert warmup * 5 >= fsg_cost.WARMUP_STEPS and spec["epochs"] == warmup + 1
    assert spec["data"]["dataset"] == "digits" and spec["batch_size"] == 64


def test_rounds_are_pooled_and_ratios_taken_to_ste(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"ste": [[1.0, 1.0], [3.0, 3.0]], "fsg": [[2.0, 2.0], [2.0, 6.0]]}  # two rounds each
    calls: dict[str, int] = {"ste": 0, "fsg": 0}

    def run_child(spec: dict[str, Any], measure_from: int, threads: int, *, memory: bool = False) -> dict[str, Any]:
        name = "ste" if spec["estimator"]["name"] == "ste" else "fsg"
        if memory:
            return {"peak_mem_bytes": 100 if name == "ste" else 150}
        times = fake[name][calls[name]]
        calls[name] += 1
        return {"step_times_s": times}

    monkeypatch.setattr(fsg_cost, "run_child", run_child)
    rows = fsg_cost.measure("cifar", ["ste", "fsg"], reps=2, threads=1, quick=True, log=lambda msg: None)
    assert rows["ste"]["step_time_s"] == 2.0 and rows["fsg"]["step_time_s"] == 3.0  # means over every step
    assert rows["fsg"]["step_time_median_s"] == statistics.median([2.0, 2.0, 2.0, 6.0])
    assert rows["fsg"]["step_time_vs_ste"] == 1.5 and rows["fsg"]["peak_mem_vs_ste"] == 1.5
    assert rows["fsg"]["round_ratios"] == pytest.approx([2.0, 4.0 / 3.0])  # each round against its STE run


def test_goals_say_met_not_met_or_unmeasured() -> None:
    result = {
        "shapes": {
            "cifar": {"fsg": {"step_time_vs_ste": 1.19, "peak_mem_vs_ste": 1.2}},
            "digits": {"fsg": {"step_time_vs_ste": 4.5}},
        }
    }
    # CIFAR step 1.19x <= 1.2 met; CIFAR memory 1.2x > 1.1 not met; paper not measured; digits 4.5x > 4 not met
    assert [g["met"] for g in fsg_cost.goals(result)] == [True, False, None, False]

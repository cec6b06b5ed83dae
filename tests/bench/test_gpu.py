"""bench.gpu end to end at the smallest settings: one JSON row per registered estimator, STE the unit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import gpu
from fsg_core.estimators import names


@pytest.mark.timeout(120)
def test_smoke_writes_one_row_per_registered_estimator(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    # 8x8 inputs, batch 8, two steps in this process: the one after the first is measured.
    argv = ["--device", "cpu", "--in-process", "--steps", "2", "--warmup-epochs", "0", "--batch-size", "8"]
    gpu.main([*argv, "--image-size", "8", "--threads", "1", "--json", str(out)])

    saved = json.loads(out.read_text())
    assert saved["meta"]["device"] == "cpu" and saved["meta"]["device_name"]
    assert saved["meta"]["input_shape"] == [3, 8, 8] and saved["meta"]["precision"] == "fp32"
    rows = saved["rows"]
    assert sorted(row["estimator"] for row in rows) == sorted(names())
    assert {row["arch"] for row in rows} == {"resnet20"}
    for row in rows:
        assert "error" not in row, row
        assert row["step_time_s"] > 0 and math.isfinite(row["step_time_s"]), row
        assert row["step_time_vs_ste"] == pytest.approx(row["step_time_s"] / rows[0]["step_time_s"])
    ste = next(row for row in rows if row["estimator"] == "ste")
    assert ste is rows[0] and ste["step_time_vs_ste"] == 1.0


def test_fp16_rows_of_learned_estimators_say_why_they_are_skipped() -> None:
    reason = gpu.refusal(gpu.cifar_cost_spec({"name": "fsg"}, 2, precision="fp16"))
    assert reason is not None and reason.startswith("skipped: ") and "use bf16" in reason
    assert gpu.refusal(gpu.cifar_cost_spec({"name": "ste"}, 2, precision="fp16")) is None

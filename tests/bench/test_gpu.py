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
    argv += ["--skip-kernels"]  # test_kernel_rows_time_every_path covers them
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kernel_rows_time_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "resnet20_binary_sizes", lambda: [37, 300, 16])
    monkeypatch.setattr(gpu, "KERNEL_WARMUP", 1)
    rows = gpu.kernel_rows("cpu", quick=True, log=lambda msg: None)
    # quick on a CPU leaves out the paper-size PyTorch path (about 30 s a repetition at ResNet-20's size)
    assert [(r["preset"], r["path"], r["backend"]) for r in rows] == [
        ("lite", "fused", "cpp"),
        ("lite", "torch", "pytorch"),
        ("paper", "fused", "cpp"),
    ]
    assert all(r["fwd_bwd_s"] > 0 and math.isfinite(r["fwd_bwd_s"]) for r in rows)


def test_nccl_row_says_why_it_is_skipped_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.nccl_row(lambda msg: None) == {"skipped": "no CUDA"}


def test_only_picks_estimators_and_fsg_variants_and_keeps_ste_first() -> None:
    picked = gpu.estimators("cpu", quick=True, only=["fsg_paper", "reste"])
    assert list(picked) == ["ste", "fsg_paper", "reste"]
    assert picked["fsg_paper"] == {"name": "fsg", "preset": "paper"}
    with pytest.raises(SystemExit, match="unknown"):
        gpu.estimators("cpu", quick=True, only=["nope"])


def test_fp16_rows_of_learned_estimators_say_why_they_are_skipped() -> None:
    reason = gpu.refusal(gpu.cifar_cost_spec({"name": "fsg"}, 2, precision="fp16"))
    assert reason is not None and reason.startswith("skipped: ") and "use bf16" in reason
    assert gpu.refusal(gpu.cifar_cost_spec({"name": "ste"}, 2, precision="fp16")) is None

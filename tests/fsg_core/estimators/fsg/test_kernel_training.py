"""FSG trained through the fused slow-net kernel against the PyTorch path: the same run, epoch by epoch."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fsg_core.spec import TrainSpec
from fsg_core.train import fit
from tests.conftest import tiny_spec_dict

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "flip_rate", "slow_rms", "fast_rms")


def _run(kernel: str, **overrides: Any) -> list[dict[str, Any]]:
    estimator = {"name": "fsg", "kernel": kernel, "compile": False, "stats_every": 1}
    spec = tiny_spec_dict(estimator, **({"epochs": 2, "max_steps_per_epoch": 6} | overrides))
    return [row for row in fit(TrainSpec.model_validate(spec)).history if row["phase"] == "binary"]


@pytest.mark.slow
def test_fused_and_torch_paths_train_the_same_two_digits_epochs() -> None:
    fused, reference = _run("fused"), _run("torch")
    assert len(fused) == len(reference) == 2
    for got, want in zip(fused, reference, strict=True):
        for key in KEYS:
            assert math.isclose(got[key], want[key], rel_tol=1e-3, abs_tol=1e-6), (
                got["epoch"],
                key,
                got[key],
                want[key],
            )
    # the slow net really ran (its output is in the direction of every step)
    assert all(row["slow_rms"] > 0 for row in fused)


def test_two_fused_runs_with_one_seed_are_bit_identical() -> None:
    a, b = _run("fused", max_steps_per_epoch=4), _run("fused", max_steps_per_epoch=4)
    assert [{k: r[k] for k in KEYS} for r in a] == [{k: r[k] for k in KEYS} for r in b]


def test_mix_update_through_the_kernel_moves_the_weights_by_the_slow_gradient() -> None:
    """``update: mix`` puts s into W.grad: with the kernel the run differs from ``update: fast``."""
    spec = tiny_spec_dict({"name": "fsg", "kernel": "fused", "update": "mix"}, epochs=1, max_steps_per_epoch=4)
    mix = fit(TrainSpec.model_validate(spec)).model.state_dict()
    spec["estimator"]["update"] = "fast"
    fast = fit(TrainSpec.model_validate(spec)).model.state_dict()
    assert any(not torch.equal(mix[k], fast[k]) for k in mix if k.endswith("conv1.weight"))

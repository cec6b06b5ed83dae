"""Shared fixtures: small, fast training specs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Single-threaded torch in tests: deterministic and no oversubscription on CI's 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Without a GPU, Triton's interpreter runs the slow net's Triton kernels on CPU tensors
# (tests/fsg_core/estimators/fsg/test_triton_kernel.py). Triton reads this once, at its import, so it is
# set here, before any test module imports it; a GPU machine (make gpu-check) compiles them for real.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not any(
    os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")
):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tiny_spec_dict(estimator: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A ResNet-20 W1A32 run on digits that finishes in seconds."""
    spec: dict[str, Any] = {
        "model": {"arch": "resnet20"},
        "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
        "estimator": estimator or {"name": "ste"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "schedule": {"kind": "step", "milestones": [2]},
        "epochs": 2,
        "batch_size": 32,
        "max_steps_per_epoch": 3,
        "init": {"pretrain_epochs": 1},
        "seed": 3,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def tiny_spec() -> Any:
    return tiny_spec_dict


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Ray cluster for the whole session, shared by tests/e2e and tests/service/web (a second
    fixture would start a second cluster, and ``ray.init`` refuses a second connection in one process)."""
    from tests.e2e.conftest import run_ray_head

    yield from run_ray_head(tmp_path_factory)

"""Schedules as pure functions: learning rates at chosen epochs and the estimators' t, o, n (FSG_SPEC §1, §3).

Expected values are arithmetic written out here, not calls to another implementation.
"""

from __future__ import annotations

import math

import pytest

from fsg_core.schedules import ede_t, fda_terms, learning_rate, reste_o

GRID = [i / 20 for i in range(21)]  # progress 0, 0.05, ..., 1


# --- learning_rate ----------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 0.5, 17, 99, 150])
def test_constant(epoch: float) -> None:
    assert learning_rate(0.01, epoch, total_epochs=100) == 0.01
    assert learning_rate(0.01, epoch, total_epochs=100, kind="constant") == 0.01


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 1e-3),
        (29.99, 1e-3),
        (30, 1e-4),  # a milestone applies from that epoch on
        (59.5, 1e-4),
        (60, 1e-5),
        (89, 1e-5),
        (90, 1e-6),
        (99.9, 1e-6),
    ],
)
def test_step_fsg_protocol(epoch: float, expected: float) -> None:
    """FSG_SPEC §1: Adam 1e-3, x0.1 at epochs 30/60/90."""
    got = learning_rate(1e-3, epoch, total_epochs=100, kind="step", milestones=[30, 60, 90], gamma=0.1)
    assert got == pytest.approx(expected, rel=1e-12)


def test_step_custom_gamma_and_unsorted_milestones() -> None:
    lr = dict(total_epochs=20, kind="step", milestones=[15, 5], gamma=0.5)
    assert learning_rate(0.2, 4, **lr) == pytest.approx(0.2)
    assert learning_rate(0.2, 5, **lr) == pytest.approx(0.1)
    assert learning_rate(0.2, 16, **lr) == pytest.approx(0.05)


def test_step_without_milestones_is_constant() -> None:
    assert learning_rate(0.3, 50, total_epochs=100, kind="step") == 0.3


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.1),
        (50, 0.05),  # halfway: (1 + cos(pi/2)) / 2 = 1/2
        (25, 0.1 * (1 + math.sqrt(2) / 2) / 2),  # cos(pi/4) = sqrt(2)/2
        (75, 0.1 * (1 - math.sqrt(2) / 2) / 2),
        (100, 0.0),
        (130, 0.0),  # clamped past the end
    ],
)
def test_cosine(epoch: float, expected: float) -> None:
    assert learning_rate(0.1, epoch, total_epochs=100, kind="cosine") == pytest.approx(expected, abs=1e-15)


def test_cosine_floor() -> None:
    lr = dict(total_epochs=100, kind="cosine", min_lr=0.01)
    assert learning_rate(0.1, 0, **lr) == pytest.approx(0.1)
    assert learning_rate(0.1, 50, **lr) == pytest.approx(0.01 + 0.09 / 2)
    assert learning_rate(0.1, 100, **lr) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.1 * 1e-3),  # never exactly zero: floored at 1e-3 of the warm-up
        (0.001, 0.1 * 1e-3),
        (1, 0.02),  # linear: 0.1 * 1/5
        (2.5, 0.05),
        (4.999, 0.1 * 4.999 / 5),
        (5, 0.1),  # end of warm-up: the cosine starts at the peak
        (55, 0.05),  # cosine over the remaining 100 epochs: halfway at 5 + 50
        (105, 0.0),
    ],
)
def test_warmup_then_cosine(epoch: float, expected: float) -> None:
    """FSG_SPEC §1 W1A1 protocol: 5-epoch linear warm-up, then cosine."""
    got = learning_rate(0.1, epoch, total_epochs=105, kind="cosine", warmup_epochs=5)
    assert got == pytest.approx(expected, abs=1e-15)


def test_warmup_then_step() -> None:
    lr = dict(total_epochs=100, kind="step", milestones=[30], gamma=0.1, warmup_epochs=2)
    assert learning_rate(1.0, 1, **lr) == pytest.approx(0.5)
    assert learning_rate(1.0, 2, **lr) == pytest.approx(1.0)
    assert learning_rate(1.0, 30, **lr) == pytest.approx(0.1)


def test_learning_rate_monotone() -> None:
    epochs = [e / 4 for e in range(0, 4 * 110)]
    warm = [learning_rate(0.1, e, total_epochs=105, kind="cosine", warmup_epochs=5) for e in epochs]
    up, down = (
        [lr for e, lr in zip(epochs, warm, strict=True) if e < 5],
        [lr for e, lr in zip(epochs, warm, strict=True) if e >= 5],
    )
    assert all(a < b for a, b in zip(up, up[1:], strict=False))
    assert all(a >= b for a, b in zip(down, down[1:], strict=False))
    assert max(warm) == pytest.approx(0.1)
    step = [learning_rate(1e-3, e, total_epochs=100, kind="step", milestones=[30, 60, 90]) for e in epochs]
    assert all(a >= b for a, b in zip(step, step[1:], strict=False))


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="nope"):
        learning_rate(0.1, 3, total_epochs=10, kind="nope")


def test_unknown_kind_raises_during_warmup() -> None:
    with pytest.raises(ValueError, match="nope"):
        learning_rate(0.1, 1, total_epochs=10, kind="nope", warmup_epochs=5)


# --- estimator schedules ----------------------------------------------------------------------


def test_ede_t_endpoints_and_geometric_midpoint() -> None:
    assert ede_t(0.0) == pytest.approx(0.1)
    assert ede_t(1.0) == pytest.approx(10.0)
    assert ede_t(0.5) == pytest.approx(1.0)  # sqrt(0.1 * 10)
    assert ede_t(0.25) == pytest.approx(10**-0.5)
    assert ede_t(0.5, t_min=1.0, t_max=100.0) == pytest.approx(10.0)
    assert ede_t(0.3, t_min=2.0, t_max=2.0) == pytest.approx(2.0)


def test_reste_o_endpoints_and_midpoint() -> None:
    assert reste_o(0.0) == 1.0
    assert reste_o(1.0) == pytest.approx(3.0)  # cos(pi/2) = 0
    assert reste_o(0.5) == pytest.approx(1 + 2 * (1 - math.sqrt(2) / 2))  # cos(pi/4)
    assert reste_o(1.0, o_end=2.0) == pytest.approx(2.0)
    assert reste_o(0.5, o_end=2.0) == pytest.approx(2 - math.sqrt(2) / 2)
    assert reste_o(0.7, o_end=1.0) == 1.0


def test_fda_terms() -> None:
    assert fda_terms(0.0) == 9
    assert fda_terms(1.0) == 18
    assert fda_terms(0.5) == 13  # 9 + floor(4.5)
    assert fda_terms(0.3) == 11  # 9 + floor(2.7)
    assert fda_terms(0.999) == 17
    assert fda_terms(1.0, n_start=2, n_growth=5) == 7
    assert fda_terms(0.6, n_start=0, n_growth=0) == 0
    assert all(isinstance(fda_terms(p), int) for p in GRID)


def test_estimator_schedules_are_monotone() -> None:
    t = [ede_t(p) for p in GRID]
    o = [reste_o(p) for p in GRID]
    n = [fda_terms(p) for p in GRID]
    assert all(a < b for a, b in zip(t, t[1:], strict=False))
    assert all(a < b for a, b in zip(o, o[1:], strict=False))
    assert all(a <= b for a, b in zip(n, n[1:], strict=False))
    assert n[0] == 9 and n[-1] == 18

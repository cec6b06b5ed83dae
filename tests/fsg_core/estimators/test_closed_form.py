"""Closed-form estimators against their formulas (FSG_SPEC §3), written again here in numpy.

Like larq's ``TestGradients``: each row is (estimator, hyperparameters, points); every row runs at
several schedule positions and in float32 and float64. The references re-derive the schedules
(``t``, ``o``, ``n``) from FSG_SPEC §3 and never import ``fsg_core.schedules``.

Boundary tests (``|x| <= threshold``) are decided at the input's precision: ``float32(0.1)`` is
slightly above the real 0.1, but torch compares it with the threshold rounded to float32, so the
reference does the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from fsg_core.estimators import ClosedFormEstimator, get

PROGRESS = (0.0, 0.3, 0.5, 1.0)
DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


# --- reference schedules (FSG_SPEC §3) --------------------------------------------------------


def ref_ede_t(progress: float, t_min: float, t_max: float) -> float:
    return 10.0 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * progress)


def ref_reste_o(progress: float, o_end: float) -> float:
    return 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi / 2.0 * progress))


def ref_fda_n(progress: float, n_start: int, n_growth: int) -> int:
    return n_start + int(np.floor(n_growth * progress))


# --- reference derivatives: x is the input array at its own dtype ----------------------------


def _within(x: np.ndarray, bound: float) -> np.ndarray:
    """``|x| <= bound`` at the precision of ``x`` (see the module docstring)."""
    return np.abs(x) <= x.dtype.type(bound)


def ref_grad(name: str, x: np.ndarray, progress: float, p: dict[str, Any]) -> np.ndarray:
    a = np.abs(x.astype(np.float64))
    x64 = x.astype(np.float64)
    if name == "ste":
        return np.ones_like(x64)
    if name == "clipped_ste":
        return _within(x, p.get("clip", 1.0)).astype(np.float64)
    if name == "approx_sign":
        return np.maximum(0.0, 2.0 - 2.0 * a)
    if name == "ede":
        t = ref_ede_t(progress, p.get("t_min", 0.1), p.get("t_max", 10.0))
        k = max(1.0 / t, 1.0)
        return k * t * (1.0 - np.tanh(t * x64) ** 2)
    if name == "reste":
        o = ref_reste_o(progress, p.get("o_end", 3.0))
        th, clip = p.get("threshold", 0.1), p.get("clip", 1.5)
        small, inside = _within(x, th), _within(x, clip)
        safe = np.where(small, 1.0, a)  # the power is only evaluated away from 0
        power = (1.0 / o) * safe ** ((1.0 - o) / o)
        return np.where(small, th ** (1.0 / o) / th, np.where(inside, power, 0.0))
    if name == "fda":
        w = p.get("omega", 0.1)
        n = ref_fda_n(progress, p.get("n_start", 9), p.get("n_growth", 9))
        total = sum(np.cos((2 * i + 1) * w * x64) for i in range(n + 1))
        return np.where(_within(x, 1.0), 4.0 * w / math.pi * total, 0.0)
    if name == "biper":
        w = p.get("omega", 20.0)
        return w * np.cos(w * x64)
    raise AssertionError(f"no reference formula for {name!r}")


def ref_forward(name: str, x: np.ndarray, progress: float, p: dict[str, Any]) -> np.ndarray:
    x64 = x.astype(np.float64)
    if name == "biper":
        wave = np.sin(p.get("omega", 20.0) * x64)
        if progress < p.get("continuous_fraction", 0.25):
            return wave
        return np.where(wave >= 0, 1.0, -1.0)
    return np.where(x64 >= 0, 1.0, -1.0)


# --- the table --------------------------------------------------------------------------------


def edges(*bounds: float) -> list[float]:
    """Each bound, its float32 neighbours on both sides and points 0.1% inside/outside, both signs."""
    out: list[float] = []
    for b in bounds:
        b32 = np.float32(b)
        near = [
            b32,
            np.nextafter(b32, np.float32(0)),
            np.nextafter(b32, np.float32(np.inf)),
            np.float32(b * (1 - 1e-3)),
            np.float32(b * (1 + 1e-3)),
        ]
        out += [float(v) for v in near] + [-float(v) for v in near]
    return out


# Points every row gets: zero of both signs, tiny values, ±1 edges, far out, and seeded random points.
COMMON = [0.0, -0.0, 1e-7, -1e-7, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 10.0, -10.0, *edges(1.0)]
RANDOM = np.random.default_rng(0).uniform(-2.0, 2.0, size=32).astype(np.float32).tolist()


@dataclass(frozen=True)
class Row:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    points: tuple[float, ...] = ()
    # float32 absolute tolerance, about 1e-6 of the derivative's peak, larger where the formula
    # amplifies rounding: biper's d/dx of w cos(w x) is w², so rounding x moves it by ~w² |x| 6e-8;
    # ede's 1 - tanh²(t x) cancels in float32 where tanh is near 1, scaled by its peak k t.
    atol32: float = 1e-6

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}[{extra}]" if extra else self.name


ROWS = [
    Row("ste"),
    Row("clipped_ste"),
    Row("clipped_ste", {"clip": 0.5}, tuple(edges(0.5))),
    Row("approx_sign", points=tuple(edges(0.5))),
    Row("ede", points=(0.05, -0.05, 0.2, -0.2), atol32=1e-5),
    Row("ede", {"t_min": 1.0, "t_max": 100.0}, (0.01, -0.01, 0.05, 0.2), atol32=1e-4),
    Row("ede", {"t_min": 0.5, "t_max": 0.5}),
    Row("reste", points=tuple(edges(0.1, 1.5))),
    Row("reste", {"o_end": 2.0}, tuple(edges(0.1, 1.5))),
    Row("reste", {"o_end": 1.0}, tuple(edges(0.1, 1.5))),
    Row("reste", {"threshold": 0.25, "clip": 0.8}, tuple(edges(0.25, 0.8))),
    Row("fda"),
    Row("fda", {"omega": 0.3, "n_start": 3, "n_growth": 20}, atol32=1e-5),
    Row("fda", {"omega": 1.0, "n_start": 0, "n_growth": 0}),
    Row("biper", points=tuple(edges(math.pi / 40, math.pi / 20)), atol32=5e-4),
    Row("biper", {"omega": 5.0, "continuous_fraction": 0.5}, tuple(edges(math.pi / 10)), atol32=5e-5),
    Row("biper", {"continuous_fraction": 0.0}, atol32=5e-4),
]


def test_table_covers_every_closed_form_estimator() -> None:
    from fsg_core.estimators import names

    closed = {n for n in names() if issubclass(get(n), ClosedFormEstimator)}
    assert closed == {row.name for row in ROWS}


def _make(row: Row, progress: float) -> ClosedFormEstimator:
    cls = get(row.name)
    est = cls(cls.Params(name=row.name, **row.params))
    assert isinstance(est, ClosedFormEstimator)
    est.progress = progress
    return est


def _points(row: Row) -> np.ndarray:
    return np.array(COMMON + list(row.points) + RANDOM, dtype=np.float32)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=["f32", "f64"])
@pytest.mark.parametrize("progress", PROGRESS)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_forward_and_backward_match_reference(row: Row, progress: float, dtype: torch.dtype) -> None:
    est = _make(row, progress)
    x_np = _points(row).astype(DTYPES[dtype])
    upstream_np = np.random.default_rng(1).normal(size=x_np.shape).astype(DTYPES[dtype])

    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    y = est.binarize(x)
    y.backward(torch.tensor(upstream_np, dtype=dtype))

    # forward
    want_y = ref_forward(row.name, x_np, progress, row.params)
    got_y = y.detach().numpy().astype(np.float64)
    assert y.dtype == dtype and y.shape == x.shape
    if row.name == "biper":
        wave = np.sin(row.params.get("omega", 20.0) * x_np.astype(np.float64))
        continuous = progress < row.params.get("continuous_fraction", 0.25)
        if continuous:
            np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=row.atol32)
        else:
            # where sin(w x) is within rounding of 0 its sign is not meaningful, except at x = 0
            clear = (np.abs(wave) > 1e-3) | (x_np == 0)
            np.testing.assert_array_equal(got_y[clear], want_y[clear])
            assert set(np.unique(got_y)) <= {-1.0, 1.0}
            assert np.all(got_y[x_np == 0] == 1.0)  # sign(sin 0) = +1
    else:
        np.testing.assert_array_equal(got_y, want_y)
        assert np.all(got_y[x_np == 0] == 1.0)  # sign(0) = sign(-0) = +1

    # backward
    assert x.grad is not None
    want_grad = upstream_np.astype(np.float64) * ref_grad(row.name, x_np, progress, row.params)
    rtol, atol = (1e-5, row.atol32) if dtype == torch.float32 else (1e-10, 1e-10)
    np.testing.assert_allclose(x.grad.numpy().astype(np.float64), want_grad, rtol=rtol, atol=atol)


# --- hyperparameters move the result as the formula says (hand-computed values) ---------------


def _grad_at(name: str, value: float, progress: float = 1.0, **params: Any) -> float:
    cls = get(name)
    est = cls(cls.Params(name=name, **params))
    est.progress = progress
    x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    est.binarize(x).sum().backward()
    assert x.grad is not None
    return float(x.grad[0])


def test_clipped_ste_clip_moves_the_window() -> None:
    assert _grad_at("clipped_ste", 0.75) == 1.0
    assert _grad_at("clipped_ste", 0.75, clip=0.5) == 0.0
    assert _grad_at("clipped_ste", 0.5, clip=0.5) == 1.0
    assert _grad_at("clipped_ste", 1.0) == 1.0
    assert _grad_at("clipped_ste", 1.0 + 1e-9) == 0.0


def test_approx_sign_hand_values() -> None:
    assert _grad_at("approx_sign", 0.0) == 2.0
    assert _grad_at("approx_sign", 0.25) == pytest.approx(1.5)
    assert _grad_at("approx_sign", -0.75) == pytest.approx(0.5)
    assert _grad_at("approx_sign", 1.0) == 0.0
    assert _grad_at("approx_sign", 1.5) == 0.0


def test_ede_temperature_range_moves_the_peak() -> None:
    # defaults: t goes 0.1 -> 1 -> 10; k = max(1/t, 1), so the peak k t at x = 0 is 1, 1, 10
    assert _grad_at("ede", 0.0, progress=0.0) == pytest.approx(1.0)
    assert _grad_at("ede", 0.0, progress=0.5) == pytest.approx(1.0)
    assert _grad_at("ede", 0.0, progress=1.0) == pytest.approx(10.0)
    # t_min=1, t_max=100: t = 10 at the midpoint, k = 1
    assert _grad_at("ede", 0.0, progress=0.5, t_min=1.0, t_max=100.0) == pytest.approx(10.0)
    assert _grad_at("ede", 0.1, progress=0.5, t_min=1.0, t_max=100.0) == pytest.approx(10 * (1 - math.tanh(1) ** 2))
    # progress 0 with defaults: t = 0.1, k = 10, so 1 - tanh(0.1 x)^2
    assert _grad_at("ede", 2.0, progress=0.0) == pytest.approx(1 - math.tanh(0.2) ** 2)


def test_reste_o_end_moves_the_power() -> None:
    # progress 1: o = o_end. o = 3: (1/3) 0.5^(-2/3); o = 2: (1/2) 0.5^(-1/2) = 1/sqrt(2)
    assert _grad_at("reste", 0.5) == pytest.approx(0.5 ** (-2 / 3) / 3)
    assert _grad_at("reste", 0.5, o_end=2.0) == pytest.approx(1 / math.sqrt(2))
    # below the threshold: the secant slope 0.1^(1/o) / 0.1 = 0.1^(-1/2) for o = 2
    assert _grad_at("reste", 0.05, o_end=2.0) == pytest.approx(math.sqrt(10))
    # o = 1 (start of training, or o_end = 1): plain STE inside the clip, 0 outside
    assert _grad_at("reste", 0.05, progress=0.0) == pytest.approx(1.0)
    assert _grad_at("reste", 1.2, o_end=1.0) == pytest.approx(1.0)
    assert _grad_at("reste", 1.6, progress=0.0) == 0.0
    assert _grad_at("reste", 1.2, progress=0.0, clip=1.0) == 0.0


def test_fda_terms_and_omega_move_the_sum() -> None:
    # n_start = n_growth = 0: one term, (4 w / pi) cos(w x)
    assert _grad_at("fda", 0.0, omega=0.5, n_start=0, n_growth=0) == pytest.approx(2 / math.pi)
    assert _grad_at("fda", 0.6, omega=0.5, n_start=0, n_growth=0) == pytest.approx(2 / math.pi * math.cos(0.3))
    # at x = 0 every cosine is 1: (4 w / pi)(n + 1) with n = 9 + floor(9 e/E)
    assert _grad_at("fda", 0.0, progress=0.0) == pytest.approx(0.4 / math.pi * 10)
    assert _grad_at("fda", 0.0, progress=0.5) == pytest.approx(0.4 / math.pi * 14)
    assert _grad_at("fda", 0.0, progress=1.0) == pytest.approx(0.4 / math.pi * 19)
    assert _grad_at("fda", 0.0, progress=1.0, n_start=2, n_growth=5) == pytest.approx(0.4 / math.pi * 8)
    assert _grad_at("fda", 1.01) == 0.0


def test_biper_omega_and_stages() -> None:
    assert _grad_at("biper", 0.0) == pytest.approx(20.0)
    assert _grad_at("biper", 0.1, omega=5.0) == pytest.approx(5 * math.cos(0.5))
    est = get("biper")(get("biper").Params(omega=5.0, continuous_fraction=0.5))
    x = torch.tensor([0.1, -0.3], dtype=torch.float64)
    for progress, want in [
        (0.0, [math.sin(0.5), math.sin(-1.5)]),
        (0.49, [math.sin(0.5), math.sin(-1.5)]),
        (0.5, [1.0, -1.0]),  # the binary stage starts at continuous_fraction
        (1.0, [1.0, -1.0]),
    ]:
        est.progress = progress
        np.testing.assert_allclose(est.binarize(x).numpy(), want, rtol=1e-12)


def test_backward_uses_the_progress_of_its_forward() -> None:
    """The schedule position is captured at forward time; moving it before backward changes nothing."""
    est = get("ede")()
    est.progress = 0.0
    x = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    y = est.binarize(x)
    est.progress = 1.0
    y.sum().backward()
    assert x.grad is not None
    assert float(x.grad[0]) == pytest.approx(1 - math.tanh(0.03) ** 2)

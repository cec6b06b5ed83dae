"""The Triton slow-net kernel on the CPU through Triton's interpreter, against the same references as the C++ one.

CI has no GPU: ``TRITON_INTERPRET=1`` (set by tests/conftest.py before triton is imported anywhere)
runs the very kernels CUDA runs, program by program, in NumPy.
"""

from __future__ import annotations

import os

import pytest
import torch

from fsg_core.estimators.fsg.kernels import Backend, temporal_ssm
from tests.fsg_core.estimators.fsg.test_kernels import (
    _inputs,
    _layer_scale,
    _reference,
    _rel,
    _ssm,
    _values_and_grads,
)

triton_ssm = pytest.importorskip("fsg_core.estimators.fsg.kernels.triton_ssm", reason="triton is not installed")

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover - a GPU machine running the suite
    pytest.skip("these tests run the Triton kernels in the interpreter", allow_module_level=True)

TRITON = Backend("triton", triton_ssm.forward, triton_ssm.backward)


def _reference_and_kernel(expand: int, d_state: int, k: int, zero: bool, sizes: list[int], d_conv: int = 8):
    """float64 truth from the module's own forward, and the Triton kernel in float32, on the same inputs."""
    ssm64 = _ssm(expand, d_state, d_conv=d_conv)
    hist, order, tokens = _inputs(k, zero, torch.float64, sizes=sizes)
    gout = torch.randn(sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want = _values_and_grads(lambda t: _reference(ssm64, hist, order, t, sizes), ssm64, tokens, gout)
    ssm = _ssm(expand, d_state, d_conv=d_conv).float()
    layer_start = torch.tensor([0, *sizes]).cumsum(0)
    hist32, scale = hist.float(), _layer_scale(hist, order, sizes).float()
    got = _values_and_grads(
        lambda t: temporal_ssm(TRITON, ssm, hist32, torch.tensor(order), layer_start, scale, t),
        ssm,
        tokens.float(),
        gout.float(),
    )
    return want, got


@pytest.mark.parametrize(
    "expand,d_state,k,zero,sizes",
    [
        (8, 4, 5, False, [37, 1, 70, 5]),  # lite; padding lanes, a one-weight layer, a layer of two programs
        (8, 4, 5, True, [37, 1, 70, 5]),  # a zero history
        (8, 4, 2, False, [37, 1, 70, 5]),  # warm-up: k < K
        (16, 8, 5, False, [20, 9]),
        (16, 8, 3, True, [20, 9]),
        (100, 16, 5, False, [13]),  # paper (slow in the interpreter: one program)
    ],
)
def test_triton_kernel_float32_within_1e5_of_the_float64_truth(expand, d_state, k, zero, sizes) -> None:
    (want, want_grads), (got, got_grads) = _reference_and_kernel(expand, d_state, k, zero, sizes)
    assert _rel(got, want) <= 1e-5
    errors = [_rel(g, w) for g, w in zip(got_grads, want_grads, strict=True)]
    assert max(errors) <= 1e-5, errors


def test_triton_kernel_with_a_short_conv() -> None:
    (want, want_grads), (got, got_grads) = _reference_and_kernel(8, 4, 5, False, [21, 4], d_conv=3)
    assert _rel(got, want) <= 1e-5
    assert max(_rel(g, w) for g, w in zip(got_grads, want_grads, strict=True)) <= 1e-5


def test_triton_kernel_is_deterministic() -> None:
    runs = [_reference_and_kernel(8, 4, 5, False, [37, 70])[1] for _ in range(2)]
    (out_a, grads_a), (out_b, grads_b) = runs
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_triton_refuses_float64() -> None:
    ssm = _ssm(8, 4)
    with pytest.raises(ValueError, match="float32"):
        temporal_ssm(TRITON, ssm, torch.zeros(5, 4, dtype=torch.float64), torch.arange(5), torch.tensor([0, 4]),
                     torch.ones(1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))  # fmt: skip

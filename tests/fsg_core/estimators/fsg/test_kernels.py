"""The fused slow-net kernels against the PyTorch reference (the C++ one here; Triton in test_triton_kernel.py).

The reference is ``SelectiveSSM.forward_last`` on the temporal sequences ``[e_l, g / scale_l]``, times
``scale_l``: the PyTorch path ``kernel="torch"`` runs exactly that. Gradients come from autograd through
it. float64 checks the calculus (1e-10); float32 checks the kernel's fast math against the float64
truth (1e-5 of each tensor's largest value, the issue's bound).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from fsg_core.estimators.fsg import kernels
from fsg_core.estimators.fsg.kernels import FAST_MATH_MAX_REL_ERROR, KernelUnavailableError, cpu_backend
from fsg_core.estimators.fsg.slow_net import SelectiveSSM, SlowNet

# Several layers of different sizes: not multiples of the 16 SIMD lanes, one of a single weight, one
# larger than a block (512 coordinates), so padding lanes and block boundaries are exercised.
SIZES = [37, 1, 600, 16, 5]
SHAPES = [(8, 4), (16, 8), (100, 16)]  # (expand, d_state): lite, a middle size, paper


def _ssm(expand: int, d_state: int, d_conv: int = 8, dtype: torch.dtype = torch.float64, seed: int = 0) -> SelectiveSSM:
    torch.manual_seed(seed)
    ssm = SelectiveSSM(1, d_state=d_state, d_conv=d_conv, expand=expand, use_kernels=False).to(dtype)
    with torch.no_grad():  # away from the initialisation, where some weights are symmetric
        for p in ssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ssm


def _inputs(
    k: int, zero: bool, dtype: torch.dtype, seed: int = 1, sizes: list[int] = SIZES
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """A (K=5, N) ring buffer whose rows ``order`` hold the k gradients oldest first, and tokens."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    hist = torch.zeros(5, n, dtype=dtype) if zero else 1e-3 * torch.randn(5, n, generator=gen, dtype=dtype)
    order = [(3 + i) % 5 for i in range(5)][-k:]  # a ring whose head is at row 3
    tokens = torch.randn(len(sizes), 1, generator=gen, dtype=dtype)
    return hist, order, tokens


def _layer_scale(hist: torch.Tensor, order: list[int], sizes: list[int] = SIZES) -> torch.Tensor:
    """Per-layer RMS over the window, (layers,)."""
    idx = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    squares = hist[order].pow(2).mean(0)
    scale = (torch.zeros(len(sizes), dtype=hist.dtype).index_add_(0, idx, squares) / torch.tensor(sizes)).sqrt()
    return scale.clamp_min(1e-12)


def _reference(
    ssm: SelectiveSSM, hist: torch.Tensor, order: list[int], tokens: torch.Tensor, sizes: list[int] = SIZES
) -> torch.Tensor:
    """s (N,) written out from the module's own forward, independent of SlowNet and the kernels."""
    idx = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    window = hist[order]  # (k, N)
    scale = _layer_scale(hist, order, sizes)
    seq = torch.cat([tokens[idx], (window / scale[idx]).t()], dim=1).unsqueeze(-1)  # (N, k+1, 1)
    return ssm.forward_last(seq)[:, 0] * scale[idx]


def _slow_net(ssm: SelectiveSSM, kernel: str) -> SlowNet:
    net = SlowNet(
        list(SIZES),
        d_state=ssm.d_state,
        d_conv=ssm.conv.kernel_size[0],
        expand=ssm.d_inner,
        compile=False,
        kernel=kernel,  # type: ignore[arg-type]
    ).to(ssm.A_log.dtype)
    assert net.ssm is not None
    net.ssm.load_state_dict(ssm.state_dict())
    return net


def _values_and_grads(
    fn: object, ssm: SelectiveSSM, tokens: torch.Tensor, gout: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tokens = tokens.clone().requires_grad_(True)
    out = fn(tokens)  # type: ignore[operator]
    params = [*ssm.parameters(), tokens]
    grads = torch.autograd.grad((out * gout).sum(), params, allow_unused=True)
    return out.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest error relative to the largest value of the reference tensor."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("expand,d_state", SHAPES)
@pytest.mark.parametrize("k", [5, 2, 1])
@pytest.mark.parametrize("zero", [False, True])
def test_cpu_kernel_equals_reference_in_float64(expand: int, d_state: int, k: int, zero: bool) -> None:
    ssm = _ssm(expand, d_state)
    hist, order, tokens = _inputs(k, zero, torch.float64)
    net = _slow_net(ssm, "fused")
    assert net.backend(torch.device("cpu")) is not None
    gout = torch.randn(sum(SIZES), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want, want_grads = _values_and_grads(lambda t: _reference(ssm, hist, order, t), ssm, tokens, gout)
    got, got_grads = _values_and_grads(lambda t: net(hist, t, order=order), net.ssm, tokens, gout)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    names = [n for n, _ in ssm.named_parameters()] + ["tokens"]
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13 * max(1.0, float(w.abs().max())), msg=name)


@pytest.mark.parametrize("expand,d_state", SHAPES)
@pytest.mark.parametrize("k", [5, 3])
@pytest.mark.parametrize("zero", [False, True])
def test_cpu_kernel_float32_within_1e5_of_the_float64_truth(expand: int, d_state: int, k: int, zero: bool) -> None:
    ssm64 = _ssm(expand, d_state)
    hist64, order, tokens64 = _inputs(k, zero, torch.float64)
    gout = torch.randn(sum(SIZES), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want, want_grads = _values_and_grads(lambda t: _reference(ssm64, hist64, order, t), ssm64, tokens64, gout)

    net = _slow_net(ssm64.float(), "fused")
    hist, tokens = hist64.float(), tokens64.float()
    got, got_grads = _values_and_grads(lambda t: net(hist, t, order=order), net.ssm, tokens, gout.float())  # type: ignore[arg-type]
    assert _rel(got, want) <= 1e-5
    names = [n for n, _ in ssm64.named_parameters()] + ["tokens"]
    errors = {name: _rel(g, w) for name, g, w in zip(names, got_grads, want_grads, strict=True)}
    assert max(errors.values()) <= 1e-5, errors


def test_d_conv_shorter_than_the_sequence() -> None:
    # taps reach back d_conv - 1 positions: with d_conv 3 the token no longer reaches the last positions
    ssm = _ssm(8, 4, d_conv=3)
    hist, order, tokens = _inputs(5, False, torch.float64)
    net = _slow_net(ssm, "fused")
    torch.testing.assert_close(net(hist, tokens, order=order), _reference(ssm, hist, order, tokens), rtol=1e-10, atol=0)


def test_kernel_is_bit_identical_across_runs_and_thread_counts() -> None:
    ssm = _ssm(8, 4, dtype=torch.float32)
    hist, order, tokens = _inputs(5, False, torch.float32)
    net = _slow_net(ssm, "fused")
    gout = torch.randn(sum(SIZES), generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(_values_and_grads(lambda t: net(hist, t, order=order), net.ssm, tokens, gout))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    first_out, first_grads = results[0]
    for out, grads in results[1:]:
        assert torch.equal(out, first_out)
        assert all(torch.equal(a, b) for a, b in zip(grads, first_grads, strict=True))


@pytest.mark.parametrize(
    "which,fn,low,high",
    [
        (0, lambda x: x.exp(), -87.0, 88.0),
        (1, torch.sigmoid, -80.0, 80.0),
        (2, torch.nn.functional.softplus, -80.0, 80.0),
        (3, lambda x: torch.where(x > 20, 1.0, torch.sigmoid(x)), -80.0, 80.0),
        (4, torch.nn.functional.softplus, -80.0, 80.0),
    ],
)
def test_fast_math_error_bound(which: int, fn: object, low: float, high: float) -> None:
    cpu_backend()
    x = torch.linspace(low, high, 1_000_001)
    got = torch.ops.fsg_ssm.fast_math(x, which).double()
    want = fn(x.double())  # type: ignore[operator]
    assert float(((got - want).abs() / want.abs()).max()) <= FAST_MATH_MAX_REL_ERROR


def test_fast_exp_underflows_to_zero_and_survives_infinities() -> None:
    cpu_backend()
    got = torch.ops.fsg_ssm.fast_math(torch.tensor([-88.5, -200.0, -1e30, float("-inf"), 0.0, 1.0]), 0)
    assert torch.all(got[:4] >= 0) and torch.all(got[:4] < 1e-38)
    torch.testing.assert_close(got[4:], torch.tensor([1.0, 2.718281828]))


# --- choosing a backend ---------------------------------------------------------------------------


def _broken(*_: object) -> kernels.Backend:
    raise KernelUnavailableError("no compiler here (test)")


def test_auto_falls_back_to_pytorch_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "cpu_backend", _broken)
    monkeypatch.setattr(kernels, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.resolve("auto", torch.device("cpu")) is None
        assert kernels.resolve("auto", torch.device("cpu")) is None
    assert len(caught) == 1 and "no compiler here" in str(caught[0].message)
    ssm = _ssm(8, 4)
    hist, order, tokens = _inputs(5, False, torch.float64)
    net = _slow_net(ssm, "auto")  # falls back: the PyTorch path gives the reference
    torch.testing.assert_close(net(hist, tokens, order=order), _reference(ssm, hist, order, tokens), rtol=1e-10, atol=0)


def test_fused_without_a_kernel_is_an_error_naming_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "cpu_backend", _broken)
    with pytest.raises(KernelUnavailableError, match="fused.*no compiler here"):
        kernels.resolve("fused", torch.device("cpu"))


def test_torch_never_builds_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "cpu_backend", _broken)
    assert kernels.resolve("torch", torch.device("cpu")) is None


def test_flat_layout_and_gru_never_use_the_kernel() -> None:
    assert SlowNet([4, 5], layout="flat", kernel="fused").backend(torch.device("cpu")) is None
    assert SlowNet([4, 5], kind="gru", kernel="fused").backend(torch.device("cpu")) is None


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2"])
def test_narrower_instruction_sets_build_and_match(isa: str, tmp_path) -> None:
    """The generic vector code that machines without AVX-512 run (the same C++ as the baseline build),
    built here on purpose."""
    from fsg_core.estimators.fsg.kernels.cpu import instruction_set

    if isa == "avx2" and instruction_set() == "baseline":
        pytest.skip("this CPU has no AVX2")
    code = (
        "import torch, sys; sys.path.insert(0, '.');"
        "from tests.fsg_core.estimators.fsg.test_kernels import _ssm, _inputs, _slow_net, _reference, _rel;"
        "from fsg_core.estimators.fsg.kernels import cpu;"
        f"assert cpu.instruction_set() == {isa!r};"
        "ssm = _ssm(8, 4); h, o, t = _inputs(5, False, torch.float64);"
        "r = _reference(ssm, h, o, t); net = _slow_net(ssm.float(), 'fused');"
        "print(_rel(net(h.float(), t.float(), order=o), r))"
    )
    env = dict(os.environ, FSG_KERNEL_ISA=isa, TORCH_EXTENSIONS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5

"""The slow net: the selective SSM block against naive references, and SlowNet's layouts and invariances."""

from __future__ import annotations

import itertools
import sys
import types
import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from fsg_core.estimators.fsg.slow_net import SelectiveSSM, SlowNet, _scan_all

SIZES = [12, 40, 7]
N = sum(SIZES)
K = 5
LAYOUTS_KINDS = list(itertools.product(["temporal", "flat"], ["ssm", "gru"]))


def _ssm(seed: int = 0, **kwargs: int) -> SelectiveSSM:
    torch.manual_seed(seed)
    sizes = {"d_state": 4, "d_conv": 4, "expand": 8} | kwargs
    return SelectiveSSM(1, use_kernels=False, **sizes)


def _slow(layout: str, kind: str, seed: int = 0, **kwargs: object) -> SlowNet:
    torch.manual_seed(seed)
    options: dict[str, object] = {"compile": False, "history_length": K, "d_state": 4, "expand": 8} | kwargs
    return SlowNet(list(SIZES), kind=kind, layout=layout, **options)  # type: ignore[arg-type]


def _history(k: int = K, n: int = N, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-sized history (k, n) and O(1) tokens (layers, 1)."""
    gen = torch.Generator().manual_seed(seed)
    return 1e-3 * torch.randn(k, n, generator=gen), torch.randn(len(SIZES), 1, generator=gen)


# --- SelectiveSSM ---------------------------------------------------------------------------------


def test_ssm_shapes() -> None:
    ssm = _ssm()
    u = torch.randn(3, 6, 1)
    assert ssm(u).shape == (3, 6, 1)
    assert ssm.forward_last(u).shape == (3, 1)


@pytest.mark.parametrize("length", [1, 2, 6])
def test_forward_last_equals_last_position_of_forward(length: int) -> None:
    ssm = _ssm()
    u = torch.randn(5, length, 1)
    torch.testing.assert_close(ssm.forward_last(u), ssm(u)[:, -1], rtol=1e-5, atol=1e-6)


def _naive_scan(x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t . h_t, one position at a time."""
    batch, length, d = x.shape
    h = torch.zeros(batch, d, a.shape[1], dtype=x.dtype)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * a[None])  # (B, D, S)
        h = decay * h + dt[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
        ys.append((h * c[:, t, None, :]).sum(-1))  # (B, D)
    return torch.stack(ys, dim=1)


def _scan_inputs(length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    batch, d, s = 2, 3, 4
    x = torch.randn(batch, length, d, generator=gen, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, length, d, generator=gen, dtype=torch.float64)) * 0.3
    a = -torch.rand(d, s, generator=gen, dtype=torch.float64) * 2 - 0.1
    b = torch.randn(batch, length, s, generator=gen, dtype=torch.float64)
    c = torch.randn(batch, length, s, generator=gen, dtype=torch.float64)
    return x, dt, a, b, c


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "checkpointed"])
def test_chunked_scan_matches_naive_recurrence(grad: bool) -> None:
    inputs = _scan_inputs(100)
    with torch.set_grad_enabled(grad):
        y = _scan_all(*inputs, chunk=32)  # 32 + 32 + 32 + 4: the state crosses three chunk borders
    torch.testing.assert_close(y, _naive_scan(*inputs), rtol=1e-10, atol=1e-10)


def test_chunked_scan_gradients_match_naive_recurrence() -> None:
    leaves = [t.clone().requires_grad_(True) for t in _scan_inputs(70, seed=3)]
    weights = torch.randn(2, 70, 3, dtype=torch.float64)
    (_scan_all(*leaves, chunk=32) * weights).sum().backward()
    chunked = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    (_naive_scan(*leaves) * weights).sum().backward()
    for got, want in zip(chunked, [t.grad for t in leaves], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("length", [1, 3, 6, 8, 40, 100])
def test_causal_conv_matches_conv1d(length: int) -> None:
    ssm = _ssm(d_conv=8)
    x = torch.randn(2, length, ssm.d_inner)
    conv = ssm.conv
    want = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=7, groups=ssm.d_inner)[..., :length]
    torch.testing.assert_close(ssm._causal_conv(x), want.transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [6, 100])
def test_ssm_outputs_finite_and_gradients_reach_every_parameter(length: int) -> None:
    ssm = _ssm()
    u = torch.randn(4, length, 1)
    out = ssm(u) if length > 6 else ssm.forward_last(u)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for name, p in ssm.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), f"{name} received an all-zero gradient"


def test_ssm_is_trainable() -> None:
    ssm = _ssm()
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(64, 6, 1, generator=gen)
    target = 0.5 * u[:, -1]  # (B, 1)
    opt = torch.optim.Adam(ssm.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.mse_loss(ssm.forward_last(u), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


# --- SlowNet --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "kind"), LAYOUTS_KINDS)
@pytest.mark.parametrize("k", range(1, K + 1))
def test_slow_net_shape_for_every_history_length(layout: str, kind: str, k: int) -> None:
    net = _slow(layout, kind)
    history, tokens = _history(k)
    out = net(history, tokens)
    assert out.shape == (N,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("layout", "kind"), LAYOUTS_KINDS)
def test_slow_net_gradients_reach_parameters_and_tokens(layout: str, kind: str) -> None:
    net = _slow(layout, kind)
    history, tokens = _history()
    tokens.requires_grad_(True)
    (net(history, tokens) * torch.randn(N)).sum().backward()
    assert tokens.grad is not None and (tokens.grad != 0).all()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _layer_slices() -> list[slice]:
    bounds = [0, *itertools.accumulate(SIZES)]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]


@pytest.mark.parametrize(("layout", "kind"), LAYOUTS_KINDS)
def test_layer_output_depends_only_on_its_own_history(layout: str, kind: str) -> None:
    net = _slow(layout, kind)
    history, tokens = _history()
    base = net(history, tokens).detach()
    layers = _layer_slices()
    perturbed = history.clone()
    perturbed[:, layers[1]] = 1e-3 * torch.randn(K, SIZES[1])
    out = net(perturbed, tokens).detach()
    for i, sl in enumerate(layers):
        if i == 1:
            assert not torch.allclose(out[sl], base[sl])
        else:
            assert torch.equal(out[sl], base[sl]), f"layer {i} changed when only layer 1's history did"


@pytest.mark.parametrize(("layout", "kind"), LAYOUTS_KINDS)
def test_layer_output_depends_only_on_its_own_token(layout: str, kind: str) -> None:
    net = _slow(layout, kind)
    # k = 1: in the flat layout the token then sits right before the outputs taken (with k = 5 the
    # GRU's and the SSM's memory of it has faded below float precision at layer 2's newest snapshot)
    history, tokens = _history(1)
    base = net(history, tokens).detach()
    changed = tokens.clone()
    changed[2] += 1.0
    out = net(history, changed).detach()
    layers = _layer_slices()
    assert torch.equal(out[: layers[2].start], base[: layers[2].start])
    assert not torch.equal(out[layers[2]], base[layers[2]])


@pytest.mark.parametrize("kind", ["ssm", "gru"])
@pytest.mark.parametrize("normalize", [True, False])
def test_flat_layout_is_causal_within_the_newest_snapshot(kind: str, normalize: bool) -> None:
    net = _slow("flat", kind, normalize=normalize)
    history, tokens = _history()
    base = net(history, tokens).detach()
    layer = _layer_slices()[1]
    j = 17
    perturbed = history.clone()
    # a sign flip keeps the window's RMS, so normalisation does not couple coordinates
    perturbed[-1, layer.start + j] *= -1
    out = net(perturbed, tokens).detach()
    assert torch.equal(out[layer.start : layer.start + j], base[layer.start : layer.start + j])
    assert out[layer.start + j] != base[layer.start + j], "a coordinate's output must read its own newest gradient"
    assert not torch.allclose(out[layer.start + j : layer.stop], base[layer.start + j : layer.stop])


@pytest.mark.parametrize("normalize", [True, False])
def test_flat_layout_reads_each_layer_as_one_sequence(normalize: bool) -> None:
    """Reference: per layer, [e_l, g_{t-K} (all n_l), ..., g_{t-1} (all n_l)] / scale through the SSM,
    the last n_l outputs times the scale."""
    net = _slow("flat", "ssm", normalize=normalize)
    history, tokens = _history(3)
    assert net.ssm is not None
    with torch.no_grad():
        got = net(history, tokens)
        for layer, (sl, n) in enumerate(zip(_layer_slices(), SIZES, strict=True)):
            hist = history[:, sl]  # (k, n_l)
            scale = hist.pow(2).mean().sqrt() if normalize else torch.tensor(1.0)  # RMS over the window
            seq = torch.cat([tokens[layer], (hist / scale).reshape(-1)])  # (1 + k n_l,)
            want = net.ssm(seq.view(1, -1, 1))[0, -n:, 0] * scale
            torch.testing.assert_close(got[sl], want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["ssm", "gru"])
def test_temporal_layout_reads_each_coordinate_as_one_sequence(kind: str) -> None:
    """Reference: coordinate i of layer l is the sequence [e_l, g_{t-k}[i], ..., g_{t-1}[i]] / scale_l."""
    net = _slow("temporal", kind)
    history, tokens = _history(4)
    with torch.no_grad():
        got = net(history, tokens)
        for layer, sl in enumerate(_layer_slices()):
            hist = history[:, sl]  # (k, n_l)
            scale = hist.pow(2).mean().sqrt()  # RMS over the whole window
            seq = torch.cat([tokens[layer].expand(hist.shape[1], 1), (hist / scale).t()], dim=1)  # (n_l, 1 + k)
            if net.ssm is not None:
                want = net.ssm(seq.unsqueeze(-1))[:, -1, 0]
            else:
                assert net.gru is not None
                out, _ = net.gru(seq.unsqueeze(-1))
                want = net.gru_out(out[:, -1])[:, 0]
            torch.testing.assert_close(got[sl], want * scale, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["ssm", "gru"])
@pytest.mark.parametrize("snapshot", [0, K - 1])
def test_temporal_coordinate_depends_only_on_its_own_history(kind: str, snapshot: int) -> None:
    net = _slow("temporal", kind)
    history, tokens = _history()
    base = net(history, tokens).detach()
    j = 20
    perturbed = history.clone()
    perturbed[snapshot, j] *= -1  # a sign flip keeps the layer's window RMS (the normalisation scale)
    out = net(perturbed, tokens).detach()
    others = torch.arange(N) != j
    assert torch.equal(out[others], base[others])
    assert out[j] != base[j]


@pytest.mark.parametrize("kind", ["ssm", "gru"])
def test_temporal_coordinate_independent_without_normalisation(kind: str) -> None:
    net = _slow("temporal", kind, normalize=False)
    history, tokens = _history()
    base = net(history, tokens).detach()
    perturbed = history.clone()
    perturbed[:, 3] = torch.randn(K)  # any perturbation, newest snapshot included
    out = net(perturbed, tokens).detach()
    others = torch.arange(N) != 3
    assert torch.equal(out[others], base[others])
    assert out[3] != base[3]


@pytest.mark.parametrize(("layout", "kind"), LAYOUTS_KINDS)
def test_normalisation_makes_output_scale_equivariant_per_layer(layout: str, kind: str) -> None:
    history, tokens = _history()
    factors = torch.tensor([10.0, 0.1, 3.0])  # one factor per layer
    per_coord = torch.repeat_interleave(factors, torch.tensor(SIZES))
    net = _slow(layout, kind, normalize=True)
    with torch.no_grad():
        torch.testing.assert_close(net(history * per_coord, tokens), net(history, tokens) * per_coord)
    raw = _slow(layout, kind, normalize=False)
    with torch.no_grad():
        assert not torch.allclose(raw(history * 10, tokens), raw(history, tokens) * 10)


@pytest.mark.parametrize("kind", ["ssm", "gru"])
@pytest.mark.parametrize("chunk", [64, 100, 4096])
def test_chunking_and_padding_do_not_change_the_output(kind: str, chunk: int) -> None:
    # 197 coordinates: chunk 64 pads the last chunk (197 = 3 * 64 + 5), chunk 100 pads 3, 4096 is one chunk
    sizes = [100, 37, 60]
    history = 1e-3 * torch.randn(K, sum(sizes), generator=torch.Generator().manual_seed(2))
    tokens = torch.randn(3, 1)

    def make(chunk_size: int) -> SlowNet:
        torch.manual_seed(0)
        return SlowNet(sizes, kind=kind, chunk_size=chunk_size, compile=False, history_length=K, d_state=4, expand=8)

    with torch.no_grad():
        want = make(sum(sizes))(history, tokens)  # one chunk, no padding
        got = make(chunk)(history, tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_chunk_of_one_coordinate_matches_unchunked() -> None:
    history, tokens = _history(3)
    with torch.no_grad():
        want = _slow("temporal", "ssm", chunk_size=N)(history, tokens)
        got = _slow("temporal", "ssm", chunk_size=7)(history, tokens)  # 59 = 8 * 7 + 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_compiled_temporal_slow_net_matches_eager() -> None:
    torch.manual_seed(0)
    eager = SlowNet(list(SIZES), compile=False, history_length=K, chunk_size=64, d_state=4, expand=8, kernel="torch")
    compiled = SlowNet(list(SIZES), compile=True, history_length=K, chunk_size=64, d_state=4, expand=8, kernel="torch")
    compiled.load_state_dict(eager.state_dict())
    history, tokens = _history()
    with warnings.catch_warnings():
        # a fallback to eager would warn and make this test vacuous
        warnings.filterwarnings("error", message="torch.compile of the FSG slow net failed")
        got = compiled(history, tokens)
    assert compiled._compiled is not None and compiled.use_compile
    torch.testing.assert_close(got, eager(history, tokens), rtol=1e-4, atol=1e-9)
    # a second call reuses the compiled graph, gradients included
    tokens.requires_grad_(True)
    compiled(history, tokens).sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()


# --- the mamba_ssm fast path, dispatched without a GPU --------------------------------------------


def _mamba_selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,  # noqa: N803 - mamba_ssm's argument names
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    D: torch.Tensor | None = None,  # noqa: N803
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """mamba_ssm's documented ``selective_scan_fn`` contract, written out one position at a time.

    u, delta, z (batch, dim, L); A (dim, S); B, C (batch, S, L); D, delta_bias (dim,). Returns
    ``(C_t h_t + D u_t) * SiLU(z_t)`` as (batch, dim, L), with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``.
    """
    batch, dim, length = u.shape
    state = A.shape[1]
    assert delta.shape == (batch, dim, length) and A.shape == (dim, state)
    assert B.shape == (batch, state, length) and C.shape == (batch, state, length)
    assert D is not None and D.shape == (dim,) and z is not None and z.shape == (batch, dim, length)
    assert all(t.is_contiguous() for t in (u, delta, B, C, z)), "the CUDA kernel needs contiguous inputs"
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(batch, dim, state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1) + D[:, None] * u  # (batch, dim, L)
    return y * F.silu(z)


@pytest.fixture
def fake_mamba(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, object]]]:
    """A stand-in ``mamba_ssm.ops.selective_scan_interface`` whose kernel is the reference above;
    returns the list of calls it receives."""
    from fsg_core.estimators.fsg import slow_net

    calls: list[dict[str, object]] = []

    def selective_scan_fn(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        names = ("u", "delta", "A", "B", "C", "D")
        calls.append({**dict(zip(names, args, strict=False)), **kwargs})
        return _mamba_selective_scan_ref(*args, **kwargs)  # type: ignore[arg-type]

    package, ops, interface = (types.ModuleType(n) for n in MAMBA_MODULES)
    interface.selective_scan_fn = selective_scan_fn  # type: ignore[attr-defined]
    package.ops, ops.selective_scan_interface = ops, interface  # type: ignore[attr-defined]
    for module in (package, ops, interface):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    slow_net.has_mamba_kernels.cache_clear()
    yield calls
    slow_net.has_mamba_kernels.cache_clear()


MAMBA_MODULES = ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface")


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsg_core.estimators.fsg import slow_net

    monkeypatch.setattr(slow_net, "_is_cuda", lambda t: True)


def _kernel_ssm() -> SelectiveSSM:
    torch.manual_seed(0)
    # d_inner 8, state 4, sequence 7 below: every transposition mistake changes a shape
    return SelectiveSSM(1, d_state=4, d_conv=4, expand=8, use_kernels=True)


def test_kernel_is_used_on_cuda_with_mamba_and_matches_the_pytorch_scan(fake_mamba, monkeypatch) -> None:
    ssm = _kernel_ssm()
    u = torch.randn(3, 7, 1, generator=torch.Generator().manual_seed(4))
    want, want_last = ssm(u), ssm.forward_last(u)  # the pure-PyTorch path: the tensors are on the CPU
    assert fake_mamba == []
    want.pow(2).sum().backward()
    want_grads = {n: p.grad.clone() for n, p in ssm.named_parameters() if p.grad is not None}
    ssm.zero_grad()

    _pretend_cuda(monkeypatch)
    got = ssm(u)
    assert len(fake_mamba) == 1
    call = fake_mamba[0]
    shapes = {k: tuple(v.shape) for k, v in call.items() if isinstance(v, torch.Tensor)}
    assert shapes == {
        "u": (3, 8, 7),
        "delta": (3, 8, 7),
        "A": (8, 4),
        "B": (3, 4, 7),
        "C": (3, 4, 7),
        "D": (8,),
        "z": (3, 8, 7),
        "delta_bias": (8,),
    }
    assert call["delta_softplus"] is True
    torch.testing.assert_close(call["A"], -torch.exp(ssm.A_log))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssm.forward_last(u), want_last, rtol=1e-5, atol=1e-6)
    got.pow(2).sum().backward()
    for name, p in ssm.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_kernel_is_not_used_on_cpu_even_when_mamba_imports(fake_mamba) -> None:
    ssm = _kernel_ssm()
    ssm(torch.randn(2, 7, 1))
    ssm.forward_last(torch.randn(2, 7, 1))
    assert fake_mamba == []


def test_pytorch_scan_on_cuda_without_mamba(monkeypatch) -> None:
    from fsg_core.estimators.fsg import slow_net

    for name in MAMBA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    slow_net.has_mamba_kernels.cache_clear()
    try:
        assert not slow_net.has_mamba_kernels()
        ssm = _kernel_ssm()
        u = torch.randn(2, 7, 1)
        want = ssm(u)
        _pretend_cuda(monkeypatch)
        torch.testing.assert_close(ssm(u), want)  # no ImportError: the scan in PyTorch ran
    finally:
        slow_net.has_mamba_kernels.cache_clear()


def test_kernels_can_be_switched_off(fake_mamba, monkeypatch) -> None:
    _pretend_cuda(monkeypatch)
    torch.manual_seed(0)
    SelectiveSSM(1, d_state=4, d_conv=4, expand=8, use_kernels=False)(torch.randn(2, 7, 1))
    assert fake_mamba == []


def test_flat_slow_net_runs_through_the_kernel_on_cuda(fake_mamba, monkeypatch) -> None:
    net = _slow("flat", "ssm")
    history, tokens = _history()
    with torch.no_grad():
        want = net(history, tokens)
        _pretend_cuda(monkeypatch)
        got = net(history, tokens)
    assert len(fake_mamba) == 1 and fake_mamba[0]["u"].shape == (len(SIZES), 8, 1 + K * max(SIZES))  # type: ignore[union-attr]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)

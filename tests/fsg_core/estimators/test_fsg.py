"""FSG's iteration (FSG_SPEC §4) on a tiny binary network, checked against the formulas step by step."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsg_core.binary import Binarizer, BinaryConv2d, BinaryLinear, binary_layers
from fsg_core.estimators import get
from fsg_core.estimators.fsg import FSG
from fsg_core.estimators.hypernets import CoordinateMLP

LR = 1e-2


def _build(seed: int = 0, **params: Any) -> tuple[FSG, nn.Module, torch.optim.Optimizer]:
    """FSG on conv 1->4 (36 weights) and linear 4->3 (12 weights), as fsg_core/train.py drives it."""
    torch.manual_seed(seed)
    est = get("fsg")(get("fsg").Params(**({"compile": False} | params)))
    assert isinstance(est, FSG)
    b = Binarizer("dorefa")
    model = nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1, binarizer=b, estimator=est),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        BinaryLinear(4, 3, binarizer=b, estimator=est),
    )
    est.setup(list(binary_layers(model)))
    return est, model, torch.optim.Adam(model.parameters(), 1e-3)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def _forward_backward(est: FSG, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    est.before_forward(LR)
    x, y = _batch(step)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()


def _step(est: FSG, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> bool:
    _forward_backward(est, model, opt, step)
    stepped = est.after_backward()
    if stepped:
        opt.step()
    return stepped


def _layers(model: nn.Module) -> list[nn.Module]:
    return [layer for _, layer in binary_layers(model)]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _weight_grads(model: nn.Module) -> torch.Tensor:
    return _flat([layer.weight.grad for layer in _layers(model)])


def _calibration(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return _flat([layer.binarizer.calibration(layer.weight) for layer in _layers(model)])


class _Expected:
    """Everything the next step's formulas need, captured from the estimator BEFORE the step
    (the meta step changes the nets): c, f = g * F(w~) and s = S([e_l ; history])."""

    def __init__(self, est: FSG, model: nn.Module) -> None:
        p = est.params
        assert est.prev_tilde is not None
        self.weights = _flat([layer.weight.detach().clone() for layer in _layers(model)])
        self.c = _calibration(model)
        g_prev = est.history.latest().clone()
        fast = copy.deepcopy(est.fast)
        with torch.no_grad():
            self.f = g_prev * fast(est.prev_tilde.clone())
            self.s = copy.deepcopy(est.slow)(est.history.ordered().clone(), copy.deepcopy(est.lre)())
        self.direction = p.alpha * self.s + (1 - p.alpha) * self.c * self.f


# --- the first two steps --------------------------------------------------------------------------


def test_first_step_has_no_update() -> None:
    est, model, opt = _build()
    meta_before = [p.detach().clone() for p in est.meta_parameters()]
    est.before_forward(LR)
    assert all(layer.lookahead is None for layer in _layers(model)), "no history yet: no look-ahead"
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    # the plain backward's straight-through gradient, c * g, is not the estimator's business
    captured = _flat([layer.captured_grad for layer in _layers(model)])
    torch.testing.assert_close(_weight_grads(model), _calibration(model) * captured)
    for layer in _layers(model):
        layer.weight.grad = None
    assert est.after_backward() is False
    assert all(layer.weight.grad is None for layer in _layers(model)), "after_backward wrote W.grad on step 1"
    assert len(est.history) == 1
    assert torch.equal(est.history.latest(), captured)
    assert all(torch.equal(a, b) for a, b in zip(meta_before, est.meta_parameters(), strict=True))


def test_second_step_updates() -> None:
    est, model, opt = _build()
    assert _step(est, model, opt, 0) is False
    assert _step(est, model, opt, 1) is True
    assert len(est.history) == 2
    for layer in _layers(model):
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        assert layer.lookahead is None and layer.captured_grad is None, "step state must be cleared"


@pytest.mark.parametrize("layout", ["temporal", "flat"])
@pytest.mark.parametrize("slow_net", ["ssm", "gru"])
def test_every_slow_net_trains(layout: str, slow_net: str) -> None:
    est, model, opt = _build(layout=layout, slow_net=slow_net, update="mix", history=3)
    for step in range(5):
        assert _step(est, model, opt, step) is (step > 0)
        assert torch.isfinite(_weight_grads(model)).all()
    assert len(est.history) == 3


# --- the update rules -----------------------------------------------------------------------------


def test_fast_update_is_c_times_f() -> None:
    est, model, opt = _build(update="fast")
    _step(est, model, opt, 0)
    for step in (1, 2, 3):
        # f = g_prev * k * w~_prev with k = W3 W2 W1 of the fast net before this step's meta update
        k = est.fast.scale().detach().clone()
        g_prev = est.history.latest().clone()
        assert est.prev_tilde is not None
        tilde_prev = est.prev_tilde.clone()
        c = _calibration(model)
        _step(est, model, opt, step)
        want = c * (g_prev * (k * tilde_prev))
        assert torch.equal(_weight_grads(model), want)


def test_mix_update_is_weighted_sum_of_slow_and_fast() -> None:
    est, model, opt = _build(update="mix", alpha=0.9)
    _step(est, model, opt, 0)
    for step in (1, 2, 3):
        expected = _Expected(est, model)
        _step(est, model, opt, step)
        assert est._slow_cache is not None
        torch.testing.assert_close(est._slow_cache, expected.s, rtol=1e-5, atol=1e-10)
        want = 0.9 * expected.s + 0.1 * expected.c * expected.f
        torch.testing.assert_close(_weight_grads(model), want, rtol=1e-5, atol=1e-10)


def test_fast_and_mix_updates_differ() -> None:
    grads = {}
    for update in ("fast", "mix"):
        est, model, opt = _build(seed=3, update=update)
        for step in range(2):
            _step(est, model, opt, step)
        grads[update] = _weight_grads(model)
    assert not torch.allclose(grads["fast"], grads["mix"])


@pytest.mark.parametrize("update", ["fast", "mix"])
def test_forward_uses_the_lookahead_weight(update: str) -> None:
    est, model, opt = _build(update=update, alpha=0.9)
    _step(est, model, opt, 0)
    for step in (1, 2):
        expected = _Expected(est, model)
        _forward_backward(est, model, opt, step)
        lookahead = _flat([layer.lookahead for layer in _layers(model)])
        assert lookahead.requires_grad, "W' must stay in the graph of the hypernetworks"
        # W' = W - lr (a s + (1 - a) c f), whatever the base update is
        torch.testing.assert_close(lookahead.detach(), expected.weights - LR * expected.direction, rtol=1e-6, atol=1e-9)
        # the forward computed with W': the recorded w~ is W''s
        tildes = _flat([layer.last_tilde for layer in _layers(model)])
        want = _flat([layer.binarizer.tilde(layer.lookahead.detach()) for layer in _layers(model)])
        assert torch.equal(tildes, want)
        est.after_backward()
        opt.step()


def test_update_lookahead_forwards_at_the_previous_update() -> None:
    """``lookahead="update"``: MetaQuant's value trick on FSG; the value is W - lr R, the slow and fast
    nets keep the gradient path of W - lr (a s + (1 - a) c f)."""
    est, model, opt = _build(lookahead="update")
    _step(est, model, opt, 0)
    _step(est, model, opt, 1)  # the first look-ahead: no previous update, the proposal's value
    before = _flat([layer.weight.detach().clone() for layer in _layers(model)])
    _step(est, model, opt, 2)
    now = _flat([layer.weight.detach().clone() for layer in _layers(model)])
    est.before_forward(LR)
    lookahead = _flat([layer.lookahead for layer in _layers(model)])
    torch.testing.assert_close(lookahead.detach(), now - (before - now), rtol=1e-5, atol=1e-8)
    fc = _layers(model)[-1]
    assert fc.lookahead_bias is not None and fc.lookahead_bias.requires_grad
    assert lookahead.requires_grad
    params = [p for p in [*est.fast.parameters(), *est.slow.parameters()] if p.requires_grad]
    grads = torch.autograd.grad(lookahead.sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the hypernetworks stay in the graph"


# --- the meta update ------------------------------------------------------------------------------


def _snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(module: nn.Module, before: list[torch.Tensor]) -> list[bool]:
    return [not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True)]


def test_meta_parameters_change_after_a_lookahead_step() -> None:
    est, model, opt = _build()
    _step(est, model, opt, 0)
    before = {name: _snapshot(m) for name, m in [("fast", est.fast), ("slow", est.slow), ("lre", est.lre)]}
    _forward_backward(est, model, opt, 1)
    for p in est.meta_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    est.after_backward()
    for name, module in [("fast", est.fast), ("slow", est.slow), ("lre", est.lre)]:
        assert all(_changed(module, before[name])), f"some {name} parameter did not move"
    assert all(p.grad is None for p in est.meta_parameters()), "meta-gradients must be cleared after the step"


def test_alpha_zero_gives_the_slow_net_zero_gradient() -> None:
    est, model, opt = _build(alpha=0.0)
    _step(est, model, opt, 0)
    slow_before, lre_before, fast_before = _snapshot(est.slow), _snapshot(est.lre), _snapshot(est.fast)
    _forward_backward(est, model, opt, 1)
    for p in [*est.slow.parameters(), *est.lre.parameters()]:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert all(p.grad is not None and (p.grad != 0).any() for p in est.fast.parameters())
    est.after_backward()
    assert not any(_changed(est.slow, slow_before))
    assert not any(_changed(est.lre, lre_before))
    assert all(_changed(est.fast, fast_before))


def test_slow_every_recomputes_the_slow_gradient_periodically() -> None:
    est, model, opt = _build(slow_every=3, update="mix")
    _step(est, model, opt, 0)
    recomputed = []
    for step in range(1, 11):
        before = _snapshot(est.slow)
        cache = est._slow_cache
        _step(est, model, opt, step)
        moved = any(_changed(est.slow, before))
        assert moved == (est._slow_cache is not cache), "the slow net moves exactly when s is recomputed"
        if not moved:
            assert cache is not None and torch.equal(est._slow_cache, cache)
        recomputed.append(moved)
    # est.steps is 1..10 before these steps: s is recomputed first (no cache), then when steps % 3 == 0
    assert recomputed == [True, False, True, False, False, True, False, False, True, False]


# --- state and statistics -------------------------------------------------------------------------


@pytest.mark.parametrize(("update", "slow_every"), [("fast", 1), ("mix", 2)])
def test_state_round_trip_reproduces_the_next_step(update: str, slow_every: int) -> None:
    est_a, model_a, opt_a = _build(seed=0, update=update, slow_every=slow_every)
    # three steps: with slow_every=2 the next step (est.steps == 3) reuses the cached s
    for step in range(3):
        _step(est_a, model_a, opt_a, step)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "est": est_a.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # as fsg_core/checkpoint.py reads it

    est_b, model_b, opt_b = _build(seed=7, update=update, slow_every=slow_every)  # different initial nets
    model_b.load_state_dict(state["model"])
    opt_b.load_state_dict(state["opt"])
    est_b.load_state_dict(state["est"])
    assert est_b.steps == est_a.steps == 3
    for step in (3, 4):
        _step(est_a, model_a, opt_a, step)
        _step(est_b, model_b, opt_b, step)
        assert torch.equal(_weight_grads(model_a), _weight_grads(model_b))
        for p, q in zip(est_a.meta_parameters(), est_b.meta_parameters(), strict=True):
            assert torch.equal(p, q)


def test_statistics_are_finite_means_and_reset() -> None:
    est, model, opt = _build(update="fast", stats_every=1)
    _step(est, model, opt, 0)
    assert est.statistics() == {}  # no look-ahead step yet
    rms, scales = [], []
    for step in (1, 2, 3):
        scales.append(est.fast.scale().item())
        _step(est, model, opt, step)
        rms.append(_weight_grads(model).pow(2).mean().sqrt().item())  # update=fast: W.grad is c f
    stats = est.statistics()
    assert {"fast_rms", "slow_rms", "fast_scale", "fast_slow_cos"} <= stats.keys()
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["fast_rms"] == pytest.approx(sum(rms) / 3, rel=1e-5)
    assert stats["fast_scale"] == pytest.approx(sum(scales) / 3, rel=1e-5)
    assert stats["slow_rms"] > 0
    assert est.statistics() == {}


@pytest.mark.parametrize("alpha", [0.9, 0.3])
def test_contribution_telemetry_equals_the_hand_computed_terms(alpha: float) -> None:
    """RMS of a*s and of (1-a)*c*f, their ratio, and the cosine of the update with STE's c*g."""
    est, model, opt = _build(update="fast", stats_every=1, alpha=alpha)
    _step(est, model, opt, 0)
    _step(est, model, opt, 1)
    est.statistics()  # only the next step counts
    expected = _Expected(est, model)
    g = est.history.latest().clone()
    scale = float(est.fast.scale().detach())  # the fast net's learned scalar, before this step's meta update
    _step(est, model, opt, 2)
    stats = est.statistics()

    def rms(x: torch.Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    slow, fast = rms(alpha * expected.s), rms((1 - alpha) * expected.c * expected.f)
    assert stats["slow_term_rms"] == pytest.approx(slow, rel=1e-5)
    assert stats["fast_term_rms"] == pytest.approx(fast, rel=1e-5)
    assert stats["slow_fast_ratio"] == pytest.approx(slow / fast, rel=1e-5)
    ste = expected.c * g
    cos = float(expected.direction @ ste / (expected.direction.norm() * ste.norm()))
    assert stats["update_ste_cos"] == pytest.approx(cos, rel=1e-5, abs=1e-7)
    assert stats["fast_scale"] == pytest.approx(scale, rel=1e-6)


def test_statistics_sample_every_n_steps() -> None:
    est, model, opt = _build(update="fast", stats_every=2)
    _step(est, model, opt, 0)  # est.steps 0 -> 1, no look-ahead
    rms = {}
    for step in (1, 2, 3, 4):
        _step(est, model, opt, step)
        rms[step] = _weight_grads(model).pow(2).mean().sqrt().item()
    # look-ahead steps run with est.steps 1, 2, 3, 4: sampled where steps % 2 == 0, i.e. at steps 2 and 4
    assert est.statistics()["fast_rms"] == pytest.approx((rms[2] + rms[4]) / 2, rel=1e-5)


# --- the fast net ---------------------------------------------------------------------------------


def _unrolled(net: CoordinateMLP, x: torch.Tensor, act: Any = None) -> torch.Tensor:
    """The 1 -> hidden -> hidden -> 1 MLP written out, coordinate by coordinate."""
    act = act or (lambda h: h)
    h = x.reshape(-1, 1)
    h = act(h @ net.fc1.weight.t())
    h = act(h @ net.fc2.weight.t())
    return (h @ net.fc3.weight.t()).view_as(x)


def test_fast_net_without_activation_is_a_learned_scalar() -> None:
    torch.manual_seed(0)
    net = CoordinateMLP(hidden=16, positive_init=False)
    k = (net.fc3.weight @ net.fc2.weight @ net.fc1.weight).item()
    assert net.scale().item() == pytest.approx(k)
    x = torch.randn(5, 7)
    torch.testing.assert_close(net(x), k * x)
    torch.testing.assert_close(net(x), _unrolled(net, x))
    # the shortcut gives the three matrices the MLP's own gradients
    net(x).pow(2).sum().backward()
    shortcut = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    _unrolled(net, x).pow(2).sum().backward()
    for got, want in zip(shortcut, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(got, want)


def test_positive_init_makes_the_scale_one() -> None:
    raw_signs = set()
    for seed in range(10):
        torch.manual_seed(seed)
        raw_signs.add(bool(CoordinateMLP(hidden=100, positive_init=False).scale() > 0))
        torch.manual_seed(seed)
        net = CoordinateMLP(hidden=100)
        # rtol 1e-4: W3 W2 W1 is a 100-term dot product with cancellation (seed 3's raw k is 0.003)
        torch.testing.assert_close(net.scale(), torch.tensor(1.0), rtol=1e-4, atol=0)
        x = torch.randn(10)
        torch.testing.assert_close(net(x), x, rtol=1e-4, atol=0)
    assert raw_signs == {True, False}, "the seeds must cover a negative raw scale"


@pytest.mark.parametrize(("activation", "fn"), [("tanh", torch.tanh), ("relu", torch.relu)])
def test_fast_net_with_activation_is_a_coordinatewise_mlp(activation: str, fn: Any) -> None:
    torch.manual_seed(0)
    net = CoordinateMLP(hidden=16, activation=activation)  # type: ignore[arg-type]
    x = torch.randn(4, 6)
    out = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _unrolled(net, x, fn))
    # coordinate-wise: each output depends on its own input only
    torch.testing.assert_close(net(x[:2]), out[:2])
    # and not additive (bias-free ReLU nets are homogeneous and tanh nets odd, so test additivity)
    y = torch.randn(4, 6)
    assert not torch.allclose(net(x + y), out + net(y))


def test_fsg_with_tanh_fast_net_uses_the_mlp() -> None:
    est, model, opt = _build(fast_activation="tanh", update="fast")
    _step(est, model, opt, 0)
    g_prev = est.history.latest().clone()
    assert est.prev_tilde is not None
    fast = copy.deepcopy(est.fast)
    with torch.no_grad():
        want = _calibration(model) * g_prev * _unrolled(fast, est.prev_tilde, torch.tanh)
    _step(est, model, opt, 1)
    torch.testing.assert_close(_weight_grads(model), want, rtol=1e-5, atol=1e-12)
    assert "fast_scale" not in est.statistics()


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_state_from_a_cpu_checkpoint_lands_on_the_models_device() -> None:
    """A run resumed on a GPU reads its checkpoint on the CPU; the carried tensors must follow the
    model (the ``meta`` device stands in for a GPU)."""
    est_a, model_a, opt_a = _build(seed=0, slow_every=2)
    for step in range(3):
        _step(est_a, model_a, opt_a, step)
    buf = io.BytesIO()
    torch.save(est_a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)

    _, model_b, _ = _build(seed=1)
    model_b.to("meta")
    est_b = FSG(est_a.params)
    est_b.setup(list(binary_layers(model_b)))
    est_b.load_state_dict(state)
    carried = [est_b.history.buffer, est_b.prev_tilde, est_b._slow_cache]
    assert all(t is not None and t.device.type == "meta" for t in carried)


# --- ablation switches ----------------------------------------------------------------------------


def test_without_the_slow_net_the_look_ahead_is_the_fast_term_alone_and_the_slow_net_never_moves() -> None:
    est, model, opt = _build(update="mix", slow=False, alpha=0.9)
    slow_before = [q.detach().clone() for q in est.slow.parameters()]
    _step(est, model, opt, 0)
    _step(est, model, opt, 1)
    expected = _Expected(est, model)
    _step(est, model, opt, 2)
    # update=mix writes the whole direction into W.grad: (1 - a) c f, the slow term being zero
    torch.testing.assert_close(_weight_grads(model), 0.1 * expected.c * expected.f, rtol=1e-5, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(slow_before, est.slow.parameters(), strict=True))
    assert len(est.meta_optimizers) == 1  # the fast net's only


def test_without_lre_every_layer_token_stays_zero_while_the_slow_net_learns() -> None:
    est, model, opt = _build(lre=False)
    slow_before = [q.detach().clone() for q in est.slow.parameters()]
    for step in range(4):
        _step(est, model, opt, step)
    assert torch.count_nonzero(est.lre()) == 0 and not est.lre.table.weight.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(slow_before, est.slow.parameters(), strict=True))

"""MetaQuant's three meta networks on a tiny binary network, checked against their formulas."""

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
from fsg_core.estimators.metaquant import MetaQuant

LR = 1e-2
VARIANTS = ["fcgrad", "multifc", "lstmfc"]


def _build(variant: str, seed: int = 0, **params: Any) -> tuple[MetaQuant, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    est = get("metaquant")(get("metaquant").Params(variant=variant, **({"hidden": 16} | params)))
    assert isinstance(est, MetaQuant)
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


def _step(est: MetaQuant, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> bool:
    est.before_forward(LR)
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    stepped = est.after_backward()
    if stepped:
        opt.step()
    return stepped


def _layers(model: nn.Module) -> list[nn.Module]:
    return [layer for _, layer in binary_layers(model)]


def _weight_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.grad.reshape(-1) for layer in _layers(model)])


def _expected_grad(est: MetaQuant, model: nn.Module) -> torch.Tensor:
    """``c * M`` from the estimator's state before the step (the meta step changes the net)."""
    assert est.prev_grad is not None and est.prev_tilde is not None
    g, tilde = est.prev_grad.clone(), est.prev_tilde.clone()
    net = copy.deepcopy(est.net)
    with torch.no_grad():
        c = torch.cat([layer.binarizer.calibration(layer.weight).reshape(-1) for layer in _layers(model)])
        if est.params.variant == "fcgrad":
            m = net(g)  # M(g)
        elif est.params.variant == "multifc":
            m = g * net(tilde)  # g * M(w~)
        else:
            state = None if est.lstm_state is None else tuple(s.clone() for s in est.lstm_state)
            h, _ = net.cell(tilde.reshape(-1, 1), state)  # (N, hidden)
            m = g * net.fc(h).reshape(-1)  # g * M(LSTM(w~))
    return c * m


@pytest.mark.parametrize("variant", VARIANTS)
def test_first_step_has_no_update(variant: str) -> None:
    est, model, opt = _build(variant)
    before = [p.detach().clone() for p in est.meta_parameters()]
    est.before_forward(LR)
    assert all(layer.lookahead is None for layer in _layers(model))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), y).backward()
    for layer in _layers(model):
        layer.weight.grad = None
    assert est.after_backward() is False
    assert all(layer.weight.grad is None for layer in _layers(model))
    assert est.prev_grad is not None and est.prev_tilde is not None
    assert est.prev_grad.shape == est.prev_tilde.shape == (36 + 12,)
    assert all(torch.equal(a, b) for a, b in zip(before, est.meta_parameters(), strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_matches_the_variant_formula(variant: str) -> None:
    est, model, opt = _build(variant)
    _step(est, model, opt, 0)
    for step in (1, 2, 3):
        want = _expected_grad(est, model)
        before = [p.detach().clone() for p in est.meta_parameters()]
        assert _step(est, model, opt, step) is True
        torch.testing.assert_close(_weight_grads(model), want, rtol=1e-5, atol=1e-12)
        names = [name for name, _ in est.net.named_parameters()]
        moved = {n: not torch.equal(a, b) for n, a, b in zip(names, before, est.meta_parameters(), strict=True)}
        if variant == "lstmfc" and step == 1:
            # the first look-ahead starts from h = 0, which gives the recurrent weights no gradient
            assert not moved.pop("cell.weight_hh")
        assert all(moved.values()), f"{variant}: meta parameters that did not move: {moved}"


def test_variants_differ() -> None:
    grads = []
    for variant in VARIANTS:
        est, model, opt = _build(variant, seed=1)
        _step(est, model, opt, 0)
        _step(est, model, opt, 1)
        grads.append(_weight_grads(model))
    for i in range(len(grads)):
        for j in range(i + 1, len(grads)):
            assert not torch.allclose(grads[i], grads[j])


def test_lstm_state_is_carried_across_steps() -> None:
    est, model, opt = _build("lstmfc")
    _step(est, model, opt, 0)
    assert est.lstm_state is None
    _step(est, model, opt, 1)
    assert est.lstm_state is not None
    h1, c1 = (s.clone() for s in est.lstm_state)
    assert h1.shape == c1.shape == (36 + 12, 16)
    assert not h1.requires_grad and not c1.requires_grad
    _step(est, model, opt, 2)
    h2, c2 = est.lstm_state
    assert not torch.equal(h1, h2) and not torch.equal(c1, c2)
    # the state matters: a fresh state would give a different update
    est_zero = copy.deepcopy(est)
    est_zero.lstm_state = None
    assert not torch.allclose(_expected_grad(est, model), _expected_grad(est_zero, model))


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_round_trip_reproduces_the_next_step(variant: str) -> None:
    est_a, model_a, opt_a = _build(variant, seed=0)
    for step in range(3):
        _step(est_a, model_a, opt_a, step)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "est": est_a.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    est_b, model_b, opt_b = _build(variant, seed=5)
    model_b.load_state_dict(state["model"])
    opt_b.load_state_dict(state["opt"])
    est_b.load_state_dict(state["est"])
    for step in (3, 4):
        _step(est_a, model_a, opt_a, step)
        _step(est_b, model_b, opt_b, step)
        assert torch.equal(_weight_grads(model_a), _weight_grads(model_b))
    if variant == "lstmfc":
        assert est_a.lstm_state is not None and est_b.lstm_state is not None
        assert all(torch.equal(a, b) for a, b in zip(est_a.lstm_state, est_b.lstm_state, strict=True))


def test_statistics_report_the_meta_gradient_rms() -> None:
    est, model, opt = _build("multifc", stats_every=1)
    _step(est, model, opt, 0)
    rms = []
    for step in (1, 2):
        _step(est, model, opt, step)
        rms.append(_weight_grads(model).pow(2).mean().sqrt().item())
    assert est.statistics()["meta_grad_rms"] == pytest.approx(sum(rms) / 2, rel=1e-5)
    assert est.statistics() == {}


@pytest.mark.parametrize("variant", VARIANTS)
def test_statistics_report_the_updates_cosine_with_the_ste_gradient(variant: str) -> None:
    est, model, opt = _build(variant, stats_every=1)
    _step(est, model, opt, 0)
    _step(est, model, opt, 1)
    est.statistics()
    update = _expected_grad(est, model)
    assert est.prev_grad is not None
    with torch.no_grad():
        c = torch.cat([layer.binarizer.calibration(layer.weight).reshape(-1) for layer in _layers(model)])
    ste = c * est.prev_grad
    _step(est, model, opt, 2)
    cos = float(update @ ste / (update.norm() * ste.norm()))
    assert est.statistics()["update_ste_cos"] == pytest.approx(cos, rel=1e-5, abs=1e-7)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_state_from_a_cpu_checkpoint_lands_on_the_models_device() -> None:
    """The carried gradient, ``w~`` and LSTM state follow the model (``meta`` stands in for a GPU)."""
    est_a, model_a, opt_a = _build("lstmfc", seed=0)
    for step in range(3):
        _step(est_a, model_a, opt_a, step)
    buf = io.BytesIO()
    torch.save(est_a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)

    _, model_b, _ = _build("lstmfc", seed=1)
    model_b.to("meta")
    est_b = MetaQuant(est_a.params)
    est_b.setup(list(binary_layers(model_b)))
    est_b.load_state_dict(state)
    assert est_b.lstm_state is not None and isinstance(est_b.lstm_state, tuple)
    carried = [est_b.prev_grad, est_b.prev_tilde, *est_b.lstm_state]
    assert all(t is not None and t.device.type == "meta" for t in carried)


def _flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.detach().reshape(-1) for layer in _layers(model)])


def test_lookahead_forwards_at_the_previous_update_with_the_learned_gradient_path() -> None:
    """The research code's value trick: W' = W - lr R (R the last applied update per unit lr), while
    the meta network's gradient is that of -lr c M; the FC bias computes at b - lr R_b."""
    est, model, opt = _build("multifc")
    assert est.params.lookahead == "update"
    fc = _layers(model)[-1]
    lrs = [LR, LR, 3 * LR, LR]
    for step, lr in enumerate(lrs[:2]):  # step 0: no g; step 1: no previous update (the proposal's value)
        weights, bias = _flat_weights(model), fc.bias.detach().clone()
        est.before_forward(lr)
        if step == 1:
            assert fc.lookahead_bias is None
        x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if est.after_backward():
            opt.step()
    for lr_prev, lr in zip(lrs[1:], lrs[2:], strict=False):
        now, bias_now = _flat_weights(model), fc.bias.detach().clone()
        update, bias_update = (weights - now) / lr_prev, (bias - bias_now) / lr_prev
        assert update.abs().max() > 0
        assert est.prev_grad is not None and est.prev_tilde is not None
        est.before_forward(lr)
        lookahead = torch.cat([layer.lookahead.reshape(-1) for layer in _layers(model)])
        torch.testing.assert_close(lookahead.detach(), now - lr * update, rtol=1e-5, atol=1e-8)
        assert fc.lookahead_bias is not None
        torch.testing.assert_close(fc.lookahead_bias.detach(), bias_now - lr * bias_update)
        # gradient paths: the meta network's is that of -lr c M, the bias's is the identity
        c = torch.cat([layer.binarizer.calibration(layer.weight.detach()).reshape(-1) for layer in _layers(model)])
        proposal = -lr * c * est.prev_grad * est.net(est.prev_tilde)
        v = torch.randn_like(lookahead)
        params = list(est.net.parameters())
        got = torch.autograd.grad((lookahead * v).sum(), params, retain_graph=True)
        want = torch.autograd.grad((proposal * v).sum(), params)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
        (bias_grad,) = torch.autograd.grad(fc.lookahead_bias.sum(), [fc.bias])
        assert torch.equal(bias_grad, torch.ones_like(fc.bias))
        weights, bias = now, bias_now
        x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        assert est.after_backward() is True
        assert fc.lookahead_bias is None and all(layer.lookahead is None for layer in _layers(model))
        opt.step()


def test_proposal_lookahead_forwards_at_the_learned_gradient() -> None:
    est, model, opt = _build("multifc", lookahead="proposal")
    for step in range(3):
        _step(est, model, opt, step)
    now = _flat_weights(model)
    want = _expected_grad(est, model)
    est.before_forward(LR)
    lookahead = torch.cat([layer.lookahead.detach().reshape(-1) for layer in _layers(model)])
    torch.testing.assert_close(lookahead, now - LR * want, rtol=1e-5, atol=1e-9)
    assert all(layer.lookahead_bias is None for layer in _layers(model))


def test_the_previous_update_survives_a_checkpoint() -> None:
    """Without the remembered weights a resumed run would forward at the proposal's value once."""
    est, model, opt = _build("multifc")
    for step in range(3):
        _step(est, model, opt, step)
    state = est.state_dict()
    assert state["previous"] is not None and state["previous"]["lr"] == LR
    fresh = MetaQuant(est.params)
    fresh.setup(list(binary_layers(model)))
    fresh.load_state_dict(state)
    assert fresh._previous is not None
    assert torch.equal(fresh._previous["weights"], est._previous["weights"])
    legacy = {k: v for k, v in state.items() if k != "previous"}  # a checkpoint from before the value trick
    fresh.load_state_dict(legacy)
    assert fresh._previous is None

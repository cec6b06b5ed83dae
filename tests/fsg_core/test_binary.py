"""Binary layers and forward binarizers (FSG_SPEC §2), checked against numpy formulas and F.conv2d/F.linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsg_core.binary import Binarizer, BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers, set_binary, sign
from fsg_core.estimators import get
from fsg_core.models import LayerFactory, build_model


def _weight(*shape: int, seed: int = 0, zeros: int = 3) -> torch.Tensor:
    """Seeded normal weights with a few exact zeros (the sign(0) rule must show)."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    w.view(-1)[:zeros] = 0.0
    return w


def _ste_linear(w: torch.Tensor, binarizer: Binarizer, estimator: str = "ste", **kwargs) -> BinaryLinear:
    layer = BinaryLinear(w.shape[1], w.shape[0], binarizer=binarizer, estimator=get(estimator)(), **kwargs)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.linspace(-1, 1, w.shape[0]))
    return layer


# --- sign -------------------------------------------------------------------------------------


def test_sign_of_zero_is_plus_one() -> None:
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.0, -2.0])
    assert torch.equal(sign(x), torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0]))
    assert torch.sign(torch.tensor(0.0)) == 0  # the bug being avoided
    assert sign(torch.tensor(0.0)) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_sign_keeps_dtype(dtype: torch.dtype) -> None:
    assert sign(torch.zeros(3, dtype=dtype)).dtype == dtype


# --- dorefa -----------------------------------------------------------------------------------


def test_dorefa_latent_tilde_and_binary_weight_match_numpy() -> None:
    w = _weight(16, 9)
    w64 = w.numpy().astype(np.float64)
    t = np.tanh(w64)
    x_ref = t / np.abs(t).max()
    tilde_ref = t / (2 * np.abs(t).max()) + 0.5
    binary_ref = 2 * np.floor(tilde_ref + 0.5) - 1  # round half up: w~ = 1/2 (W = 0) goes to +1

    b = Binarizer("dorefa")
    np.testing.assert_allclose(b.latent(w).numpy(), x_ref, rtol=1e-6, atol=1e-7)
    tilde = b.tilde(w)
    assert tilde.min() >= 0.0 and tilde.max() <= 1.0
    np.testing.assert_allclose(tilde.numpy(), tilde_ref, rtol=1e-6, atol=1e-7)
    assert b.scale(w) is None

    layer = _ste_linear(w, b)
    wb = layer.binary_weight().detach().numpy()
    np.testing.assert_array_equal(wb, binary_ref)
    np.testing.assert_array_equal(wb, np.where(w64 >= 0, 1.0, -1.0))
    assert np.all(wb[w64 == 0] == 1.0) and (w64 == 0).sum() == 3


def test_dorefa_calibration_is_the_derivative_with_max_held_constant() -> None:
    w = _weight(8, 5, seed=1).requires_grad_(True)
    b = Binarizer("dorefa")
    (autograd_c,) = torch.autograd.grad(b.latent(w).sum(), w)  # latent is elementwise: sum's grad = dx/dW
    w64 = w.detach().numpy().astype(np.float64)
    c_ref = (1 - np.tanh(w64) ** 2) / np.abs(np.tanh(w64)).max()
    np.testing.assert_allclose(b.calibration(w.detach()).numpy(), c_ref, rtol=1e-6)
    np.testing.assert_allclose(autograd_c.numpy(), c_ref, rtol=1e-6)


def test_dorefa_all_zero_weight_is_all_plus_one() -> None:
    layer = _ste_linear(torch.zeros(3, 4), Binarizer("dorefa"))
    wb = layer.binary_weight()
    assert torch.equal(wb.detach(), torch.ones(3, 4))
    assert torch.isfinite(Binarizer("dorefa").calibration(torch.zeros(3, 4))).all()


def test_ste_weight_gradient_is_g_times_calibration() -> None:
    """dL/dW = g c with g = dL/dŴ (FSG_SPEC §2), for a BinaryLinear with dorefa and STE."""
    w = _weight(6, 5, seed=2)
    layer = _ste_linear(w, Binarizer("dorefa"))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    layer(x).backward(upstream)

    wb = torch.where(w >= 0, 1.0, -1.0)
    assert torch.allclose(layer(x), F.linear(x, wb, layer.bias))
    g = upstream.T @ x  # (out, in): dL/dŴ of sum(upstream * (x Ŵᵀ + b))
    w64 = w.numpy().astype(np.float64)
    c = (1 - np.tanh(w64) ** 2) / np.abs(np.tanh(w64)).max()
    assert layer.weight.grad is not None
    np.testing.assert_allclose(layer.weight.grad.numpy(), g.numpy() * c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad.numpy(), upstream.sum(0).numpy(), rtol=1e-6)


def test_capture_records_g_and_tilde() -> None:
    w = _weight(6, 5, seed=2)
    layer = _ste_linear(w, Binarizer("dorefa"))
    layer.capture = True
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    layer(x).backward(upstream)
    assert layer.captured_grad is not None and layer.last_tilde is not None
    assert torch.allclose(layer.captured_grad, upstream.T @ x, atol=1e-6)
    assert torch.allclose(layer.last_tilde, Binarizer("dorefa").tilde(w))


# --- bwn --------------------------------------------------------------------------------------


def test_bwn_per_layer_scale_and_forward() -> None:
    w = _weight(4, 3, 3, 3, seed=5)
    b = Binarizer("bwn")
    a = b.scale(w)
    assert a is not None and a.shape == ()
    assert float(a) == pytest.approx(float(np.abs(w.numpy().astype(np.float64)).sum() / w.numel()), rel=1e-6)
    assert torch.equal(b.latent(w), w)
    assert torch.equal(b.calibration(w), torch.ones_like(w))

    conv = BinaryConv2d(3, 4, 3, padding=1, binarizer=b, estimator=get("ste")())
    with torch.no_grad():
        conv.weight.copy_(w)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(6))
    want = F.conv2d(x, a * torch.where(w >= 0, 1.0, -1.0), padding=1)
    assert torch.allclose(conv(x), want, atol=1e-6)


def test_bwn_per_channel_scale() -> None:
    w = _weight(4, 3, 3, 3, seed=7)
    a = Binarizer("bwn", per_channel=True).scale(w)
    assert a is not None and a.shape == (4, 1, 1, 1)
    w64 = np.abs(w.numpy().astype(np.float64))
    for o in range(4):
        assert float(a[o]) == pytest.approx(w64[o].sum() / 27, rel=1e-6)
    lin = Binarizer("bwn", per_channel=True).scale(_weight(5, 7, seed=8))
    assert lin is not None and lin.shape == (5, 1)


def test_bwn_scale_is_detached_so_weight_grad_is_scaled_upstream() -> None:
    w = _weight(6, 5, seed=9)
    layer = _ste_linear(w, Binarizer("bwn"))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(10))
    upstream = torch.randn(4, 6, generator=torch.Generator().manual_seed(11))
    layer(x).backward(upstream)
    a = w.abs().mean()
    assert layer.weight.grad is not None
    # Ŵ = a sign(W), a constant: dL/dW = a (dL/dŴ) with the STE and c = 1
    assert torch.allclose(layer.weight.grad, a * (upstream.T @ x), atol=1e-5)


# --- layers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dorefa", "bwn"])
def test_binary_conv_equals_conv2d_with_binarized_weight(kind: str) -> None:
    conv = BinaryConv2d(3, 5, 3, stride=2, padding=1, binarizer=Binarizer(kind), estimator=get("ste")())
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(12))
    w = conv.weight.detach()
    scale = w.abs().mean() if kind == "bwn" else 1.0
    want = F.conv2d(x, scale * torch.where(w >= 0, 1.0, -1.0), stride=2, padding=1)
    assert torch.allclose(conv(x), want, atol=1e-5)


def test_set_binary_false_uses_the_raw_weight() -> None:
    model = nn.Sequential(
        BinaryConv2d(3, 4, 3, binarizer=Binarizer("dorefa"), estimator=get("ste")()),
        nn.Flatten(),
        BinaryLinear(4 * 3 * 3, 2, binarizer=Binarizer("dorefa"), estimator=get("ste")()),
    )
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(13))
    conv, lin = model[0], model[2]

    def reference(binary: bool) -> torch.Tensor:
        wc, wl = conv.weight, lin.weight
        if binary:
            wc, wl = torch.where(wc >= 0, 1.0, -1.0), torch.where(wl >= 0, 1.0, -1.0)
        return F.linear(F.conv2d(x, wc).flatten(1), wl, lin.bias)

    set_binary(model, False)
    assert not conv.binarize_weights and not lin.binarize_weights
    assert conv.binary_weight() is conv.weight
    assert torch.allclose(model(x), reference(False), atol=1e-5)
    set_binary(model, True)
    assert conv.binarize_weights and lin.binarize_weights
    assert torch.allclose(model(x), reference(True), atol=1e-5)


@pytest.mark.parametrize("act", ["ste", "clipped_ste"])
def test_activation_binarization_binarizes_the_input(act: str) -> None:
    w = _weight(3, 6, seed=14)
    layer = _ste_linear(w, Binarizer("dorefa"), act_estimator=get(act)())
    assert layer.binarize_activations
    x = torch.tensor([[0.0, -0.5, 0.5, 2.0, -2.0, 0.9], [-0.0, 0.1, -0.1, 1.5, -1.0, 1.0]], requires_grad=True)
    upstream = torch.randn(2, 3, generator=torch.Generator().manual_seed(15))
    y = layer(x)
    wb = torch.where(w >= 0, 1.0, -1.0)
    xb = torch.where(x.detach() >= 0, 1.0, -1.0)
    assert torch.allclose(y, F.linear(xb, wb, layer.bias), atol=1e-6)
    y.backward(upstream)
    assert x.grad is not None
    window = torch.ones_like(x) if act == "ste" else (x.detach().abs() <= 1).float()
    assert torch.allclose(x.grad, (upstream @ wb) * window, atol=1e-6)

    set_binary(layer, False)
    assert not layer.binarize_activations
    assert torch.allclose(layer(x), F.linear(x, w, layer.bias), atol=1e-6)


# --- a whole model ----------------------------------------------------------------------------


def _resnet20(**factory_kwargs) -> nn.Module:
    factory = LayerFactory(binarizer=Binarizer("dorefa"), estimator=get("ste")(), **factory_kwargs)
    return build_model("resnet20", num_classes=10, in_channels=3, factory=factory)


def _resnet20_binary_names(first_last: bool = True) -> list[str]:
    names = ["conv1"] if first_last else []
    for stage in range(3):
        for block in range(3):
            names += [f"stages.{stage}.{block}.conv1", f"stages.{stage}.{block}.conv2"]
            if stage > 0 and block == 0:
                names.append(f"stages.{stage}.{block}.shortcut.0")
    return names + (["fc"] if first_last else [])


def test_binary_layers_of_resnet20() -> None:
    model = _resnet20()
    found = list(binary_layers(model))
    assert [name for name, _ in found] == _resnet20_binary_names()
    modules = dict(model.named_modules())
    for name, layer in found:
        assert modules[name] is layer and isinstance(layer, BinaryLayer)
    # exactly these: no other module of the model is binary
    assert sum(isinstance(m, BinaryLayer) for m in model.modules()) == len(found)


def test_keep_first_last_fp_leaves_stem_and_fc_plain() -> None:
    model = _resnet20(keep_first_last_fp=True)
    assert type(model.conv1) is nn.Conv2d
    assert type(model.fc) is nn.Linear
    assert [name for name, _ in binary_layers(model)] == _resnet20_binary_names(first_last=False)


def test_resnet20_binary_weight_count() -> None:
    """FSG_SPEC §7: 270,896 binary weights for 3 input channels and 10 classes."""
    stem = 16 * 3 * 9
    stage1 = 3 * 2 * (16 * 16 * 9)
    stage2 = (32 * 16 * 9 + 32 * 32 * 9 + 32 * 16) + 2 * 2 * (32 * 32 * 9)  # first block has a 1x1 shortcut
    stage3 = (64 * 32 * 9 + 64 * 64 * 9 + 64 * 32) + 2 * 2 * (64 * 64 * 9)
    fc = 64 * 10
    expected = stem + stage1 + stage2 + stage3 + fc
    assert expected == 270_896
    assert sum(layer.weight.numel() for _, layer in binary_layers(_resnet20())) == expected
    fp_edges = 16 * 3 * 9 + 64 * 10
    count = sum(layer.weight.numel() for _, layer in binary_layers(_resnet20(keep_first_last_fp=True)))
    assert count == expected - fp_edges


def test_resnet20_forward_matches_with_binarization_off_and_on() -> None:
    """A binary resnet20 runs end to end; switching binarization changes its output."""
    model = _resnet20().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        binary_out = model(x)
        set_binary(model, False)
        fp_out = model(x)
    assert binary_out.shape == fp_out.shape == (2, 10)
    assert not torch.allclose(binary_out, fp_out)

"""LRE: one learned token per binary layer, read by the slow net and trained by the look-ahead loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fsg_core.binary import Binarizer, BinaryConv2d, BinaryLinear, binary_layers
from fsg_core.estimators import get
from fsg_core.estimators.fsg import FSG
from fsg_core.estimators.fsg.embeddings import LayerEmbeddings


def _tiny_fsg(**params: object) -> tuple[FSG, nn.Module]:
    """Three binary layers (conv 1->4, conv 4->4, linear 4->3) around full-precision BN/ReLU/pooling."""
    est = get("fsg")(get("fsg").Params(compile=False, **params))
    assert isinstance(est, FSG)
    b = Binarizer("dorefa")
    model = nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1, binarizer=b, estimator=est),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        BinaryConv2d(4, 4, 3, padding=1, binarizer=b, estimator=est),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        BinaryLinear(4, 3, binarizer=b, estimator=est),
    )
    est.setup(list(binary_layers(model)))
    return est, model


def _step(est: FSG, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-2) -> bool:
    est.before_forward(lr)
    loss = F.cross_entropy(model(x), y)
    for p in model.parameters():
        p.grad = None
    loss.backward()
    return est.after_backward()


def test_one_token_per_layer() -> None:
    lre = LayerEmbeddings(7)
    tokens = lre()
    assert tokens.shape == (7, 1)
    assert tokens.requires_grad
    assert [p.shape for p in lre.parameters()] == [torch.Size([7, 1])]


def test_token_width_is_configurable() -> None:
    assert LayerEmbeddings(3, d_model=5)().shape == (3, 5)


def test_fsg_has_a_token_per_binary_layer() -> None:
    torch.manual_seed(0)
    est, model = _tiny_fsg()
    layers = list(binary_layers(model))
    assert len(layers) == 3
    assert est.lre().shape == (len(layers), 1)


def test_layer_index_maps_coordinates_to_layers() -> None:
    torch.manual_seed(0)
    est, model = _tiny_fsg()
    numels = [layer.weight.numel() for _, layer in binary_layers(model)]
    assert numels == [1 * 4 * 3 * 3, 4 * 4 * 3 * 3, 4 * 3]
    index = est.slow.layer_index
    assert index.shape == (sum(numels),)
    assert torch.bincount(index).tolist() == numels
    # contiguous blocks in layer order, the order of the flat history
    assert torch.equal(index, torch.repeat_interleave(torch.arange(3), torch.tensor(numels)))


def test_tokens_are_trained_by_the_lookahead_loss() -> None:
    torch.manual_seed(0)
    est, model = _tiny_fsg()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    before = est.lre.table.weight.detach().clone()
    assert _step(est, model, x, y) is False  # no history yet: no look-ahead, no meta step
    assert torch.equal(est.lre.table.weight, before)

    est.before_forward(1e-2)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grad = est.lre.table.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad != 0).all(), "every layer's token must receive a meta-gradient"
    assert est.after_backward() is True
    assert not torch.equal(est.lre.table.weight, before)
    assert (est.lre.table.weight != before).all(), "every token must move"

"""GradientHistory (HGS): a FIFO of the last K flat gradients, oldest first (FSG_SPEC §4 step 2)."""

from __future__ import annotations

import pytest
import torch

from fsg_core.estimators.fsg.history import GradientHistory


def _grad(i: int, size: int = 4) -> torch.Tensor:
    """A recognisable gradient: every value equals ``i``."""
    return torch.full((size,), float(i))


def test_starts_empty() -> None:
    hist = GradientHistory(3, 4)
    assert len(hist) == 0
    assert hist.ordered().shape == (0, 4)


def test_fifo_order_is_oldest_first() -> None:
    hist = GradientHistory(5, 4)
    for i in range(3):
        hist.push(_grad(i))
    assert len(hist) == 3
    assert torch.equal(hist.ordered(), torch.stack([_grad(0), _grad(1), _grad(2)]))


def test_length_is_capped_and_oldest_dropped() -> None:
    k = 3
    hist = GradientHistory(k, 4)
    for i in range(7):
        hist.push(_grad(i))
        assert len(hist) == min(i + 1, k)
    # the last k pushes survive, oldest first
    assert torch.equal(hist.ordered(), torch.stack([_grad(4), _grad(5), _grad(6)]))


def test_latest_is_last_push() -> None:
    hist = GradientHistory(2, 4)
    for i in range(4):
        hist.push(_grad(i))
        assert torch.equal(hist.latest(), _grad(i))


def test_latest_of_empty_history_raises() -> None:
    with pytest.raises(IndexError, match="empty"):
        GradientHistory(3, 4).latest()


@pytest.mark.parametrize("size", [3, 5])
def test_push_of_wrong_size_raises(size: int) -> None:
    hist = GradientHistory(3, 4)
    with pytest.raises(ValueError, match="4"):
        hist.push(torch.zeros(size))
    assert len(hist) == 0


def test_push_flattens_any_shape() -> None:
    hist = GradientHistory(2, 6)
    g = torch.arange(6.0).view(2, 3)
    hist.push(g)
    assert torch.equal(hist.latest(), g.reshape(-1))


def test_pushes_are_detached_copies() -> None:
    hist = GradientHistory(3, 4)
    g = torch.ones(4, requires_grad=True)
    pushed = g * 2.0  # in a graph
    hist.push(pushed)
    assert not hist.latest().requires_grad
    plain = torch.full((4,), 5.0)
    hist.push(plain)
    plain.add_(100.0)  # mutate the caller's tensor after the push
    pushed.detach().zero_()
    assert torch.equal(hist.ordered(), torch.stack([torch.full((4,), 2.0), torch.full((4,), 5.0)]))


def test_state_dict_round_trip() -> None:
    src = GradientHistory(3, 4)
    for i in range(4):
        src.push(_grad(i))
    dst = GradientHistory(3, 4)
    dst.load_state_dict(src.state_dict())
    assert len(dst) == len(src) == 3
    assert torch.equal(dst.ordered(), src.ordered())
    assert torch.equal(dst.latest(), _grad(3))
    # both continue identically
    src.push(_grad(9))
    dst.push(_grad(9))
    assert torch.equal(dst.ordered(), src.ordered())


def test_state_dict_round_trip_of_partial_history() -> None:
    src = GradientHistory(5, 4)
    src.push(_grad(1))
    src.push(_grad(2))
    dst = GradientHistory(5, 4)
    dst.load_state_dict(src.state_dict())
    assert len(dst) == 2
    assert torch.equal(dst.ordered(), torch.stack([_grad(1), _grad(2)]))

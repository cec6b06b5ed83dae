"""Coordinate-wise hypernetworks shared by MetaQuant and FSG's fast net.

Each weight coordinate is an independent sample: the networks map a scalar per coordinate to a
scalar per coordinate.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["CoordinateLSTM", "CoordinateMLP"]

Activation = Literal["none", "relu", "tanh"]


class CoordinateMLP(nn.Module):
    """A bias-free MLP 1 -> hidden -> hidden -> 1 applied to every coordinate.

    Without activation it is exactly the scalar ``k = W3 W2 W1``: the forward computes ``k * x``
    from the three matrices (same value, same gradients to them) instead of a 100-wide MLP over
    every weight (FSG_SPEC §7). ``positive_init`` rescales ``W3`` so that ``k = 1`` at the start,
    making the first look-ahead steps descend like STE rather than in a random direction.
    """

    def __init__(self, hidden: int = 100, activation: Activation = "none", positive_init: bool = True) -> None:
        super().__init__()
        self.activation = activation
        self.fc1 = nn.Linear(1, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.fc3 = nn.Linear(hidden, 1, bias=False)
        if positive_init and activation == "none":
            with torch.no_grad():
                self.fc3.weight.div_(self.scale())

    def scale(self) -> Tensor:
        """``k = W3 W2 W1`` (meaningful without activation)."""
        return (self.fc3.weight @ self.fc2.weight @ self.fc1.weight).reshape(())

    def _act(self, x: Tensor) -> Tensor:
        if self.activation == "relu":
            return torch.relu(x)
        if self.activation == "tanh":
            return torch.tanh(x)
        return x

    def forward(self, x: Tensor) -> Tensor:  # any shape -> same shape
        if self.activation == "none":
            return self.scale() * x
        h = x.reshape(-1, 1)
        h = self._act(self.fc1(h))
        h = self._act(self.fc2(h))
        return self.fc3(h).view_as(x)


class CoordinateLSTM(nn.Module):
    """MetaQuant's LSTMFC: an LSTM cell per coordinate whose state persists across iterations.

    ``forward(x, state) -> (out, new_state)``: ``x`` is (N,), ``state`` a pair of (N, hidden) or None.
    """

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(1, hidden)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.cell(x.reshape(-1, 1), state)  # (N, hidden) each
        return self.fc(h).view_as(x), (h, c)

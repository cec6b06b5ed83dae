"""HGS, the Historical Gradient Storage: a FIFO of the last K gradients of every binary weight."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientHistory"]


class GradientHistory:
    """The last ``length`` gradients (detached), flat over all binary layers.

    A ring buffer: ``push`` writes one row in place (no copy of the other K-1 rows), ``order()``
    names the rows oldest first, the order in which the slow net reads them, and ``ordered()``
    gathers them (a copy, for the PyTorch path and the tests).
    """

    def __init__(self, length: int, size: int, device: torch.device | str = "cpu") -> None:
        self.length = length
        self.buffer = torch.zeros(length, size, device=device)  # (K, N), rows in ring order
        self.head = 0  # the row the next push writes: the oldest row once full
        self.count = 0

    def push(self, grad: Tensor) -> None:
        """Append ``grad`` (N,), dropping the oldest when full."""
        g = grad.detach().reshape(-1)
        if g.numel() != self.buffer.shape[1]:
            raise ValueError(f"gradient has {g.numel()} values, history holds {self.buffer.shape[1]}")
        self.buffer[self.head].copy_(g)
        self.head = (self.head + 1) % self.length
        self.count = min(self.count + 1, self.length)

    def order(self) -> list[int]:
        """The rows of ``buffer`` holding gradients, oldest first."""
        return [(self.head - self.count + i) % self.length for i in range(self.count)]

    def ordered(self) -> Tensor:
        """The stored gradients, (count, N), oldest first (a copy)."""
        return self.buffer[self.order()]

    def latest(self) -> Tensor:
        if self.count == 0:
            raise IndexError("the gradient history is empty")
        return self.buffer[(self.head - 1) % self.length]

    def __len__(self) -> int:
        return self.count

    def state_dict(self) -> dict[str, Any]:
        # Saved oldest first with the newest in the last row (zeros above the stored rows while not
        # full): the layout checkpoints have always had, whatever the ring's position.
        return {"buffer": self.buffer.roll(-self.head, 0), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = state["buffer"].to(self.buffer.device).clone()
        self.count = int(state["count"])
        self.head = 0  # newest in the last row: the next push goes to row 0

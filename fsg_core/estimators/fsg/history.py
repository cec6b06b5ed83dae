"""HGS, the Historical Gradient Storage: a FIFO of the last K gradients of every binary weight."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientHistory"]


class GradientHistory:
    """The last ``length`` gradients (detached), flat over all binary layers.

    ``ordered()`` returns them oldest first, the order in which the slow net reads them.
    """

    def __init__(self, length: int, size: int, device: torch.device | str = "cpu") -> None:
        self.length = length
        self.buffer = torch.zeros(length, size, device=device)  # (K, N), newest in the last row
        self.count = 0

    def push(self, grad: Tensor) -> None:
        """Append ``grad`` (N,), dropping the oldest when full."""
        g = grad.detach().reshape(-1).to(self.buffer.dtype)
        if g.numel() != self.buffer.shape[1]:
            raise ValueError(f"gradient has {g.numel()} values, history holds {self.buffer.shape[1]}")
        self.buffer = torch.cat([self.buffer[1:], g[None]])
        self.count = min(self.count + 1, self.length)

    def ordered(self) -> Tensor:
        """The stored gradients, (count, N), oldest first."""
        return self.buffer[self.length - self.count :]

    def latest(self) -> Tensor:
        if self.count == 0:
            raise IndexError("the gradient history is empty")
        return self.buffer[-1]

    def __len__(self) -> int:
        return self.count

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = state["buffer"].to(self.buffer.device)
        self.count = int(state["count"])

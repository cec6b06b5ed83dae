"""Data-parallel helpers: rank and world size, and a coalesced mean all-reduce.

fsg does its own gradient averaging instead of wrapping the model in DDP: learned estimators write
``W.grad`` after backward and must average ``g`` and meta-gradients in a fixed order, and one
flattened all-reduce per step is both simple and deterministic (every rank gets the same bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean", "broadcast_tensors", "is_distributed", "rank", "world_size"]


def is_distributed(group: Any = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _by_dtype(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _scatter_back(flat: Tensor, items: list[Tensor]) -> None:
    offset = 0
    for t in items:
        t.data.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_mean(tensors: Sequence[Tensor | None], group: Any = None) -> None:
    """Replace each tensor in place by its mean over the process group (Nones are skipped).

    One flattened buffer per dtype and device, so a step costs one collective whatever the
    number of layers.
    """
    if not is_distributed(group):
        return
    n = world_size(group)
    for items in _by_dtype([t for t in tensors if t is not None]):
        flat = torch.cat([t.reshape(-1) for t in items])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        _scatter_back(flat.div_(n), items)


def broadcast_tensors(tensors: Sequence[Tensor], src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s values of every tensor to all ranks, exactly (one buffer per dtype)."""
    if not is_distributed(group):
        return
    for items in _by_dtype(list(tensors)):
        flat = torch.cat([t.detach().reshape(-1) for t in items])
        dist.broadcast(flat, src=src, group=group)
        if rank() != src:
            _scatter_back(flat, items)

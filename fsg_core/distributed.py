"""Data-parallel helpers: the backend for a device, joining a group without Ray, rank and world
size, and a coalesced mean all-reduce.

fsg does its own gradient averaging instead of wrapping the model in DDP: learned estimators write
``W.grad`` after backward and must average ``g`` and meta-gradients in a fixed order, and one
flattened all-reduce per step is both simple and deterministic (every rank gets the same bytes).
Under Ray, ``TorchTrainer`` creates the group (NCCL with ``use_gpu``, gloo without) and assigns
each worker its GPU; ``init_process_group`` does the same for a plain launcher such as torchrun.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_mean",
    "backend_for",
    "broadcast_tensors",
    "init_process_group",
    "is_distributed",
    "local_device",
    "rank",
    "world_size",
]


def backend_for(device: torch.device | str) -> str:
    """The collective backend for tensors on ``device``: ``nccl`` on CUDA, ``gloo`` otherwise.

    Every collective here runs on the tensors' own device (gradients, metric sums, BatchNorm
    buffers), so the backend follows the training device; NCCL cannot reduce CPU tensors and gloo
    would stage every CUDA gradient through host memory.
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(local_rank: int, *, cuda: bool | None = None) -> torch.device:
    """This process's training device: GPU ``local_rank`` when CUDA is available (one GPU per
    worker, as Ray's ``use_gpu``), else the CPU. ``cuda`` overrides the availability check."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def init_process_group(device: torch.device | None = None, *, timeout_s: float = 1800.0) -> torch.device:
    """Join the default process group that a launcher describes in the environment, without Ray.

    Reads torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``), binds this process to its GPU on CUDA (so ``fit``'s ``device="auto"`` picks
    it) and initialises NCCL there, gloo on CPU. Pass the returned device to ``fit(device=...)``.

    Args:
        device: the training device; None takes ``local_device(LOCAL_RANK)``.
        timeout_s: how long a collective waits for the other ranks before failing.

    Returns:
        This rank's device.

    Raises:
        ValueError: a variable the launcher must set is missing.
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"init_process_group needs {', '.join(missing)} in the environment; start it with torchrun")
    device = device if device is not None else local_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return device


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

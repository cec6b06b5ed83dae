"""Schedules as pure functions of ``progress = e/E`` in [0, 1] (or of the epoch for learning rates).

Keeping them free of state makes resume exact and lets tests check them at any point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ede_t", "fda_terms", "learning_rate", "reste_o"]


def learning_rate(
    base_lr: float,
    epoch: float,
    *,
    total_epochs: int,
    kind: str = "constant",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
) -> float:
    """Learning rate at a (fractional) epoch.

    Args:
        base_lr: the peak learning rate.
        epoch: epochs done so far, fractional within an epoch (warm-up is per step).
        total_epochs: length of the run, for cosine.
        kind: ``constant``, ``step`` (x ``gamma`` at each milestone) or ``cosine`` (to ``min_lr``).
        milestones: epochs at which ``step`` multiplies by ``gamma``.
        gamma: the step factor.
        warmup_epochs: linear warm-up from ``base_lr / (warmup_epochs * steps)``-ish to ``base_lr``.
        min_lr: the floor of the cosine.
    """
    if kind not in ("constant", "step", "cosine"):
        raise ValueError(f"unknown schedule kind {kind!r}; choose constant, step or cosine")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        # Linear warm-up that never starts at exactly 0 (a zero lr wastes the first step).
        return base_lr * max(epoch, 1e-3 * warmup_epochs) / warmup_epochs
    if kind == "constant":
        return base_lr
    if kind == "step":
        drops = sum(1 for m in milestones if epoch >= m)
        return base_lr * gamma**drops
    span = max(total_epochs - warmup_epochs, 1e-9)
    t = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def ede_t(progress: float, t_min: float = 0.1, t_max: float = 10.0) -> float:
    """IR-Net's EDE temperature: log-linear from ``t_min`` to ``t_max`` over training."""
    return 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * progress)


def reste_o(progress: float, o_end: float = 3.0) -> float:
    """ReSTE's power ``o``: 1 at the start, ``o_end`` at the end, following ``1 - cos(pi/2 e/E)``."""
    return 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi / 2 * progress))


def fda_terms(progress: float, n_start: int = 9, n_growth: int = 9) -> int:
    """FDA's highest Fourier index ``n = n_start + floor(n_growth e/E)``."""
    return n_start + math.floor(n_growth * progress)

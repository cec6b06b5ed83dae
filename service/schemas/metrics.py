"""Per-epoch metrics as the API shows them: one flat row per reported epoch."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MetricRead", "metric_row"]


class MetricRead(BaseModel):
    """One reported epoch: ``phase``, ``epoch``, ``trial``, ``attempt``, then every metric flat
    (``train_loss``, ``val_acc``, ``lr``, ...), the same keys as the CSV columns and Tune's."""

    model_config = ConfigDict(extra="allow")

    phase: str = Field(description="'pretrain' (full precision) or 'binary'")
    epoch: int
    trial: str = Field(description="the search trial; '' for a training job")
    attempt: int = Field(description="the attempt that reported it (a resumed attempt replaces earlier rows)")


# Keys of the row itself; a metric with one of these names cannot shadow them.
_FIXED = ("phase", "epoch", "trial", "attempt")


def metric_row(metric: Any) -> dict[str, Any]:
    """A ``Metric`` row flattened to ``{"phase", "epoch", "trial", "attempt", **values}``."""
    values = {k: v for k, v in (metric.values or {}).items() if k not in _FIXED}
    return {
        "phase": metric.phase,
        "epoch": metric.epoch,
        "trial": metric.trial_key,
        "attempt": metric.attempt,
        **values,
    }

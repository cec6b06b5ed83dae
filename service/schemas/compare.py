"""``GET /v1/compare`` as the API shows it: a few jobs side by side, figures and curves.

The web dashboard and ``fsg compare`` both read this shape; its field names are fixed.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

__all__ = ["ComparedJobRead", "ComparisonRead", "CurvesRead", "Finite"]


def _finite(value: Any) -> float | None:
    # A metric is whatever a worker reported: anything but a finite number is "unknown" (null).
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


Finite = Annotated[float | None, BeforeValidator(_finite)]


class CurvesRead(BaseModel):
    """The job's stored per-epoch metrics, one list entry per epoch: pre-training epochs first, then the
    binarized ones. ``epoch`` counts within its phase; a missing or non-finite value is null."""

    phase: list[str] = Field(description="'pretrain' (full precision) or 'binary', per epoch")
    epoch: list[int] = Field(description="the epoch within its phase, from 1")
    train_loss: list[Finite]
    train_acc: list[Finite]
    val_acc: list[Finite]
    test_acc: list[Finite]


class ComparedJobRead(BaseModel):
    """One job of a comparison. The figures are ``fsg_core.train.summarize_history`` of the binarized
    epochs of ``curves`` (the numbers ``fsg train`` reports); null where unknown or not finite."""

    id: str
    name: str
    state: str
    estimator: str | None = Field(description="the spec's estimator name")
    arch: str | None = Field(description="the spec's model architecture")
    optimizer: str | None = Field(description="the spec's optimizer name")
    epochs_done: int = Field(description="epochs in the curves: pre-training and binarized")
    best_val_acc: Finite
    best_val_epoch: int | None = Field(description="the binarized epoch (from 1) of best_val_acc")
    test_acc_at_best_val: Finite
    last_k_test_acc: Finite = Field(
        description="mean test accuracy of the last k binarized epochs (k: at most a third of them, at most 10)"
    )
    last_k: int | None = Field(None, description="k of last_k_test_acc")
    final_train_loss: Finite
    mean_step_time_s: Finite
    packed_bytes: int | None = Field(description="size of the latest packed 1-bit model; null before one")
    curves: CurvesRead = Field(description="a search's are its best trial's; empty until it has one")

    @classmethod
    def from_comparison(cls, comparison: Any) -> ComparedJobRead:
        """From a ``service.db.comparison.JobComparison``."""
        job, rows, figures = comparison.job, comparison.rows, comparison.figures
        spec = job.spec or {}

        def name_of(section: str, key: str) -> str | None:
            value = spec.get(section)
            return str(value[key]) if isinstance(value, dict) and value.get(key) is not None else None

        curves = CurvesRead(
            phase=[str(r["phase"]) for r in rows],
            epoch=[int(r["epoch"]) for r in rows],
            train_loss=[r.get("train_loss") for r in rows],
            train_acc=[r.get("train_acc") for r in rows],
            val_acc=[r.get("val_acc") for r in rows],
            test_acc=[r.get("test_acc") for r in rows],
        )
        best_epoch = figures.get("best_val_epoch")
        return cls(
            id=job.id,
            name=job.name,
            state=job.state,
            estimator=name_of("estimator", "name"),
            arch=name_of("model", "arch"),
            optimizer=name_of("optimizer", "name"),
            epochs_done=len(rows),
            best_val_acc=figures.get("best_val_acc"),
            best_val_epoch=best_epoch if isinstance(best_epoch, int) else None,
            test_acc_at_best_val=figures.get("test_acc_at_best_val"),
            last_k_test_acc=figures.get("last_k_test_acc"),
            last_k=figures.get("last_k"),
            final_train_loss=figures.get("final_train_loss"),
            mean_step_time_s=figures.get("mean_step_time_s"),
            packed_bytes=comparison.packed_bytes,
            curves=curves,
        )


class ComparisonRead(BaseModel):
    """The compared jobs, in the order the query named them."""

    jobs: list[ComparedJobRead]

"""A study's table as the API shows it (``GET /v1/jobs/{id}/study``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.schemas.base import ReadModel

__all__ = ["IntervalRead", "PairedRead", "StudyRead", "StudyTrialRead", "StudyVariantRead"]


class IntervalRead(ReadModel):
    """A figure over the seeds: mean, sample standard deviation and the t interval of the mean."""

    n: int = Field(description="seeds with a finished trial")
    mean: float | None
    sd: float | None
    low: float | None = Field(description="lower end of the interval of the mean (None below 2 seeds)")
    high: float | None


class PairedRead(IntervalRead):
    """The variant minus the baseline, seed by seed (the interval is of the mean difference)."""

    wins: int = Field(description="seeds where the variant's figure is higher")
    losses: int
    ties: int
    t_p: float | None = Field(description="two-sided paired t-test p-value (None: fewer than 2 pairs, or all equal)")
    sign_p: float | None = Field(description="two-sided sign test p-value over the non-zero differences")


class StudyVariantRead(ReadModel):
    name: str
    trials_done: int
    figures: dict[str, IntervalRead]
    vs_baseline: dict[str, PairedRead] | None = Field(None, description="absent for the baseline itself")


class StudyTrialRead(ReadModel):
    key: str = Field(description="'<variant>/seed<s>', or 'pretrain/seed<s>' for a seed's shared pre-training")
    state: str
    config: dict[str, Any]
    figures: dict[str, Any] = Field(description="best / last-k figures of the trial's binarized epochs")


class StudyRead(ReadModel):
    baseline: str
    seeds: int
    confidence: float = Field(description="of every interval (0.95)")
    higher_is_better: dict[str, bool] = Field(description="per figure: whether a higher value is better")
    variants: list[StudyVariantRead]
    trials: list[StudyTrialRead]

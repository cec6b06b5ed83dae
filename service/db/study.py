"""A study's figures, from its recorded trials: per variant the mean and 95% t interval of each figure
over the seeds, and per variant against the baseline the paired differences (same seed, same split,
same pre-training) with a paired t-test and a sign test.

One function (``study_report``) serves the study attempt's summary, ``GET /v1/jobs/{id}/study`` and the
CLI, so the figures are computed in one place. The statistics are scipy's distributions applied to
the textbook formulas; tests hold them against scipy's own tests.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats as sps
from sqlalchemy.orm import Session

from service.db import reads
from service.db.comparison import summarize_rows
from service.db.models import Job
from service.schemas.jobs import JobSpec, StudySpec

__all__ = ["FIGURES", "interval", "paired", "study_report", "study_table"]

# (figure, higher is better): what a study compares.
FIGURES: dict[str, bool] = {
    "best_val_acc": True,
    "test_acc_at_best_val": True,
    "final_test_acc": True,
    "final_train_loss": False,
    "mean_step_time_s": False,
}
CONFIDENCE = 0.95


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def interval(values: list[Any], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation and the two-sided t interval of the mean (None below 2 values)."""
    xs = _finite(values)
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": statistics.fmean(xs) if xs else None, "sd": None, "low": None, "high": None}
    if n >= 2:
        sd = statistics.stdev(xs)
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half)
    return out


def paired(values: list[Any], baseline: list[Any], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``values - baseline`` pair by pair (pairs with a missing side are dropped): the interval of the mean
    difference, the two-sided paired t-test p-value (None when every difference is equal), and the
    two-sided sign test over the non-zero differences (wins: positive differences)."""
    # Rounded: accuracies are multiples of 1/n_val, so equal differences are common, and float noise
    # (1e-17) must not turn them into a "significant" t statistic.
    diffs = [
        round(float(a) - float(b), 12)
        for a, b in zip(values, baseline, strict=True)
        if _finite([a]) and _finite([b])  # both present and finite
    ]
    out = interval(diffs, confidence)
    n = len(diffs)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    out.update(wins=wins, losses=losses, ties=n - wins - losses, t_p=None, sign_p=None)
    if n >= 2 and out["sd"]:
        t = out["mean"] / (out["sd"] / math.sqrt(n))
        out["t_p"] = float(2 * sps.t.sf(abs(t), n - 1))
    if wins + losses:
        k, m = min(wins, losses), wins + losses
        out["sign_p"] = float(min(1.0, 2 * sps.binom.cdf(k, m, 0.5)))
    return out


def study_table(study: StudySpec, figures_of: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """The study's table from each finished trial's figures (``figures_of[(variant, seed)]``)."""
    seeds = list(range(study.seeds))
    baseline = study.baseline_name

    def series(variant: str, figure: str) -> list[Any]:
        return [figures_of.get((variant, seed), {}).get(figure) for seed in seeds]

    rows = []
    for variant in study.variants:
        row: dict[str, Any] = {
            "name": variant.name,
            "trials_done": sum((variant.name, s) in figures_of for s in seeds),
            "figures": {f: interval(series(variant.name, f)) for f in FIGURES},
        }
        if variant.name != baseline:
            row["vs_baseline"] = {f: paired(series(variant.name, f), series(baseline, f)) for f in FIGURES}
        rows.append(row)
    return {
        "baseline": baseline,
        "seeds": study.seeds,
        "confidence": CONFIDENCE,
        "higher_is_better": FIGURES,
        "variants": rows,
    }


def study_report(session: Session, job: Job) -> dict[str, Any]:
    """The study table of ``job`` (a ``kind: study`` job) from its trials finished so far, with each
    trial's state and figures."""
    spec = JobSpec.model_validate(job.spec)
    assert spec.study is not None
    figures_of: dict[tuple[str, int], dict[str, Any]] = {}
    trials = []
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for metric in reads.list_metrics(session, job.id):  # one query for every trial: the study page polls this
        rows_of.setdefault(metric.trial_key, []).append(reads.metric_row(metric))
    for trial in reads.list_trials(session, job.id):
        config = trial.config or {}
        figures = summarize_rows(rows_of.get(trial.trial_key, []))
        trials.append({"key": trial.trial_key, "state": trial.state, "config": config, "figures": figures})
        if trial.state == "succeeded" and "variant" in config:
            figures_of[(str(config["variant"]), int(config["seed"]))] = figures
    return {**study_table(spec.study, figures_of), "trials": trials}

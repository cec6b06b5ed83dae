"""A study's statistics against scipy's own tests, and its table from trial figures."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from service.db.study import interval, paired, study_table
from service.schemas.jobs import StudySpec

A = [0.912, 0.934, 0.901, 0.945, 0.921]
B = [0.903, 0.925, 0.910, 0.931, 0.902]


def test_interval_is_scipys_t_interval() -> None:
    got = interval(A)
    low, high = sps.t.interval(0.95, len(A) - 1, loc=sum(A) / len(A), scale=sps.sem(A))
    assert got["n"] == 5 and got["mean"] == pytest.approx(sum(A) / 5)
    assert (got["low"], got["high"]) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert got["sd"] == pytest.approx(float(sps.tstd(A)))


def test_one_value_has_a_mean_and_no_interval() -> None:
    assert interval([0.5, None, float("nan")]) == {"n": 1, "mean": 0.5, "sd": None, "low": None, "high": None}


def test_paired_test_is_scipys_ttest_rel_and_the_sign_test_its_binomtest() -> None:
    got = paired(A, B)
    t = sps.ttest_rel(A, B)
    assert got["t_p"] == pytest.approx(t.pvalue, rel=1e-10)
    diffs = [a - b for a, b in zip(A, B, strict=True)]
    assert got["mean"] == pytest.approx(sum(diffs) / 5)
    wins = sum(d > 0 for d in diffs)
    assert (got["wins"], got["losses"], got["ties"]) == (wins, 5 - wins, 0)
    assert got["sign_p"] == pytest.approx(sps.binomtest(wins, 5, 0.5).pvalue, rel=1e-12)
    low, high = sps.t.interval(0.95, 4, loc=sum(diffs) / 5, scale=sps.sem(diffs))
    assert (got["low"], got["high"]) == (pytest.approx(low), pytest.approx(high))


def test_paired_drops_incomplete_pairs_and_ties_carry_no_sign() -> None:
    got = paired([0.9, 0.8, None, 0.7], [0.9, 0.7, 0.6, 0.6])
    assert got["n"] == 3 and (got["wins"], got["losses"], got["ties"]) == (2, 0, 1)
    assert got["sign_p"] == pytest.approx(sps.binomtest(2, 2, 0.5).pvalue)
    same = paired([0.5, 0.6], [0.4, 0.5])  # every difference equal (up to float noise): no t-test
    assert same["t_p"] is None and same["sd"] == 0 and same["mean"] == pytest.approx(0.1)
    accuracies = paired([130 / 144, 127 / 144], [132 / 144, 129 / 144])
    assert accuracies["t_p"] is None and accuracies["losses"] == 2


def test_the_table_pairs_each_variant_with_the_baseline_seed_by_seed() -> None:
    study = StudySpec.model_validate({"variants": [{"name": "ste"}, {"name": "fsg"}], "seeds": 5, "baseline": "ste"})
    figures = {("ste", s): {"best_val_acc": b, "final_train_loss": 1 - b} for s, b in enumerate(B)}
    figures |= {("fsg", s): {"best_val_acc": a, "final_train_loss": 1 - a} for s, a in enumerate(A) if s != 4}
    table = study_table(study, figures)
    ste, fsg = table["variants"]
    assert table["baseline"] == "ste" and "vs_baseline" not in ste
    assert (ste["trials_done"], fsg["trials_done"]) == (5, 4)
    assert fsg["figures"]["best_val_acc"]["mean"] == pytest.approx(sum(A[:4]) / 4)
    vs = fsg["vs_baseline"]["best_val_acc"]
    assert vs["n"] == 4 and vs["t_p"] == pytest.approx(sps.ttest_rel(A[:4], B[:4]).pvalue)
    loss = fsg["vs_baseline"]["final_train_loss"]
    assert loss["mean"] == pytest.approx(-vs["mean"]) and table["higher_is_better"]["final_train_loss"] is False
    assert math.isclose(fsg["figures"]["final_test_acc"]["n"], 0)

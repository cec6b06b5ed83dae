"""bench.ablation: the study specs it submits, and the paired questions it answers from a study's trials."""

from __future__ import annotations

import pytest
from scipy import stats as sps

from bench.ablation import PAIRS, pairs, study_spec
from service.schemas.jobs import JobSpec


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_quick_spec_is_a_small_valid_study(optimizer: str) -> None:
    spec = JobSpec.model_validate(study_spec(optimizer, seeds=None, epochs=None, quick=True))
    assert spec.study is not None and spec.study.seeds == 2 and spec.epochs == 3 and spec.max_steps_per_epoch == 4
    assert spec.optimizer.name == optimizer and all(0 < m < 3 for m in spec.schedule.milestones)
    assert {a for a, _, _ in PAIRS} | {b for _, b, _ in PAIRS} <= {v.name for v in spec.study.variants}


def test_pairs_compare_two_variants_seed_by_seed() -> None:
    fsg, ste = [0.95, 0.97, 0.96], [0.94, 0.95, 0.97]
    trials = [
        {"config": {"variant": v, "seed": s}, "state": "succeeded", "figures": {"best_val_acc": x}}
        for v, values in (("fsg", fsg), ("ste", ste))
        for s, x in enumerate(values)
    ]
    trials.append({"config": {"variant": "fsg_no_slow", "seed": 0}, "state": "failed", "figures": {}})
    (first, *_) = pairs({"seeds": 3, "trials": trials})
    assert (first["a"], first["b"]) == ("fsg", "ste")
    got = first["best_val_acc"]
    assert got["n"] == 3 and got["t_p"] == pytest.approx(sps.ttest_rel(fsg, ste).pvalue)
    assert (got["wins"], got["losses"]) == (2, 1)


def test_variants_keep_the_named_ones_and_the_baseline() -> None:
    spec = study_spec("adam", seeds=None, epochs=None, quick=True, variants=["metaquant_multifc"])
    assert [v["name"] for v in spec["study"]["variants"]] == ["ste", "metaquant_multifc"]
    with pytest.raises(SystemExit, match="nope"):
        study_spec("adam", seeds=None, epochs=None, quick=True, variants=["nope"])


def test_pairs_skip_questions_about_variants_the_study_did_not_run() -> None:
    trials = [
        {"config": {"variant": v, "seed": s}, "state": "succeeded", "figures": {"best_val_acc": 0.9 + s / 100}}
        for v in ("metaquant_multifc", "metaquant_multifc_proposal", "ste")
        for s in range(2)
    ]
    got = [(row["a"], row["b"]) for row in pairs({"seeds": 2, "trials": trials})]
    assert got == [("metaquant_multifc", "metaquant_multifc_proposal")]


def test_the_executor_reaches_the_study_and_the_default_is_the_examples() -> None:
    default = JobSpec.model_validate(study_spec("adam", seeds=None, epochs=None, quick=True))
    in_trials = JobSpec.model_validate(study_spec("adam", seeds=None, epochs=None, quick=True, executor="ray_task"))
    assert (default.resources.executor, in_trials.resources.executor) == ("ray_train", "ray_task")

"""``kind: study`` specs: validation naming the variant, and the per-seed pre-training its variants share
(same data, same seed: no validation image of the seed is ever trained on by its starting point)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fsg_core.data import split_indices
from service.schemas.jobs import JobSpec, pretraining_spec, study_trial_spec


def study(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "study",
        "data": {"dataset": "digits"},
        "epochs": 3,
        "init": {"pretrain_epochs": 2},
        "study": {
            "variants": [
                {"name": "ste", "estimator": {"name": "ste"}},
                {"name": "fsg-a0", "estimator": {"name": "fsg", "alpha": 0.0}, "overrides": {"optimizer.lr": 0.01}},
            ],
            "seeds": 3,
        },
    }
    spec.update(overrides)
    return spec


def test_a_study_validates_and_names_its_baseline() -> None:
    spec = JobSpec.model_validate(study())
    assert spec.study is not None and spec.study.baseline_name == "ste"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"baseline": "nope"}, "baseline 'nope' is not a variant"),
        ({"variants": [{"name": "a"}, {"name": "b", "overrides": {"data.dataset": "cifar10"}}]}, "vary training only"),
        ({"variants": [{"name": "a"}, {"name": "b", "overrides": {"seed": 3}}]}, "vary training only"),
        ({"variants": [{"name": "a"}, {"name": "b", "estimator": {"name": "fsg", "alpha": 7}}]}, "variant 'b'"),
        ({"variants": [{"name": "a"}]}, "at least 2"),
    ],
)
def test_bad_studies_are_refused_naming_what_is_wrong(change: dict[str, Any], message: str) -> None:
    spec = study()
    spec["study"] = {**spec["study"], **change}
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate(spec)


def test_study_needs_its_section_and_may_run_its_trials_in_tune_trials() -> None:
    with pytest.raises(ValidationError, match="needs a 'study' section"):
        JobSpec.model_validate(study(study=None))
    in_trials = JobSpec.model_validate(study(resources={"executor": "ray_task"}))
    assert not in_trials.attempt_holds_resources and in_trials.cpus == 2.0  # two trials at once, a CPU each
    with pytest.raises(ValidationError, match="num_workers"):
        JobSpec.model_validate(study(resources={"executor": "ray_task", "num_workers": 2}))


@pytest.mark.parametrize("seed", range(3))
def test_each_seeds_pretraining_shares_the_split_of_its_trials_and_never_their_validation_set(seed: int) -> None:
    spec = JobSpec.model_validate(study())
    assert spec.study is not None
    base = spec.train_spec()
    fp = pretraining_spec(base, seed)
    assert fp is not None and fp.binarize.weights is False and fp.epochs == 2 and fp.seed == seed
    for variant in spec.study.variants:
        trial = study_trial_spec(base, variant, seed, "/tmp/pretrained.pt")
        assert (trial.seed, trial.init.pretrain_epochs, trial.init.checkpoint) == (seed, 0, "/tmp/pretrained.pt")
        assert trial.data == fp.data
        trained, validated = split_indices(fp.data, fp.seed).train, split_indices(trial.data, trial.seed).val
        assert not set(trained.tolist()) & set(validated.tolist())
    fsg = study_trial_spec(base, spec.study.variants[1], seed, None)
    assert fsg.estimator.name == "fsg" and fsg.optimizer.lr == 0.01 and fsg.init.pretrain_epochs == 2


def test_without_pretraining_there_is_nothing_to_share() -> None:
    spec = JobSpec.model_validate(study(init={"pretrain_epochs": 0}))
    assert pretraining_spec(spec.train_spec(), 0) is None

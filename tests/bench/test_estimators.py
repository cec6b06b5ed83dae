"""bench.estimators: each seed's full-precision pre-training never trains on that seed's validation images."""

from __future__ import annotations

import pytest

from bench.estimators import OPTIMIZERS, digits_spec, pretrain_spec
from fsg_core.data import split_indices
from fsg_core.spec import TrainSpec


def _indices(spec: dict) -> object:
    parsed = TrainSpec.model_validate(spec)
    return split_indices(parsed.data, parsed.seed)


def _overlap(a: object, b: object) -> int:
    return len(set(a.tolist()) & set(b.tolist()))  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(5))
def test_each_seeds_validation_set_is_outside_its_pretrainings_training_set(seed: int) -> None:
    run = _indices(digits_spec({"name": "ste"}, OPTIMIZERS["adam"], seed, 20, "/tmp/init.pt"))
    pre = _indices(pretrain_spec(15, seed))
    assert len(run.val) > 100 and len(pre.train) > 1000
    assert _overlap(pre.train, run.val) == 0
    assert _overlap(pre.train, run.test) == 0 and _overlap(run.train, run.test) == 0


def test_the_old_shared_pretraining_leaked_other_seeds_validation_images() -> None:
    """What the check above guards against: seed 0's pre-training holds most of seed 1's validation set."""
    shared = _indices(pretrain_spec(15, 0))
    seed1 = _indices(digits_spec({"name": "ste"}, OPTIMIZERS["adam"], 1, 20, "/tmp/init.pt"))
    assert _overlap(shared.train, seed1.val) > len(seed1.val) // 2


def test_the_forward_reaches_the_binarized_runs() -> None:
    from fsg_core.spec import TrainSpec

    spec = TrainSpec.model_validate(digits_spec({"name": "clipped_ste"}, OPTIMIZERS["sgd"], 0, 6, "/tmp/i.pt", "bwn"))
    assert spec.binarize.forward == "bwn" and spec.binarize.weights
    assert (
        TrainSpec.model_validate(digits_spec({"name": "ste"}, OPTIMIZERS["sgd"], 0, 6, "/tmp/i.pt")).binarize.forward
        == "dorefa"
    )

"""The search space handed to Ray Tune comes from the job spec, path by path."""

from __future__ import annotations

from ray.tune.search.sample import Categorical, Float, Integer

from service.schemas.jobs import JobSpec
from workers.tune_driver import param_space


def test_param_space_maps_every_dimension() -> None:
    spec = JobSpec.model_validate(
        {
            "kind": "search",
            "search": {
                "space": {
                    "estimator.alpha": {"type": "uniform", "low": 0.5, "high": 0.95},
                    "optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                    "estimator.history": {"type": "randint", "low": 2, "high": 6},
                    "estimator.update": {"type": "choice", "values": ["fast", "mix"]},
                    "seed": {"type": "grid", "values": [0, 1]},
                }
            },
        }
    )
    assert spec.search is not None
    space = param_space(spec.search)
    assert set(space) == set(spec.search.space)
    alpha = space["estimator.alpha"]
    assert isinstance(alpha, Float) and (alpha.lower, alpha.upper) == (0.5, 0.95)
    lr = space["optimizer.lr"]
    assert isinstance(lr, Float) and "LogUniform" in type(lr.get_sampler()).__name__
    history = space["estimator.history"]
    assert isinstance(history, Integer) and (history.lower, history.upper) == (2, 6)
    assert isinstance(space["estimator.update"], Categorical)
    assert space["seed"] == {"grid_search": [0, 1]}

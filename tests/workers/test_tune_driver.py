"""The search space handed to Ray Tune comes from the job spec, path by path."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from service.schemas.jobs import JobSpec, ResourcesSpec
from workers.attempt import AttemptContext
from workers.tune_driver import param_space, trial_resources, tune_trainable


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


def test_a_trial_holds_the_cpus_only_when_it_trains_itself() -> None:
    assert trial_resources(ResourcesSpec()) == {"CPU": 0.01}  # its TorchTrainer's workers hold them
    in_trial = ResourcesSpec(executor="ray_task", cpus_per_worker=2)
    assert trial_resources(in_trial) == {"CPU": 2.0, "GPU": 0.0}
    assert trial_resources(ResourcesSpec(executor="ray_task", use_gpu=True)) == {"CPU": 1.0, "GPU": 1.0}


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_concurrent_tune_runs_of_one_driver_keep_their_own_functions(ray_head: Any, tmp_path: Path) -> None:
    """Two jobs' Tune runs in one dispatcher (one Ray driver), each with a function named ``trial``: the
    first's trials launched after the second run registered its function still run the first's (Tune
    looks a trial's function up by name; ``bench.chaos`` once saw a study's trials run a search's)."""
    import ray.tune

    def context(job_id: str) -> AttemptContext:
        return AttemptContext(job_id=job_id, attempt=1, spec={}, database_url="sqlite://", artifacts_dir=str(tmp_path))

    def job_function(tag: str) -> Any:
        def trial(config: dict[str, Any]) -> None:  # the name every search and study trial function has
            (tmp_path / f"{tag}-{config['i']}").write_text(tag)
            time.sleep(1.0)

        return trial

    def tuner(job_id: str, n: int) -> Any:
        return ray.tune.Tuner(
            tune_trainable(context(job_id), "trial", job_function(job_id), ResourcesSpec()),
            param_space={"i": ray.tune.grid_search(list(range(n)))},
            tune_config=ray.tune.TuneConfig(max_concurrent_trials=1),
            run_config=ray.tune.RunConfig(name=job_id, storage_path=str(tmp_path / "ray")),
        )

    first = threading.Thread(target=lambda: tuner("first", 3).fit())
    first.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "first-0").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    tuner("second", 1).fit()  # registers its own function while the first run still has trials to start
    first.join(timeout=180)
    ran = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    assert ran == {"first-0": "first", "first-1": "first", "first-2": "first", "second-0": "second"}

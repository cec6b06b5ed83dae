"""A search job on Ray Tune: a function trainable that runs one training run per trial (on a
TorchTrainer of its own, or, with ``resources.executor = "ray_task"``, in the trial itself).

Passing a trainer to ``Tuner`` is deprecated (it raises in Ray 2.60), so each trial runs its own
TorchTrainer, whose epochs reach Tune through ``TuneReportCallback`` (ASHA needs them) and the
database through ``DatabaseCallback``. The best trial is the one with the best validation accuracy
of its binarized phase, read back from the recorded metrics.
"""

from __future__ import annotations

import math
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from fsg_core.spec import TrainSpec
from service.schemas.jobs import Choice, JobSpec, LogUniform, RandInt, ResourcesSpec, SearchSpec, Uniform, set_path
from workers.attempt import AttemptContext, AttemptStore
from workers.task_driver import run_in_process
from workers.train_driver import build_trainer

__all__ = ["param_space", "run_search", "run_trial", "trial_resources", "trial_score", "tune_trainable"]


def tune_trainable(ctx: AttemptContext, role: str, function: Any, resources: ResourcesSpec) -> Any:
    """``function`` as a Tune trainable registered under a name of its own: ``fsg-<job>-a<attempt>-<role>``.

    Tune registers a function trainable under its ``__name__`` in one registry per Ray driver, and a
    trial actor (re)started later looks its function up by that name. A dispatcher is one driver
    running many jobs: two searches or studies at once, both with a function called ``trial``, would
    each overwrite the other's, and a trial restarted after a fault ran the other job's function with
    its own config (found by ``bench.chaos``: a study's trials failing, and recorded, inside a search).
    """
    name = f"fsg-{ctx.job_id}-a{ctx.attempt}-{role}"
    function.__name__ = function.__qualname__ = name
    return ray.tune.with_resources(function, trial_resources(resources))


def trial_resources(resources: ResourcesSpec) -> dict[str, float]:
    """What one Tune trial holds: the run's CPUs (or GPU) when it trains in the trial itself
    (``ray_task``); otherwise next to nothing, as it only waits on its TorchTrainer, whose workers hold them."""
    if resources.executor == "ray_task":
        return {"CPU": resources.cpus, "GPU": resources.gpus}  # one worker: the run's whole share
    return {"CPU": 0.01}


def run_trial(
    ctx: AttemptContext,
    spec: JobSpec,
    store: AttemptStore,
    train_spec: dict[str, Any],
    *,
    trial_key: str,
    run_name: str,
    to_tune: bool = False,
) -> None:
    """One trial's training run, from scratch, by the job's executor: in this Tune trial (``ray_task``), or
    on its own TorchTrainer. ``to_tune``: its epochs reach Tune (a search's scheduler needs them)."""
    if spec.resources.executor == "ray_task":
        run_in_process(ctx, spec, store, TrainSpec.model_validate(train_spec), trial_key=trial_key, to_tune=to_tune)
        return
    trainer = build_trainer(
        ctx,
        spec,
        store,
        train_spec=train_spec,
        run_name=run_name,
        trial_key=trial_key,
        extra_callbacks=[TuneReportCallback()] if to_tune else None,
    )
    trainer.fit()


def param_space(search: SearchSpec) -> dict[str, Any]:
    """The Tune search space of a job's ``search.space`` (keys stay the dotted spec paths)."""
    space: dict[str, Any] = {}
    for path, dim in search.space.items():
        if isinstance(dim, Uniform):
            space[path] = ray.tune.uniform(dim.low, dim.high)
        elif isinstance(dim, LogUniform):
            space[path] = ray.tune.loguniform(dim.low, dim.high)
        elif isinstance(dim, RandInt):
            space[path] = ray.tune.randint(dim.low, dim.high)
        elif isinstance(dim, Choice):
            space[path] = ray.tune.grid_search(dim.values) if dim.type == "grid" else ray.tune.choice(dim.values)
    return space


def _trial_function(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> Any:
    base = spec.train_spec().model_dump(mode="json")

    def trial(config: dict[str, Any]) -> None:
        trial_key = ray.tune.get_context().get_trial_id()
        train_spec = base
        for path, value in config.items():
            train_spec = set_path(train_spec, path, value)
        store.record_trial(trial_key, config=config, state="running")
        run_trial(ctx, spec, store, train_spec, trial_key=trial_key, run_name=f"{ctx.job_id}-{trial_key}", to_tune=True)

    return trial


def _scheduler(spec: JobSpec) -> Any:
    assert spec.search is not None
    if spec.search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=spec.init.pretrain_epochs + spec.epochs,  # one report per epoch, both phases
        grace_period=spec.search.grace_period,
        reduction_factor=spec.search.reduction_factor,
    )


def run_search(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> dict[str, Any]:
    assert spec.search is not None
    search = spec.search
    tuner = ray.tune.Tuner(
        tune_trainable(ctx, "trial", _trial_function(ctx, spec, store), spec.resources),
        param_space=param_space(search),
        tune_config=ray.tune.TuneConfig(
            num_samples=search.num_samples,
            metric=search.metric,
            mode=search.mode,
            scheduler=_scheduler(spec),
            max_concurrent_trials=search.max_concurrent_trials,
        ),
        run_config=ray.tune.RunConfig(name=ctx.job_id, storage_path=ctx.ray_storage),
    )
    grid = tuner.fit()
    total_epochs = spec.init.pretrain_epochs + spec.epochs
    best_key: str | None = None
    best_value: float | None = None
    summaries: dict[str, dict[str, Any]] = {}
    for result in (grid[i] for i in range(len(grid))):  # ResultGrid is indexable, not typed as iterable
        metrics = result.metrics or {}
        trial_key = str(metrics.get("trial_id", ""))
        if not trial_key:
            continue  # failed before its first report; Tune logged why
        summaries[trial_key] = store.results(trial_key)
        value = trial_score(store, trial_key, search.metric, search.mode)
        iterations = int(metrics.get("training_iteration", 0) or 0)
        state = "failed" if result.error else ("succeeded" if iterations >= total_epochs else "stopped")
        store.record_trial(
            trial_key,
            config=dict(result.config or {}),
            state=state,
            metric=value,
            epochs=iterations,
            error=str(result.error) if result.error else None,
        )
        if value is not None and (best_value is None or (value > best_value) == (search.mode == "max")):
            best_key, best_value = trial_key, value
    if best_key is None:
        raise RuntimeError(f"no trial of the search reported a finite binarized-phase {search.metric}")
    store.record_best_trial(best_key)
    out = dict(summaries[best_key])
    out.update(best_trial=best_key, best_metric=best_value, trials=len(summaries))
    return out


def trial_score(store: AttemptStore, trial_key: str, metric: str, mode: str) -> float | None:
    """The trial's best ``metric`` over its binarized epochs (pre-training accuracy is not the model's)."""
    values = [row.get(metric) for row in store.metric_rows(trial_key) if row["phase"] == "binary"]
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if mode == "max" else min(finite)

"""A study job on Ray Tune: variants x seeds, each seed with one full-precision pre-training that its
variants share.

Two grids. First the pre-trainings, one per seed (trial ``pretrain/seed<s>``), with that seed's own
split, so no variant of the seed is ever validated on images its starting point was trained on. Then
every (variant, seed) pair (trial ``<variant>/seed<s>``) starts from its seed's pre-training. Both
are cached across attempts: a trial whose run already finished (recorded ``succeeded``) is not run
again, so a retried study resumes where it stopped. The study's figures (means with t intervals,
paired tests against the baseline) are computed from the recorded trials by ``service.db.study``.
"""

from __future__ import annotations

from typing import Any

import ray.tune

from service.schemas.jobs import JobSpec, StudyVariant, pretraining_spec, study_trial_spec
from workers.attempt import AttemptContext, AttemptStore
from workers.tune_driver import run_trial, tune_trainable

__all__ = ["pretrain_key", "run_study", "trial_key"]


def pretrain_key(seed: int) -> str:
    return f"pretrain/seed{seed}"


def trial_key(variant: str, seed: int) -> str:
    return f"{variant}/seed{seed}"


def _run_once(
    ctx: AttemptContext,
    spec: JobSpec,
    store: AttemptStore,
    key: str,
    train_spec: dict[str, Any],
    config: dict,
    *,
    kept: Any = None,
) -> None:
    """Run one trial unless an earlier attempt finished it (and, with ``kept``, left what ``kept()``
    checks for: a pre-training whose checkpoint record or file was lost is run again)."""
    if store.trial_state(key) == "succeeded" and (kept is None or kept()):
        return
    store.record_trial(key, config=config, state="running")
    try:
        run_trial(ctx, spec, store, train_spec, trial_key=key, run_name=f"{ctx.job_id}-{key.replace('/', '-')}")
    except BaseException as exc:
        store.record_trial(key, config=config, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    results = store.results(key)
    store.record_trial(
        key, config=config, state="succeeded", metric=results.get("best_val_acc"), epochs=results.get("epochs", 0)
    )


def _grid(ctx: AttemptContext, spec: JobSpec, name: str, function: Any, configs: list[dict[str, Any]]) -> None:
    """Run ``function`` over ``configs`` on Tune (a grid), at most ``max_concurrent_trials`` at once."""
    assert spec.study is not None
    tuner = ray.tune.Tuner(
        tune_trainable(ctx, name, function, spec.resources),
        param_space={"point": ray.tune.grid_search(configs)},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=spec.study.max_concurrent_trials),
        run_config=ray.tune.RunConfig(name=f"{ctx.job_id}-{name}", storage_path=ctx.ray_storage),
    )
    grid = tuner.fit()
    failed = [grid[i] for i in range(len(grid)) if grid[i].error]
    if failed:
        raise RuntimeError(f"{len(failed)} of the study's {name} trials failed; first: {failed[0].error}")


def run_study(ctx: AttemptContext, spec: JobSpec, store: AttemptStore) -> dict[str, Any]:
    assert spec.study is not None
    study = spec.study
    base = spec.train_spec()
    seeds = list(range(study.seeds))
    variants = {v.name: v for v in study.variants}

    def pretrain(config: dict[str, Any]) -> None:
        seed = int(config["point"]["seed"])
        fp = pretraining_spec(base, seed)
        assert fp is not None
        key = pretrain_key(seed)
        _run_once(
            ctx,
            spec,
            store,
            key,
            fp.model_dump(mode="json"),
            {"seed": seed, "role": "pretrain"},
            kept=lambda: store.latest_checkpoint(key) is not None,
        )

    pretrained: dict[int, str | None] = dict.fromkeys(seeds)
    if pretraining_spec(base, 0) is not None:
        _grid(ctx, spec, "pretrain", pretrain, [{"seed": s} for s in seeds])
        for seed in seeds:
            path = store.latest_checkpoint(pretrain_key(seed))
            if path is None:
                raise RuntimeError(f"the pre-training of seed {seed} left no checkpoint")
            pretrained[seed] = path

    def trial(config: dict[str, Any]) -> None:
        variant: StudyVariant = variants[config["point"]["variant"]]
        seed = int(config["point"]["seed"])
        train_spec = study_trial_spec(base, variant, seed, pretrained[seed]).model_dump(mode="json")
        _run_once(ctx, spec, store, trial_key(variant.name, seed), train_spec, {"variant": variant.name, "seed": seed})

    _grid(ctx, spec, "trials", trial, [{"variant": v, "seed": s} for v in variants for s in seeds])
    return store.study_results(study)

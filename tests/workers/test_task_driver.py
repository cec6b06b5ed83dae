"""A ``ray_task`` job runs fit in the attempt's own process: every epoch reaches the database, each
checkpoint the artifact store, and a later attempt resumes from the latest one. No Ray needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fsg_core.packed import load_packed
from service.db import reads
from service.db.engine import Database
from service.db.migrate import upgrade
from service.db.queue import enqueue
from service.schemas.jobs import JobSpec
from workers.attempt import AttemptContext, AttemptStore, close_databases
from workers.task_driver import run_in_process, run_task

SPEC: dict[str, Any] = {
    "name": "small",
    "model": {"arch": "resnet20"},
    "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
    "estimator": {"name": "ste"},
    "epochs": 2,
    "batch_size": 64,
    "max_steps_per_epoch": 3,
    "init": {"pretrain_epochs": 1},
    "resources": {"num_workers": 1, "executor": "ray_task"},
}


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'fsg.db'}"
    upgrade(url)
    db = Database.from_url(url)
    spec = JobSpec.model_validate(SPEC)
    with db.write() as session:
        job, _ = enqueue(session, tenant="t", spec=spec)
    yield db, spec, job.id, url, tmp_path / "artifacts"
    db.dispose()
    close_databases()  # the attempts' own, opened once in this process


def _ctx(job_id: str, url: str, artifacts: Path, attempt: int, resume: str | None = None) -> AttemptContext:
    return AttemptContext(
        job_id=job_id,
        attempt=attempt,
        spec=SPEC,
        database_url=url,
        artifacts_dir=str(artifacts),
        resume_path=resume,
        db_outage_s=5,
    )


def test_every_epoch_and_checkpoint_is_recorded(setup: Any) -> None:
    db, spec, job_id, url, artifacts = setup
    ctx = _ctx(job_id, url, artifacts, 1)
    summary = run_task(ctx, spec, AttemptStore.of(ctx))

    with db.read() as session:
        metrics = reads.list_metrics(session, job_id, "")
        checkpoints = reads.list_checkpoints(session, job_id)
    assert [(m.phase, m.epoch) for m in metrics] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    assert {m.attempt for m in metrics} == {1}
    assert [(c.phase, c.epoch) for c in checkpoints] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    assert all(Path(c.full_path).is_file() and Path(c.full_path).is_relative_to(artifacts) for c in checkpoints)
    assert checkpoints[0].packed_path is None  # no 1-bit model before the binarized phase
    last = checkpoints[-1]
    assert last.packed_path is not None and last.packed_bytes == Path(last.packed_path).stat().st_size
    binary_val = [m.values["val_acc"] for m in metrics if m.phase == "binary"]
    assert summary["best_val_acc"] == pytest.approx(max(binary_val))
    packed = load_packed(last.packed_path)
    assert packed.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert "binary epoch 2" in (artifacts / "jobs" / job_id / "log.txt").read_text()


def test_a_new_attempt_resumes_from_the_latest_checkpoint(setup: Any) -> None:
    db, spec, job_id, url, artifacts = setup
    short = JobSpec.model_validate({**SPEC, "epochs": 1})
    first = _ctx(job_id, url, artifacts, 1)
    run_task(first, short, AttemptStore.of(first))
    with db.read() as session:
        latest = reads.list_checkpoints(session, job_id)[-1]
    second = _ctx(job_id, url, artifacts, 2, resume=str(Path(latest.full_path).parent))
    run_task(second, spec, AttemptStore.of(second))

    with db.read() as session:
        metrics = reads.list_metrics(session, job_id, "")
    # The second attempt trains only the epoch the first did not reach.
    assert [(m.phase, m.epoch, m.attempt) for m in metrics] == [("pretrain", 1, 1), ("binary", 1, 1), ("binary", 2, 2)]


def test_task_executor_is_one_worker() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        JobSpec.model_validate({**SPEC, "resources": {"num_workers": 2, "executor": "ray_task"}})


def test_trials_run_in_process_keep_their_epochs_and_checkpoints_apart(setup: Any) -> None:
    """Two study trials trained in their Tune trials' processes (``ray_task``): each epoch under its trial,
    each checkpoint in a directory of its own, none in the job's."""
    db, spec, job_id, url, artifacts = setup
    ctx = _ctx(job_id, url, artifacts, 1)
    store = AttemptStore.of(ctx)
    for key, seed in (("ste/seed0", 0), ("ste/seed1", 1)):
        run_in_process(ctx, spec, store, spec.train_spec().model_copy(update={"seed": seed}), trial_key=key)

    with db.read() as session:
        assert reads.list_metrics(session, job_id, "") == []
        keys = ("ste/seed0", "ste/seed1")
        per_trial = {k: [(m.phase, m.epoch) for m in reads.list_metrics(session, job_id, k)] for k in keys}
        checkpoints = reads.list_checkpoints(session, job_id)
    assert per_trial["ste/seed0"] == per_trial["ste/seed1"] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    by_trial = {k: {Path(c.full_path).parent for c in checkpoints if c.trial_key == k} for k in keys}
    assert {c.trial_key for c in checkpoints} == set(keys) and not by_trial["ste/seed0"] & by_trial["ste/seed1"]
    assert all(len(d) == 3 and all(p.is_dir() for p in d) for d in by_trial.values())
    assert store.latest_checkpoint("ste/seed1") == [c.full_path for c in checkpoints if c.trial_key == "ste/seed1"][-1]
    assert "ste/seed1: binary epoch 2" in (artifacts / "jobs" / job_id / "log.txt").read_text()

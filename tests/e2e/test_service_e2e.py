"""The whole service, for real: HTTP API and dispatcher processes, SQLite, a local Ray cluster.

Marked ``ray``; every wait is bounded.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.e2e.conftest import RAY_CPUS, RayHead, Service, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]


def job_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "e2e",
        "model": {"arch": "resnet20"},
        "data": {"dataset": "digits", "crop_padding": 1, "flip": False},
        "estimator": {"name": "ste"},
        "epochs": 2,
        "batch_size": 32,
        "max_steps_per_epoch": 3,
        "init": {"pretrain_epochs": 1},
        "resources": {"num_workers": 2},
        "max_retries": 1,
    }
    spec.update(overrides)
    return spec


def events_of(svc: Service, job_id: str) -> list[Any]:
    from service.db import reads

    db = svc.database()
    try:
        with db.read() as session:
            return list(reads.events_after(session, job_id))
    finally:
        db.dispose()


def test_a_two_worker_training_job_succeeds_with_metrics_and_a_packed_model(service: Service, tmp_path: Path) -> None:
    from fsg_core.data import build_splits
    from fsg_core.packed import load_packed
    from service.schemas.jobs import JobSpec

    client = service.client()
    spec = job_spec()
    job = client.submit(spec)
    assert job["state"] == "queued"
    states = [e.data.get("to_state") for e in client.events(job["id"]) if e.kind == "state"]
    assert states == ["queued", "dispatching", "running", "succeeded"], states

    final = client.job(job["id"])
    assert final["state"] == "succeeded" and final["attempts"] == 1
    rows = client.metrics(job["id"])
    assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    assert final["summary"]["epochs"] == 2

    path = client.download(job["id"], tmp_path / "model.packed.safetensors")
    packed = load_packed(path)
    test = build_splits(JobSpec.model_validate(spec).train_spec().data, seed=0).test
    with torch.no_grad():
        correct = int((packed.model(test.images).argmax(1) == test.labels).sum())
    assert correct == round(rows[-1]["test_acc"] * len(test))
    log = "\n".join(client.logs(job["id"]))
    assert "binary epoch 2" in log and "job succeeded" in log

    # The Ray dashboard link is the attempt's own page: its task, under the dispatcher's Ray job.
    from ray.util.state import get_task

    page = final["ray_dashboard_url"]
    assert page.startswith(service.env["FSG_RAY_DASHBOARD_URL"].rstrip("/") + "/#/jobs/"), page
    ray_job, task_id = page.split("/#/jobs/")[1].split("/tasks/")
    task = get_task(task_id, address=service.env["FSG_RAY_DASHBOARD_URL"])
    task = task[0] if isinstance(task, list) else task
    assert task is not None and task.name == f"fsg-job-{job['id']}-attempt-1" and task.job_id == ray_job


def test_a_search_records_its_trials_and_chooses_the_best_by_validation_accuracy(service: Service) -> None:
    client = service.client()
    spec = job_spec(
        kind="search",
        resources={"num_workers": 1},
        search={
            "space": {"optimizer.lr": {"type": "grid", "values": [3e-4, 3e-2]}},  # one round of two at once
            "num_samples": 1,
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
    )
    job = client.submit(spec)
    final = client.wait(job["id"], poll_s=1, timeout_s=300)
    assert final["state"] == "succeeded", final.get("error")
    trials = client.trials(job["id"])
    assert len(trials) == 2 and all(t["state"] == "succeeded" for t in trials)
    assert sorted(t["config"]["optimizer.lr"] for t in trials) == [3e-4, 3e-2]
    best = [t for t in trials if t["is_best"]]
    assert len(best) == 1
    # Best = highest binarized-phase validation accuracy, recomputed here from the stored epochs.
    rows = client.metrics(job["id"])
    per_trial = {
        t["trial_key"]: max(r["val_acc"] for r in rows if r.get("trial") == t["trial_key"] and r["phase"] == "binary")
        for t in trials
    }
    assert per_trial[best[0]["trial_key"]] == max(per_trial.values())
    assert final["summary"]["best_trial"] == best[0]["trial_key"]


def test_a_ray_task_search_trains_in_its_tune_trials_and_tune_sees_every_epoch(service: Service) -> None:
    """``executor: ray_task`` on a search: each trial trains in its Tune trial (no Ray Train worker group);
    its epochs reach Tune (the scheduler's clock), the database and the job's checkpoint directory."""
    client = service.client()
    spec = job_spec(
        kind="search",
        resources={"num_workers": 1, "executor": "ray_task"},
        search={
            "space": {"optimizer.lr": {"type": "grid", "values": [3e-4, 3e-2]}},
            "num_samples": 1,
            "scheduler": "asha",
            "grace_period": 3,  # = every epoch of both phases: ASHA may stop none, so both run to the end
            "max_concurrent_trials": 2,
        },
    )
    job = client.submit(spec)
    final = client.wait(job["id"], poll_s=1, timeout_s=240)
    assert final["state"] == "succeeded", final.get("error")
    trials = client.trials(job["id"])
    # "succeeded" needs as many Tune iterations as epochs (1 pre-training + 2 binarized): one report each
    assert [(t["state"], t["epochs"]) for t in trials] == [("succeeded", 3)] * 2
    assert final["summary"]["best_trial"] in {t["trial_key"] for t in trials}
    from service.db import reads

    db = service.database()
    try:
        with db.read() as session:
            checkpoints = reads.list_checkpoints(session, job["id"])
    finally:
        db.dispose()
    job_checkpoints = service.home / "artifacts" / "jobs" / job["id"] / "checkpoints"
    assert {c.trial_key for c in checkpoints} == {t["trial_key"] for t in trials}
    assert len(checkpoints) == 6 and all(Path(c.full_path).is_relative_to(job_checkpoints) for c in checkpoints)


def test_cancel_of_a_running_job_frees_rays_cpus_quickly(service: Service, ray_head: RayHead) -> None:
    client = service.client()
    job = client.submit(job_spec(epochs=200, max_steps_per_epoch=None))
    wait_for(lambda: client.metrics(job["id"]), 120, "the first epoch is reported")
    assert ray_head.resources()[0] < RAY_CPUS  # the workers hold the CPUs
    started = time.monotonic()
    assert client.cancel(job["id"])["state"] == "cancelling"
    wait_for(lambda: client.job(job["id"])["state"] == "cancelled", 15, "the job ends cancelled")
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 15 - (time.monotonic() - started), "the CPUs are back")
    assert time.monotonic() - started <= 15


def test_a_dispatcher_killed_mid_run_is_replaced_and_the_job_resumes_from_its_checkpoint(
    service: Service, ray_head: RayHead
) -> None:
    from service.db import reads

    client = service.client()
    job = client.submit(job_spec(epochs=6, max_steps_per_epoch=6, resources={"num_workers": 1}))
    job_id = job["id"]
    wait_for(lambda: len([r for r in client.metrics(job_id) if r["phase"] == "binary"]) >= 2, 180, "two epochs")
    service.dispatchers[0].send_signal(signal.SIGKILL)
    service.dispatchers[0].wait(timeout=10)
    killed_at = time.monotonic()
    assert client.job(job_id)["state"] == "running"  # nobody has noticed yet
    service.start_dispatcher()
    final = client.wait(job_id, poll_s=1, timeout_s=300)
    assert final["state"] == "succeeded", final.get("error")
    assert final["attempts"] == 2

    events = events_of(service, job_id)
    transitions = [(e.from_state, e.to_state) for e in events if e.kind == "state"]
    assert transitions.count(("dispatching", "running")) == 2
    assert ("running", "retrying") in transitions and ("retrying", "queued") in transitions
    second_start = next(e for e in events if e.kind == "state" and e.to_state == "running" and "attempt 2" in e.message)
    assert second_start.data and second_start.data.get("resume_path"), "attempt 2 resumes from a checkpoint"

    db = service.database()
    try:
        with db.read() as session:
            metrics = reads.list_metrics(session, job_id)
            by_event = [e for e in events if e.kind == "metric"]
    finally:
        db.dispose()
    attempt2 = sorted(m.epoch for m in metrics if m.attempt == 2 and m.phase == "binary")
    assert attempt2 and attempt2[-1] == 6
    assert attempt2[0] > 1, "attempt 2 started after the checkpointed epochs, not from scratch"
    # Nothing ran twice at once: every metric of attempt 1 precedes attempt 2's start, which itself
    # came only after the killed dispatcher's lease expired (6 s).
    first_attempt_events = [e for e in by_event if e.data and e.data.get("attempt") == 1]
    assert all(e.id < second_start.id for e in first_attempt_events)
    assert time.monotonic() - killed_at >= 6

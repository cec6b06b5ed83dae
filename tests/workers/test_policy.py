"""The dispatcher's decisions, as a table: no database, no Ray."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.db.states import Fate
from workers.policy import Outcome, after_attempt, after_lease_expiry, lease_renewal_due, on_shutdown, timed_out

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("outcome", "attempts", "max_retries", "cancel", "verdict"),
    [
        (Outcome.succeeded, 1, 0, False, Fate.succeed),
        (Outcome.succeeded, 1, 0, True, Fate.succeed),  # finished before the cancel landed
        (Outcome.failed, 1, 0, False, Fate.fail),
        (Outcome.failed, 1, 1, False, Fate.retry),
        (Outcome.failed, 2, 1, False, Fate.fail),
        (Outcome.failed, 3, 5, False, Fate.retry),
        (Outcome.failed, 1, 3, True, Fate.cancel),
        (Outcome.cancelled, 1, 3, False, Fate.cancel),
        (Outcome.cancelled, 1, 0, True, Fate.cancel),
        (Outcome.timed_out, 1, 1, False, Fate.retry),
        (Outcome.timed_out, 2, 1, False, Fate.fail),
        (Outcome.timed_out, 1, 1, True, Fate.cancel),
    ],
)
def test_after_attempt(outcome: Outcome, attempts: int, max_retries: int, cancel: bool, verdict: Fate) -> None:
    decision = after_attempt(outcome, attempts=attempts, max_retries=max_retries, cancel_requested=cancel)
    assert decision.fate == verdict
    assert decision.reason


def test_retry_reason_counts_the_retries_left() -> None:
    assert "2 retries left" in after_attempt(Outcome.failed, attempts=2, max_retries=3, cancel_requested=False).reason
    assert "timed out" in after_attempt(Outcome.timed_out, attempts=1, max_retries=0, cancel_requested=False).reason


@pytest.mark.parametrize(
    ("started", "timeout", "now", "expected"),
    [
        (None, 10.0, T0, False),
        (T0, None, T0 + timedelta(days=9), False),
        (T0, 10.0, T0 + timedelta(seconds=10), False),
        (T0, 10.0, T0 + timedelta(seconds=10.5), True),
    ],
)
def test_timed_out(started: datetime | None, timeout: float | None, now: datetime, expected: bool) -> None:
    assert timed_out(started, timeout, now) is expected


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, T0, True),
        (T0, T0 + timedelta(seconds=9.9), False),
        (T0, T0 + timedelta(seconds=10), True),
    ],
)
def test_lease_renewal_three_times_per_lease(last: datetime | None, now: datetime, expected: bool) -> None:
    assert lease_renewal_due(last, 30.0, now) is expected


# --- retryable or not, by type ----------------------------------------------------------------------


def _ray_task_error(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises for a task that raised ``cause``: a RayTaskError subclass of the cause's type."""
    from ray.exceptions import RayTaskError

    text = 'Traceback (most recent call last):\n  File "/srv/fsg/workers/job_runner.py", line 70, in run_job\n'
    return RayTaskError("run_job", text + f"{type(cause).__name__}: {cause}", cause).as_instanceof_cause()


def _non_retryable() -> list[BaseException]:
    from fsg_core.checkpoint import CheckpointError
    from fsg_core.data.errors import DatasetError
    from fsg_core.errors import SpecError
    from fsg_core.estimators.base import UnknownEstimatorError
    from fsg_core.estimators.fsg.kernels import KernelUnavailableError
    from fsg_core.models import UnknownModelError

    return [
        DatasetError("data.root '/data/c10' holds no cifar-10-python.tar.gz"),
        CheckpointError("init.checkpoint is not an fsg checkpoint"),
        SpecError("the stored spec no longer validates: data.root: too long"),
        UnknownModelError("resnet7"),
        UnknownEstimatorError("nope"),
        KernelUnavailableError("kernel 'fused' was asked for: no compiler"),
    ]


def _infrastructure() -> list[BaseException]:
    from ray import exceptions as rex

    return [
        rex.WorkerCrashedError(),
        rex.NodeDiedError("node 10.0.0.3 died"),
        rex.OutOfMemoryError("Task was killed due to the node running low on memory."),
        rex.ObjectLostError("00ff", "owner", "call site"),
        rex.RaySystemError("raylet died"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        OSError("No space left on device"),
    ]


@pytest.mark.parametrize("make", range(6))
def test_errors_of_the_job_itself_are_not_retried_plain_or_through_ray(make: int) -> None:
    from workers.policy import retryable

    exc = _non_retryable()[make]
    assert not retryable(exc)
    assert not retryable(_ray_task_error(exc))
    wrapped = RuntimeError("run failed")
    wrapped.__cause__ = exc  # raise ... from exc
    assert not retryable(wrapped)


@pytest.mark.parametrize("make", range(7))
def test_infrastructure_errors_are_retried(make: int) -> None:
    from workers.policy import retryable

    exc = _infrastructure()[make]
    assert retryable(exc)
    assert retryable(_ray_task_error(exc))


def test_describe_names_the_innermost_error_without_traceback_or_server_paths() -> None:
    from fsg_core.data.errors import DatasetError
    from workers.policy import describe

    text = describe(_ray_task_error(DatasetError("data.root '/data/c10' holds no archive\nsecond line")))
    assert text == "DatasetError: data.root '/data/c10' holds no archive"
    assert "/srv/fsg" not in text and "Traceback" not in text


def test_describe_bounds_its_length_and_survives_empty_messages() -> None:
    from workers.policy import describe

    assert describe(RuntimeError()) == "RuntimeError"
    long = describe(ValueError("x" * 10_000), limit=100)
    assert len(long) == 100 and long.startswith("ValueError: xxx")


@pytest.mark.parametrize(
    ("state", "attempts", "max_retries", "cancel", "fate"),
    [
        ("running", 1, 1, False, Fate.retry),
        ("running", 2, 1, False, Fate.fail),
        ("dispatching", 1, 0, False, Fate.fail),
        ("running", 1, 3, True, Fate.cancel),
        ("cancelling", 1, 3, False, Fate.cancel),
    ],
)
def test_after_lease_expiry(state: str, attempts: int, max_retries: int, cancel: bool, fate: Fate) -> None:
    decision = after_lease_expiry(
        owner="d9", state=state, attempts=attempts, max_retries=max_retries, cancel_requested=cancel, error=None
    )
    assert decision.fate == fate and "d9" in decision.reason
    if fate == Fate.fail:
        assert decision.error == "dispatcher d9 stopped renewing its lease"


def test_on_shutdown_gives_back_and_ends_cancels() -> None:
    assert on_shutdown(owner="d1", state="running").fate == Fate.give_back
    assert on_shutdown(owner="d1", state="dispatching").fate == Fate.give_back
    assert on_shutdown(owner="d1", state="cancelling").fate == Fate.cancel


def test_a_non_retryable_error_fails_at_once_with_its_message() -> None:
    decision = after_attempt(
        Outcome.failed, attempts=1, max_retries=5, cancel_requested=False, error="DatasetError: x", retry=False
    )
    assert decision.fate == Fate.fail and decision.error == "DatasetError: x"
    assert "cannot succeed" in decision.reason
    timed = after_attempt(Outcome.timed_out, attempts=1, max_retries=0, cancel_requested=False, timeout_s=30)
    assert timed.error == "attempt 1 exceeded timeout_s=30"

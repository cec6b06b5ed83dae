"""The dispatcher's decisions, as a table: no database, no Ray."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workers.policy import Outcome, Verdict, after_attempt, lease_renewal_due, timed_out

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("outcome", "attempts", "max_retries", "cancel", "verdict"),
    [
        (Outcome.succeeded, 1, 0, False, Verdict.succeed),
        (Outcome.succeeded, 1, 0, True, Verdict.succeed),  # finished before the cancel landed
        (Outcome.failed, 1, 0, False, Verdict.fail),
        (Outcome.failed, 1, 1, False, Verdict.retry),
        (Outcome.failed, 2, 1, False, Verdict.fail),
        (Outcome.failed, 3, 5, False, Verdict.retry),
        (Outcome.failed, 1, 3, True, Verdict.cancel),
        (Outcome.cancelled, 1, 3, False, Verdict.cancel),
        (Outcome.cancelled, 1, 0, True, Verdict.cancel),
        (Outcome.timed_out, 1, 1, False, Verdict.retry),
        (Outcome.timed_out, 2, 1, False, Verdict.fail),
        (Outcome.timed_out, 1, 1, True, Verdict.cancel),
    ],
)
def test_after_attempt(outcome: Outcome, attempts: int, max_retries: int, cancel: bool, verdict: Verdict) -> None:
    decision = after_attempt(outcome, attempts=attempts, max_retries=max_retries, cancel_requested=cancel)
    assert decision.verdict == verdict
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

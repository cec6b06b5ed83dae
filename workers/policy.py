"""Pure decisions of the dispatcher, returned as values and tested without a database or Ray."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["Outcome", "Verdict", "after_attempt", "lease_renewal_due", "timed_out"]


class Outcome(StrEnum):
    """How one attempt ended, as the dispatcher saw it."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"  # stopped because a cancel was requested
    timed_out = "timed_out"  # stopped because the attempt exceeded timeout_s


class Verdict(StrEnum):
    """What happens to the job next."""

    succeed = "succeed"
    retry = "retry"  # retrying -> queued; the next attempt resumes from the latest checkpoint
    fail = "fail"
    cancel = "cancel"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str


def after_attempt(outcome: Outcome, *, attempts: int, max_retries: int, cancel_requested: bool) -> Decision:
    """Decide the job's fate after an attempt.

    A requested cancel wins over everything but success; failures and timeouts retry while
    ``attempts <= max_retries`` (``attempts`` counts the one that just ended).
    """
    if outcome == Outcome.succeeded:
        return Decision(Verdict.succeed, "the run finished")
    if cancel_requested or outcome == Outcome.cancelled:
        return Decision(Verdict.cancel, "cancelled on request")
    what = "timed out" if outcome == Outcome.timed_out else "failed"
    if attempts <= max_retries:
        return Decision(Verdict.retry, f"attempt {attempts} {what}; {max_retries - attempts + 1} retries left")
    return Decision(Verdict.fail, f"attempt {attempts} {what} and no retries are left")


def timed_out(started: datetime | None, timeout_s: float | None, now: datetime) -> bool:
    """Whether an attempt that started at ``started`` has run past ``timeout_s``."""
    return started is not None and timeout_s is not None and now - started > timedelta(seconds=timeout_s)


def lease_renewal_due(last_renewal: datetime | None, lease_s: float, now: datetime) -> bool:
    """Renew three times per lease period, so two missed renewals still keep the lease."""
    return last_renewal is None or now - last_renewal >= timedelta(seconds=lease_s / 3)

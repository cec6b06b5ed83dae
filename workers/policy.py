"""Pure decisions of the dispatcher, returned as values and tested without a database or Ray."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import StrEnum

from fsg_core.errors import NonRetryableError
from service.db.states import Decision, Fate, JobState

__all__ = [
    "Outcome",
    "after_attempt",
    "after_lease_expiry",
    "describe",
    "lease_renewal_due",
    "on_shutdown",
    "retryable",
    "timed_out",
]


class Outcome(StrEnum):
    """How one attempt ended, as the dispatcher saw it."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"  # stopped because a cancel was requested
    timed_out = "timed_out"  # stopped because the attempt exceeded timeout_s


def after_attempt(
    outcome: Outcome,
    *,
    attempts: int,
    max_retries: int,
    cancel_requested: bool,
    error: str | None = None,
    retry: bool = True,
    timeout_s: float | None = None,
) -> Decision:
    """Decide the job's fate after an attempt.

    A requested cancel wins over everything but success; failures and timeouts retry while
    ``attempts <= max_retries`` (``attempts`` counts the one that just ended) and the error is
    ``retry``-able (``retryable(exc)``: a bad spec or dataset fails at once).
    """
    if outcome == Outcome.succeeded:
        return Decision(Fate.succeed, "the run finished")
    if cancel_requested or outcome == Outcome.cancelled:
        return Decision(Fate.cancel, "cancelled on request")
    if outcome == Outcome.timed_out:
        what, error = "timed out", f"attempt {attempts} exceeded timeout_s={timeout_s:g}" if timeout_s else error
    else:
        what = "failed"
    if retry and attempts <= max_retries:
        return Decision(Fate.retry, f"attempt {attempts} {what}; {max_retries - attempts + 1} retries left", error)
    if not retry:
        return Decision(Fate.fail, f"attempt {attempts} {what}; another attempt cannot succeed", error)
    return Decision(Fate.fail, f"attempt {attempts} {what} and no retries are left", error)


def after_lease_expiry(
    *, owner: str | None, state: str, attempts: int, max_retries: int, cancel_requested: bool, error: str | None
) -> Decision:
    """Decide the fate of a job whose dispatcher stopped renewing its lease (it died, or lost the
    database for longer than the lease): cancelled if a cancel was asked, else retried while attempts
    remain (it resumes from its latest checkpoint), else failed."""
    if state == JobState.cancelling or cancel_requested:
        return Decision(Fate.cancel, f"lease of {owner} expired while cancelling")
    if attempts <= max_retries:
        return Decision(Fate.retry, f"lease of {owner} expired", error)
    why = f"dispatcher {owner} stopped renewing its lease"
    return Decision(Fate.fail, f"lease of {owner} expired and no attempts are left", why)


def on_shutdown(*, owner: str, state: str) -> Decision:
    """A dispatcher stopping cleanly: its running jobs go back to the queue without counting the attempt
    (not the job's fault), a job being cancelled ends cancelled."""
    if state == JobState.cancelling:
        return Decision(Fate.cancel, "cancelled (dispatcher stopped)")
    return Decision(Fate.give_back, f"dispatcher {owner} stopped")


def timed_out(started: datetime | None, timeout_s: float | None, now: datetime) -> bool:
    """Whether an attempt that started at ``started`` has run past ``timeout_s``."""
    return started is not None and timeout_s is not None and now - started > timedelta(seconds=timeout_s)


def lease_renewal_due(last_renewal: datetime | None, lease_s: float, now: datetime) -> bool:
    """Renew three times per lease period, so two missed renewals still keep the lease."""
    return last_renewal is None or now - last_renewal >= timedelta(seconds=lease_s / 3)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: Ray's ``RayTaskError.cause`` and Python's ``__cause__``, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "cause", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed: no, when the error (or what it wraps) is a
    ``NonRetryableError`` (bad data, a bad checkpoint, an invalid spec); yes for anything else (a dead
    worker, a lost node, an out-of-memory kill, an unknown error)."""
    return not any(isinstance(e, NonRetryableError) for e in _chain(exc))


_WRAPPERS = ("RayTaskError", "RayActorError", "TaskCancelledError")


def describe(exc: BaseException, limit: int = 500) -> str:
    """A short error for the job's record: the innermost error's type and the first line of its message.

    No traceback and no source paths: Ray's own wrappers (whose text is a remote traceback) are looked
    through to the error they carry.
    """
    errors = list(_chain(exc))
    chosen = next((e for e in reversed(errors) if not type(e).__name__.startswith(_WRAPPERS)), errors[-1])
    lines = [line.strip() for line in str(chosen).splitlines() if line.strip()]
    text = f"{type(chosen).__name__}: {lines[0]}" if lines else type(chosen).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Job states and the transitions between them: pure values, no database.

``queued -> dispatching -> running -> succeeded | failed | cancelled``, plus ``cancelling`` (a running
job asked to stop) and ``retrying`` (a failed attempt that goes back to the queue). Every transition
the queue performs is checked against ``ALLOWED`` and recorded as a ``JobEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ACTIVE",
    "ALLOWED",
    "TERMINAL",
    "Decision",
    "Fate",
    "IllegalTransition",
    "JobState",
    "check_transition",
]


class JobState(StrEnum):
    queued = "queued"
    dispatching = "dispatching"
    running = "running"
    cancelling = "cancelling"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
# States in which a dispatcher holds the job's lease.
ACTIVE = frozenset({JobState.dispatching, JobState.running, JobState.cancelling})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    # queued -> failed: no live Ray cluster can hold the job any more (admission, after a cluster shrank).
    JobState.queued: frozenset({JobState.dispatching, JobState.cancelled, JobState.failed}),
    JobState.dispatching: frozenset(
        {JobState.running, JobState.queued, JobState.retrying, JobState.failed, JobState.cancelling, JobState.cancelled}
    ),
    JobState.running: frozenset({JobState.succeeded, JobState.failed, JobState.retrying, JobState.cancelling}),
    JobState.cancelling: frozenset({JobState.cancelled, JobState.failed, JobState.succeeded}),
    JobState.retrying: frozenset({JobState.queued, JobState.cancelled, JobState.failed}),
    JobState.succeeded: frozenset(),
    JobState.failed: frozenset(),
    JobState.cancelled: frozenset(),
}


class IllegalTransition(ValueError):
    """A transition ``ALLOWED`` does not permit (the job is in another state than expected)."""

    def __init__(self, job_id: str, current: JobState, target: JobState) -> None:
        super().__init__(f"job {job_id} cannot go from {current} to {target}")
        self.job_id, self.current, self.target = job_id, current, target


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    """Raise ``IllegalTransition`` unless ``current -> target`` is allowed."""
    if target not in ALLOWED[current]:
        raise IllegalTransition(job_id, current, target)


class Fate(StrEnum):
    """What happens to a job after an attempt (or its lease) ended: ``workers.policy`` decides,
    ``queue.apply`` carries it out, in one place."""

    succeed = "succeed"  # -> succeeded, with the run's results
    retry = "retry"  # -> retrying -> queued; the next attempt resumes from the latest checkpoint
    fail = "fail"  # -> failed, with the error
    give_back = "give_back"  # -> queued without counting the attempt (not the job's fault: a dispatcher stopped)
    cancel = "cancel"  # -> (cancelling ->) cancelled


@dataclass(frozen=True)
class Decision:
    """A fate with the reason recorded in the job's event and, for failures, the job's error."""

    fate: Fate
    reason: str
    error: str | None = None

"""The state machine as a table: every (from, to) pair, checked against SERVICE_SPEC's lifecycle."""

from __future__ import annotations

import itertools

import pytest

from service.db.states import ACTIVE, ALLOWED, TERMINAL, IllegalTransition, JobState, check_transition

Q, D, R, CING, RETRY, OK, FAIL, CED = (
    JobState.queued,
    JobState.dispatching,
    JobState.running,
    JobState.cancelling,
    JobState.retrying,
    JobState.succeeded,
    JobState.failed,
    JobState.cancelled,
)

# Written out from the spec, independently of ALLOWED: queued -> dispatching -> running -> an end;
# cancelling on the way to cancelled (or an end the run reached first); retrying back to the queue.
EXPECTED = {
    (Q, D),  # claimed
    (Q, CED),  # cancelled before it ran
    (Q, FAIL),  # no live Ray cluster can hold it any more (the cluster shrank under it)
    (D, R),  # Ray accepted it
    (D, Q),  # released: handed back without counting the attempt
    (D, RETRY),  # the launch failed, attempts remain
    (D, FAIL),  # the launch failed for good (e.g. missing dataset root)
    (D, CING),  # cancel requested while launching
    (D, CED),  # cancelled before Ray had anything to stop
    (R, OK),
    (R, FAIL),
    (R, RETRY),
    (R, CING),
    (CING, CED),
    (CING, FAIL),  # Ray failed before it stopped
    (CING, OK),  # the run finished before the stop reached it
    (RETRY, Q),
    (RETRY, CED),
    (RETRY, FAIL),
}

PAIRS = list(itertools.product(JobState, JobState))


def test_names_are_the_specs() -> None:
    assert {s.value for s in JobState} == {
        "queued",
        "dispatching",
        "running",
        "cancelling",
        "retrying",
        "succeeded",
        "failed",
        "cancelled",
    }
    assert set(ALLOWED) == set(JobState)


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_pair(current: JobState, target: JobState) -> None:
    if (current, target) in EXPECTED:
        check_transition("j1", current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_transition("j1", current, target)


def test_terminal_states_have_no_exits() -> None:
    assert TERMINAL == {OK, FAIL, CED}
    for state in TERMINAL:
        assert ALLOWED[state] == frozenset(), state
    # Every other state can still end: each reaches a terminal state in one or two steps.
    for state in set(JobState) - TERMINAL:
        reachable = set(ALLOWED[state]) | {t for s in ALLOWED[state] for t in ALLOWED[s]}
        assert reachable & TERMINAL, state


def test_active_states_are_the_leased_ones() -> None:
    assert ACTIVE == {D, R, CING}
    assert not ACTIVE & TERMINAL


def test_illegal_transition_names_the_job_and_both_states() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition("abc123", JobState.succeeded, JobState.running)
    assert str(info.value) == "job abc123 cannot go from succeeded to running"
    assert (info.value.job_id, info.value.current, info.value.target) == ("abc123", OK, R)
    assert isinstance(info.value, ValueError)

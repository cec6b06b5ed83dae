"""Read queries on real SQLite and PostgreSQL: pagination, filters, tenant isolation, ordering."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from service.db.engine import Database
from service.db.models import Job, JobEvent, Token, utcnow
from service.db.reads import (
    events_after,
    find_token,
    get_checkpoint,
    get_job,
    jobs_by_state,
    list_checkpoints,
    list_dispatchers,
    list_jobs,
    list_metrics,
    list_trials,
    oldest_queued_at,
    state_events,
)
from service.db.records import record_checkpoint, record_heartbeat, record_metrics, record_stopped, upsert_trial
from service.db.states import JobState
from tests.service.db.conftest import EPOCH, TENANT, MakeJob, claim, move


def _all_pages(db: Database, limit: int, **filters: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        with db.read() as session:
            page = list_jobs(session, TENANT, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([job.id for job in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def _newest_first(jobs: list[Job]) -> list[str]:
    return [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]


# -- list_jobs -----------------------------------------------------------------------------------


def test_pages_cover_every_job_once_newest_first(db: Database, make_job: MakeJob) -> None:
    # 23 jobs, several sharing a created_at, so the id must break ties across page boundaries.
    jobs = [make_job(age_s=i // 3) for i in range(23)]
    pages = _all_pages(db, limit=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [job_id for page in pages for job_id in page] == _newest_first(jobs)


def test_exact_multiple_of_the_page_size_ends_without_an_empty_page(db: Database, make_job: MakeJob) -> None:
    for i in range(6):
        make_job(age_s=i)
    assert [len(p) for p in _all_pages(db, limit=3)] == [3, 3]
    with db.read() as session:
        assert list_jobs(session, "nobody", limit=3).items == []


def test_pages_are_stable_while_jobs_arrive(db: Database, make_job: MakeJob) -> None:
    old = [make_job(age_s=i // 2) for i in range(12)]
    seen: list[str] = []
    cursor = None
    arrived: list[Job] = []
    while True:
        with db.read() as session:
            page = list_jobs(session, TENANT, limit=4, cursor=cursor)
        seen += [job.id for job in page.items]
        arrived += [make_job(), make_job()]  # submitted now, between two page fetches
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == _newest_first(old)
    assert not set(seen) & {job.id for job in arrived}


def test_filters_by_state_and_exact_name(db: Database, make_job: MakeJob) -> None:
    a1 = make_job(name="a", age_s=0)
    a2 = make_job(name="a", age_s=1)
    ab = make_job(name="ab", age_s=2)
    b = make_job(name="b", age_s=3)
    assert claim(db).id == a1.id
    move(db, a1.id, JobState.running)
    assert claim(db).id == a2.id
    move(db, a2.id, JobState.running, JobState.succeeded)

    def ids(**filters: object) -> list[str]:
        return [job_id for page in _all_pages(db, limit=1, **filters) for job_id in page]

    assert ids(name="a") == [a2.id, a1.id]
    assert ids(name="A") == []
    assert ids(states=["queued"]) == [b.id, ab.id]
    assert ids(states=["running", "succeeded"]) == [a2.id, a1.id]
    assert ids(states=["running"], name="a") == [a1.id]
    assert ids(states=[]) == ids() == [b.id, ab.id, a2.id, a1.id]


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "@@@@",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(json.dumps(["yesterday", "abc"]).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"created_at": "2024-01-01"}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00"]).encode()).decode(),
        "",
    ],
)
def test_malformed_cursor_is_a_value_error(db: Database, cursor: str) -> None:
    with db.read() as session, pytest.raises(ValueError, match="cursor .* is malformed"):
        list_jobs(session, TENANT, limit=5, cursor=cursor)


def test_limit_must_be_positive(db: Database) -> None:
    with db.read() as session, pytest.raises(ValueError, match="limit"):
        list_jobs(session, TENANT, limit=0)


def test_tenants_see_only_their_jobs(db: Database, make_job: MakeJob) -> None:
    mine = make_job(tenant=TENANT)
    theirs = make_job(tenant="tenant-b")
    with db.read() as session:
        assert get_job(session, mine.id, TENANT) is not None
        assert get_job(session, theirs.id, TENANT) is None
        assert get_job(session, "no-such-job", TENANT) is None
        assert [j.id for j in list_jobs(session, TENANT, limit=10).items] == [mine.id]
        assert [j.id for j in list_jobs(session, "tenant-b", limit=10).items] == [theirs.id]


def test_timestamps_come_back_aware_utc(db: Database, make_job: MakeJob) -> None:
    job = make_job(age_s=0)
    with db.read() as session:
        stored = get_job(session, job.id, TENANT)
    assert stored is not None
    assert stored.created_at == EPOCH and stored.created_at.utcoffset() == timedelta(0)
    assert abs((stored.updated_at - utcnow()).total_seconds()) < 60


# -- events, metrics, trials, checkpoints --------------------------------------------------------


def test_events_after_an_id(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    other = make_job()
    claim(db)
    move(db, job.id, JobState.running, JobState.succeeded)
    with db.read() as session:
        events = events_after(session, job.id)
        assert [e.to_state for e in events] == ["queued", "dispatching", "running", "succeeded"]
        assert all(e.job_id == job.id for e in events)
        assert [e.id for e in events_after(session, job.id, after_id=events[1].id)] == [e.id for e in events[2:]]
        assert [e.id for e in events_after(session, job.id, after_id=events[0].id, limit=2)] == [
            events[1].id,
            events[2].id,
        ]
        assert events_after(session, job.id, after_id=events[-1].id) == []
        assert [e.to_state for e in events_after(session, other.id)] == ["queued"]


def test_metrics_ordered_by_trial_then_pretrain_first_then_epoch(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    binary = [{"phase": "binary", "epoch": e, "val_acc": 0.5} for e in (2, 0, 1)]
    pretrain = [{"phase": "pretrain", "epoch": e, "val_acc": 0.3} for e in (1, 0)]
    with db.write() as session:
        record_metrics(session, job.id, binary, attempt=1, trial_key="t2")
        record_metrics(session, job.id, binary + pretrain, attempt=1, trial_key="t1")
        record_metrics(session, job.id, pretrain, attempt=1, trial_key="t2")
    with db.read() as session:
        rows = [(m.trial_key, m.phase, m.epoch) for m in list_metrics(session, job.id)]
        t2 = [(m.trial_key, m.phase, m.epoch) for m in list_metrics(session, job.id, trial_key="t2")]
    per_trial = [("pretrain", 0), ("pretrain", 1), ("binary", 0), ("binary", 1), ("binary", 2)]
    assert rows == [("t1", p, e) for p, e in per_trial] + [("t2", p, e) for p, e in per_trial]
    assert t2 == rows[5:]


def test_trials_in_start_order(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    with db.write() as session:
        for key in ("b", "a", "c"):
            upsert_trial(session, job.id, trial_key=key, config={"lr": 0.1}, state="running")
        upsert_trial(session, job.id, trial_key="b", config={"lr": 0.1}, state="succeeded", metric=0.9)
    with db.read() as session:
        trials = list_trials(session, job.id)
    assert [(t.trial_key, t.state) for t in trials] == [("b", "succeeded"), ("a", "running"), ("c", "running")]


def test_checkpoints_listed_and_fetched_per_job(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    other = make_job()
    with db.write() as session:
        first = record_checkpoint(
            session,
            job.id,
            epoch=0,
            phase="pretrain",
            full_path="/a/0.safetensors",
            packed_path=None,
            full_bytes=1000,
            packed_bytes=None,
            metrics={"val_acc": 0.4},
        )
        second = record_checkpoint(
            session,
            job.id,
            epoch=0,
            phase="binary",
            full_path="/a/1.safetensors",
            packed_path="/a/1.packed.safetensors",
            full_bytes=2000,
            packed_bytes=70,
            metrics=None,
        )
    with db.read() as session:
        assert [c.id for c in list_checkpoints(session, job.id)] == [first.id, second.id]
        assert list_checkpoints(session, other.id) == []
        fetched = get_checkpoint(session, job.id, second.id)
        assert fetched is not None
        assert (fetched.packed_path, fetched.packed_bytes, fetched.full_bytes) == ("/a/1.packed.safetensors", 70, 2000)
        assert get_checkpoint(session, other.id, second.id) is None
        assert get_checkpoint(session, job.id, second.id + 1000) is None


def test_find_token_by_hash(db: Database) -> None:
    with db.write() as session:
        session.add(Token(tenant=TENANT, name="ci", token_hash="a" * 64, revoked=True))
    with db.read() as session:
        token = find_token(session, "a" * 64)
        assert token is not None and (token.tenant, token.revoked) == (TENANT, True)
        assert find_token(session, "b" * 64) is None


def test_jobs_by_state_counts_every_state_and_tenant(db: Database, make_job: MakeJob) -> None:
    with db.read() as session:
        assert jobs_by_state(session) == dict.fromkeys((s.value for s in JobState), 0)
    make_job(tenant=TENANT, age_s=0)
    make_job(tenant="tenant-b", age_s=1)
    make_job(tenant="tenant-b", age_s=2)
    claim(db)
    with db.read() as session:
        counts = jobs_by_state(session)
    assert counts == {**dict.fromkeys((s.value for s in JobState), 0), "queued": 2, "dispatching": 1}


def _date_events(db: Database, job_id: str, to_state: JobState, at_s: float) -> None:
    """Set when the job's events to ``to_state`` happened (EPOCH + ``at_s``)."""
    with db.write() as session:
        session.execute(
            update(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.to_state == to_state.value)
            .values(created_at=EPOCH + timedelta(seconds=at_s))
        )


def test_oldest_queued_at_counts_from_the_latest_entry_into_queued(db: Database, make_job: MakeJob) -> None:
    with db.read() as session:
        assert oldest_queued_at(session) is None
    retried = make_job(age_s=0)
    waiting = make_job(age_s=1)
    _date_events(db, retried.id, JobState.queued, 0)
    _date_events(db, waiting.id, JobState.queued, 20)
    with db.read() as session:
        assert oldest_queued_at(session) == EPOCH
    # ``retried`` (the head of the queue) fails an attempt and is requeued at +30: ``waiting`` is oldest now.
    claim(db)
    move(db, retried.id, JobState.retrying, JobState.queued)
    _date_events(db, retried.id, JobState.queued, 30)
    with db.read() as session:
        assert oldest_queued_at(session) == EPOCH + timedelta(seconds=20)
    # Jobs that left the queue do not count; a queued job without events counts from its created_at.
    move(db, waiting.id, JobState.cancelled)
    with db.write() as session:
        session.execute(delete(JobEvent).where(JobEvent.job_id == retried.id))
    with db.read() as session:
        assert oldest_queued_at(session) == EPOCH


def test_state_events_are_the_state_changes_in_order(db: Database, make_job: MakeJob) -> None:
    job = make_job()
    claim(db)
    move(db, job.id, JobState.running)
    with db.write() as session:
        record_metrics(session, job.id, [{"phase": "binary", "epoch": 1, "val_acc": 0.5}], attempt=1)
    with db.read() as session:
        events = state_events(session, job.id)
    assert [(e.from_state, e.to_state) for e in events] == [
        (None, "queued"),
        ("queued", "dispatching"),
        ("dispatching", "running"),
    ]


def test_list_dispatchers_keeps_recent_running_ones_freshest_first(db: Database) -> None:
    def beat(owner: str, at_s: float) -> None:
        with db.write() as session:
            record_heartbeat(
                session,
                owner=owner,
                hostname="h",
                pid=1,
                started_at=EPOCH,
                running_attempts=0,
                claims=0,
                now=EPOCH + timedelta(seconds=at_s),
            )

    for owner, at_s in [("old", 10), ("fresh", 300), ("stale", 200), ("stopped", 250), ("also-fresh", 300)]:
        beat(owner, at_s)
    with db.write() as session:
        record_stopped(session, "stopped")
    with db.read() as session:
        recent = list_dispatchers(session, since=EPOCH + timedelta(seconds=100))
        assert [d.owner for d in recent] == ["also-fresh", "fresh", "stale"]
        assert recent[0].heartbeat_at == EPOCH + timedelta(seconds=300)
        assert [d.owner for d in list_dispatchers(session, since=EPOCH, limit=2)] == ["also-fresh", "fresh"]

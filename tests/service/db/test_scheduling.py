"""``scheduling.choose`` as a pure function: fair share, quotas, backfill and the reservation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.db.scheduling import Candidate, Quota, Usage, choose, over_quota

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def job(
    name: str,
    tenant: str = "a",
    *,
    priority: int = 0,
    age_s: float = 0,
    waited_s: float = 0,
    cpus: float = 1,
    gpus: float = 0,
) -> Candidate:
    return Candidate(
        id=name,
        tenant=tenant,
        priority=priority,
        created_at=NOW - timedelta(seconds=1000 - age_s),
        queued_since=NOW - timedelta(seconds=waited_s),
        cpus=cpus,
        gpus=gpus,
    )


def order(candidates: list[Candidate], usage=None, quotas=None, *, free=(8.0, 0.0), total=(8.0, 0.0), reserve=600.0):
    chosen = choose(candidates, usage or {}, quotas or {}, free=free, total=total, now=NOW, reserve_after_s=reserve)
    return [c.id for c in chosen]


def test_without_usage_priority_then_age() -> None:
    jobs = [job("old", age_s=0), job("new", age_s=5), job("high", priority=5, age_s=9)]
    assert order(jobs) == ["high", "old", "new"]


def test_the_tenant_furthest_below_its_share_goes_first_even_at_lower_priority() -> None:
    jobs = [job("a-urgent", "a", priority=1000), job("b-low", "b", priority=0, age_s=50)]
    assert order(jobs, {"a": Usage(1, 1.0, 0.0)}) == ["b-low", "a-urgent"]


def test_the_dominant_resource_decides_the_share() -> None:
    """a holds 1 of 2 GPUs (half the cluster), b holds 3 of 8 CPUs: b is further below its share."""
    jobs = [job("a1", "a"), job("b1", "b", age_s=1)]
    usage = {"a": Usage(1, 1.0, 1.0), "b": Usage(1, 3.0, 0.0)}
    assert order(jobs, usage, total=(8.0, 2.0), free=(4.0, 1.0)) == ["b1", "a1"]


def test_weights_scale_the_share() -> None:
    jobs = [job("a1", "a"), job("b1", "b", age_s=1)]
    usage = {"a": Usage(2, 2.0, 0.0), "b": Usage(1, 1.0, 0.0)}
    assert order(jobs, usage) == ["b1", "a1"]
    assert order(jobs, usage, {"a": Quota(share=4.0)}) == ["a1", "b1"]


def test_over_quota_jobs_are_not_chosen() -> None:
    jobs = [job("a1", "a"), job("a-big", "a", cpus=3, age_s=1), job("b1", "b", age_s=2)]
    usage = {"a": Usage(1, 2.0, 0.0)}
    assert order(jobs, usage, {"a": Quota(max_running=1)}) == ["b1"]
    assert order(jobs, usage, {"a": Quota(max_cpus=3)}) == ["b1", "a1"]
    assert over_quota(Usage(0, 0.0, 1.0), Quota(max_gpus=1), 0.0, 1.0) == "max_gpus=1"
    assert over_quota(Usage(0, 0.0, 0.0), Quota(max_gpus=1), 0.0, 1.0) is None


def test_a_job_that_does_not_fit_lets_smaller_ones_pass() -> None:
    jobs = [job("big", priority=9, cpus=6), job("small", age_s=1), job("medium", cpus=2, age_s=2)]
    assert order(jobs, free=(3.0, 0.0)) == ["small", "medium"]


def test_an_urgent_job_that_does_not_fit_holds_its_resources_back() -> None:
    jobs = [job("big", cpus=6, waited_s=700), job("small", age_s=1), job("medium", cpus=2, age_s=2)]
    assert order(jobs, free=(3.0, 0.0)) == []  # 3 free, 6 reserved: nothing else may start
    assert order(jobs, free=(7.0, 0.0)) == ["big", "small"]  # it goes first; 1 CPU is left beside it


def test_the_urgent_job_is_the_first_in_fair_order_that_waited_long() -> None:
    jobs = [job("a-big", "a", cpus=8, waited_s=900), job("b-big", "b", cpus=8, waited_s=700, age_s=1)]
    usage = {"a": Usage(1, 1.0, 0.0)}
    assert order(jobs, usage, free=(8.0, 0.0), total=(16.0, 0.0)) == ["b-big"]

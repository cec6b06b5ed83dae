"""``RayCluster.release_placement_groups`` on a real Ray: a placement group outlives the task that made it
(it lives as long as the driver's job), and the release frees exactly the groups older than its cut."""

from __future__ import annotations

import time
from typing import Any

import pytest

from workers.ray_cluster import RayCluster

pytestmark = pytest.mark.ray


def _state(group_id: str) -> str:
    import ray
    from ray.util.state import get_placement_group

    found = get_placement_group(group_id, address=ray.get_runtime_context().gcs_address)
    assert found is not None
    return str(found.state)


@pytest.mark.timeout(180)
def test_a_group_left_by_an_ended_task_is_released_and_a_newer_one_is_kept(ray_head: Any) -> None:
    import ray
    from ray.util.placement_group import placement_group

    @ray.remote(num_cpus=0)
    def leave_a_group() -> str:  # an attempt whose Train/Tune run never removed its group
        group = placement_group([{"CPU": 0.01}])
        ray.get(group.ready(), timeout=60)
        return group.id.hex()

    old = ray.get(leave_a_group.remote(), timeout=120)
    cut = time.time_ns()
    time.sleep(0.05)
    new = ray.get(leave_a_group.remote(), timeout=120)
    assert _state(old) == _state(new) == "CREATED"  # the task ended; its groups did not

    cluster = RayCluster(ray_head.address, None, started_here=False)
    released = cluster.release_placement_groups(cut)
    assert old in released and new not in released
    deadline = time.monotonic() + 30
    while _state(old) != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(old) == "REMOVED" and _state(new) == "CREATED"
    assert new in cluster.release_placement_groups(time.time_ns())  # tidy up for the session's other tests

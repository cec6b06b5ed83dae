"""Two Ray nodes on one machine (``ray start --head`` plus ``ray start --address``, one CPU each):
a 2-worker job with ``placement: spread`` puts one worker on each node and succeeds, with its
checkpoints on the path both nodes share. Marked ``ray``; every wait is bounded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    TEST_ENV,
    RayHead,
    _wait_port,
    free_port,
    run_service,
    start_ray_node,
    stop_ray_node,
    wait_for,
)
from tests.e2e.test_service_e2e import events_of, job_spec

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]


def _alive_nodes(dashboard_url: str) -> list[Any]:
    from ray.util.state import list_nodes

    try:
        return [n for n in list_nodes(address=dashboard_url) if n.state == "ALIVE"]
    except Exception:  # noqa: BLE001 - the dashboard may still be starting
        return []


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    os.environ.update(TEST_ENV)
    port, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("ray2")
    head = start_ray_node(temp, num_cpus=1, head_port=port, dashboard_port=dashboard)
    node = None
    try:
        _wait_port(port, 60)
        _wait_port(dashboard, 60)
        node = start_ray_node(temp, num_cpus=1, head_port=port)
        url = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: len(_alive_nodes(url)) == 2, 90, "two Ray nodes are alive")
        yield RayHead(f"127.0.0.1:{port}", url)
    finally:
        if node is not None:
            stop_ray_node(node)
        stop_ray_node(head)


def test_a_spread_two_worker_job_puts_one_worker_on_each_node(two_nodes: RayHead, tmp_path: Path) -> None:
    from service.db import reads

    nodes = {n.node_id for n in _alive_nodes(two_nodes.dashboard_url)}
    assert len(nodes) == 2
    home = tmp_path / "fsg"
    with run_service(two_nodes.address, two_nodes.dashboard_url, home) as svc:
        client = svc.client()
        job_id = client.submit(job_spec(resources={"num_workers": 2, "placement": "spread"}))["id"]
        final = client.wait(job_id, poll_s=1, timeout_s=300)
        assert final["state"] == "succeeded", final.get("error")
        packed = client.download(job_id, tmp_path / "model.packed.safetensors")
        assert packed.stat().st_size > 0

        placements = [e for e in events_of(svc, job_id) if e.kind == "placement"]
        assert len(placements) == 1
        assert sorted(placements[0].data["nodes"]) == sorted(nodes)  # rank 0 and rank 1 on different nodes

        db = svc.database()
        try:
            with db.read() as session:
                checkpoints = reads.list_checkpoints(session, job_id)
        finally:
            db.dispose()
    shared = home / "artifacts" / "ray"
    assert checkpoints and all(Path(c.full_path).is_relative_to(shared) for c in checkpoints)
    assert all(Path(c.full_path).is_file() for c in checkpoints[-1:])  # older ones rotate (num_to_keep)

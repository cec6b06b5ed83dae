"""GET /v1/jobs/{id}/summary from the latest packed checkpoint."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from fsg_core.summary import describe_packed


def test_summary_describes_the_latest_packed_file(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit()
    assert client.get(f"/v1/jobs/{job['id']}/summary", headers=auth).status_code == 404
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 4)
    ckpt = worker.checkpoint(job["id"], epoch=4, packed=packed, full=full)
    response = client.get(f"/v1/jobs/{job['id']}/summary", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = describe_packed(packed)
    assert body["checkpoint_id"] == ckpt and body["epoch"] == 4 and body["phase"] == "binary"
    assert body["file_bytes"] == packed.stat().st_size == expected["file_bytes"]
    assert body["summary"] == expected["summary"]
    assert body["compression_ratio"] == expected["compression_ratio"] > 1
    assert body["header"]["arch"] == "resnet20" and body["header"]["num_classes"] == 10


def test_summary_of_a_corrupt_packed_file_is_a_clean_error(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    packed.write_bytes(b"not a safetensors file")
    ckpt = worker.checkpoint(job["id"], epoch=1, packed=packed, full=full)
    response = client.get(f"/v1/jobs/{job['id']}/summary", headers=auth)
    assert response.status_code == 500
    assert response.json() == {"detail": f"the packed file of checkpoint {ckpt} is not readable"}

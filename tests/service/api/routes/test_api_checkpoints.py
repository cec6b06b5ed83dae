"""GET /v1/jobs/{id}/checkpoints and the file downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient


def test_checkpoints_are_listed_with_sizes_and_links(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit()
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json() == []
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    first = worker.checkpoint(job["id"], epoch=1, packed=packed, full=full)
    second = worker.checkpoint(job["id"], epoch=2, full=artifacts(job["id"], 2)[1], phase="pretrain")
    rows = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()
    assert [(r["id"], r["epoch"], r["phase"]) for r in rows] == [(first, 1, "binary"), (second, 2, "pretrain")]
    assert rows[0]["packed_bytes"] == packed.stat().st_size and rows[0]["full_bytes"] == full.stat().st_size
    assert rows[0]["metrics"] == {"val_acc": 0.5}
    assert rows[0]["packed_url"] == f"/v1/jobs/{job['id']}/checkpoints/{first}?format=packed"
    assert rows[0]["full_url"] == f"/v1/jobs/{job['id']}/checkpoints/{first}?format=full"
    assert rows[1]["packed_url"] is None and rows[1]["packed_bytes"] is None
    assert "path" not in str(sorted(rows[0]))  # server paths are never shown


def test_download_streams_exactly_the_file(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit(name="my job")
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 3)
    ckpt = worker.checkpoint(job["id"], epoch=3, packed=packed, full=full)
    response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt}", headers=auth)  # packed by default
    assert response.status_code == 200
    assert response.content == packed.read_bytes()
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert f'filename="my_job-{job["id"][:8]}-binary-e3.packed.safetensors"' in disposition
    full_response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt}?format=full", headers=auth)
    assert full_response.content == full.read_bytes()
    assert full_response.headers["content-disposition"].endswith('-binary-e3.full.pt"')


def test_latest_is_the_newest_checkpoint_with_that_format(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    packed1, full1 = artifacts(job["id"], 1)
    worker.checkpoint(job["id"], epoch=1, packed=packed1, full=full1)
    _, full2 = artifacts(job["id"], 2)
    worker.checkpoint(job["id"], epoch=2, full=full2)
    assert (
        client.get(f"/v1/jobs/{job['id']}/checkpoints/latest?format=full", headers=auth).content == full2.read_bytes()
    )
    latest_packed = client.get(f"/v1/jobs/{job['id']}/checkpoints/latest", headers=auth)
    assert latest_packed.content == packed1.read_bytes()
    assert "-e1.packed" in latest_packed.headers["content-disposition"]


def test_missing_checkpoints_and_files_are_404(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any, tmp_path: Path
) -> None:
    job = submit()
    base = f"/v1/jobs/{job['id']}/checkpoints"
    assert client.get(f"{base}/latest", headers=auth).status_code == 404
    assert client.get(f"{base}/12345", headers=auth).status_code == 404
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    no_packed = worker.checkpoint(job["id"], epoch=1, full=full)
    assert client.get(f"{base}/{no_packed}?format=packed", headers=auth).status_code == 404
    gone = worker.checkpoint(job["id"], epoch=2, packed=packed, full=full)
    full.unlink()
    response = client.get(f"{base}/{gone}?format=full", headers=auth)
    assert response.status_code == 404
    assert str(full) not in response.text  # the detail never names server paths
    # A row pointing outside the artifact store (a forged or stale path) is never served.
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    stray = worker.checkpoint(job["id"], epoch=3, packed=outside)
    assert client.get(f"{base}/{stray}", headers=auth).status_code == 404


def test_a_checkpoint_of_another_job_is_404(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    a, b = submit(), submit()
    worker.start(a["id"])
    packed, full = artifacts(a["id"], 1)
    ckpt = worker.checkpoint(a["id"], epoch=1, packed=packed, full=full)
    assert client.get(f"/v1/jobs/{b['id']}/checkpoints/{ckpt}", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("suffix", "loc"),
    [
        ("abc", ["path", "ckpt"]),
        ("1?format=zip", ["query", "format"]),
        # digits outside ASCII: int() refuses the first two (a 500 once) and reads the third as 2
        ("%C2%B2", ["path", "ckpt"]),
        ("%E2%91%A0", ["path", "ckpt"]),
        ("%EF%BC%92", ["path", "ckpt"]),
    ],
)
def test_bad_checkpoint_reference_is_422(
    client: TestClient, auth: dict[str, str], submit: Any, suffix: str, loc: list[str]
) -> None:
    job = submit()
    response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{suffix}", headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_onnx_download_is_exported_once_cached_and_loads_in_onnx_runtime(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    submit: Any,
    worker: Any,
    artifacts: Any,
) -> None:
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from fsg_core.packed import load_packed

    job = submit(name="edge model")
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 2)
    ckpt = worker.checkpoint(job["id"], epoch=2, packed=packed, full=full)
    listed = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()
    assert listed[0]["onnx_url"] == f"/v1/jobs/{job['id']}/checkpoints/{ckpt}?format=onnx"
    url = f"/v1/jobs/{job['id']}/checkpoints/{ckpt}?format=onnx"
    assert client.get(url, headers=other_auth).status_code == 404  # another tenant's job: not even exported
    assert not list(packed.parent.glob("*.onnx"))

    first = client.get(url, headers=auth)
    assert first.status_code == 200 and first.headers["content-type"] == "application/octet-stream"
    assert first.headers["content-disposition"].endswith(f'edge_model-{job["id"][:8]}-binary-e2.onnx"')
    cached = packed.parent / "model.onnx"
    assert cached.read_bytes() == first.content  # kept beside the packed file
    stamp = cached.stat().st_mtime_ns
    second = client.get(f"/v1/jobs/{job['id']}/checkpoints/latest?format=onnx", headers=auth)
    assert second.content == first.content and cached.stat().st_mtime_ns == stamp  # served from the cache

    session = ort.InferenceSession(first.content, providers=["CPUExecutionProvider"])
    images = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        want = load_packed(packed).model((images - 0.5) / 0.25).numpy()
    (got,) = session.run(["logits"], {"image": images.numpy()})
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_an_unreadable_packed_file_is_a_clear_500_and_no_onnx_file(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any
) -> None:
    job = submit()
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    packed.write_bytes(packed.read_bytes()[:100])
    ckpt = worker.checkpoint(job["id"], epoch=1, packed=packed, full=full)
    response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt}?format=onnx", headers=auth)
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert detail == f"the packed file of checkpoint {ckpt} is not readable, so it cannot be exported"
    assert str(packed) not in response.text
    assert sorted(p.name for p in packed.parent.iterdir()) == ["checkpoint.pt", "model.packed.safetensors"]


def test_without_the_export_extra_onnx_is_501_naming_it(
    client: TestClient, auth: dict[str, str], submit: Any, worker: Any, artifacts: Any, monkeypatch: Any
) -> None:
    import sys

    job = submit()
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    ckpt = worker.checkpoint(job["id"], epoch=1, packed=packed, full=full)
    monkeypatch.setitem(sys.modules, "onnx", None)
    response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt}?format=onnx", headers=auth)
    assert response.status_code == 501 and "fsg[export]" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt}", headers=auth).status_code == 200  # packed still

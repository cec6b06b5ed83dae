"""Backend and device choice, joining a group from the environment; all_reduce_mean and broadcast_tensors:
no-ops alone, exact means and copies in a real gloo group."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsg_core import distributed as dist_utils

WORLD = 2


def test_helpers_are_no_ops_without_a_process_group() -> None:
    assert not dist.is_initialized()
    assert dist_utils.rank() == 0 and dist_utils.world_size() == 1 and not dist_utils.is_distributed()
    a, b = torch.arange(4.0), torch.ones(2, dtype=torch.float64)
    a_before, b_before = a.clone(), b.clone()
    dist_utils.all_reduce_mean([a, None, b])
    dist_utils.broadcast_tensors([a, b], src=0)
    dist_utils.broadcast_tensors([])
    assert torch.equal(a, a_before) and torch.equal(b, b_before)


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        ("cuda", "nccl"),
        ("cuda:1", "nccl"),
        (torch.device("cuda", 0), "nccl"),
        ("cpu", "gloo"),
        (torch.device("cpu"), "gloo"),
    ],
)
def test_backend_follows_the_device(device: str | torch.device, backend: str) -> None:
    assert dist_utils.backend_for(device) == backend


def test_local_device_is_the_local_ranks_gpu_or_the_cpu() -> None:
    assert dist_utils.local_device(3, cuda=True) == torch.device("cuda", 3)
    assert dist_utils.local_device(3, cuda=False) == torch.device("cpu")
    assert dist_utils.local_device(0) == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.timeout(60)
def test_init_process_group_from_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}
    env["MASTER_PORT"] = str(_free_port())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    device = dist_utils.init_process_group(torch.device("cpu"), timeout_s=30)
    try:
        assert device == torch.device("cpu")
        assert dist.get_backend() == "gloo" and dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_init_process_group_names_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.*torchrun"):
        dist_utils.init_process_group()
    assert not dist.is_initialized()


# --- a real two-process gloo group ---------------------------------------------------------------


def _reduce_inputs(rank: int) -> list[torch.Tensor | None]:
    """Rank-dependent tensors of mixed dtypes and shapes, with None entries as for unused parameters."""
    return [
        torch.tensor([rank + 1.0, 2.0 * rank]),  # float32 (2,)
        None,
        torch.full((2, 3), rank + 0.1, dtype=torch.float64),
        torch.arange(4.0).view(2, 2) * (rank + 1),  # float32 (2, 2), joins the first one's buffer
        None,
    ]


def _broadcast_inputs(rank: int) -> list[torch.Tensor]:
    """Values every dtype represents exactly in float32 (what the helper transports)."""
    return [
        torch.full((3,), rank + 1.0),
        torch.tensor([7 * rank + 3], dtype=torch.int64),
        torch.tensor([[0.5 + rank, -2.0]], dtype=torch.float64),
        torch.full((2,), rank - 1.5, dtype=torch.float16),
    ]


def _precise_inputs(rank: int) -> list[torch.Tensor]:
    """Values float32 cannot hold: a float64 third and a large int64 (BatchNorm's counter type)."""
    return [
        torch.tensor([1 / 3 + rank], dtype=torch.float64),
        torch.tensor([2**40 + 1 + rank], dtype=torch.int64),
    ]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        reduced = _reduce_inputs(rank)
        ids = [id(t) for t in reduced]
        dist_utils.all_reduce_mean(reduced)
        assert [id(t) for t in reduced] == ids  # in place
        broadcast = _broadcast_inputs(rank)
        dist_utils.broadcast_tensors(broadcast, src=0)
        from_rank_1 = _broadcast_inputs(rank)
        dist_utils.broadcast_tensors(from_rank_1, src=1)
        precise = _precise_inputs(rank)
        dist_utils.broadcast_tensors(precise, src=0)
        result: dict[str, Any] = {
            "rank": dist_utils.rank(),
            "world_size": dist_utils.world_size(),
            "is_distributed": dist_utils.is_distributed(),
            "reduced": reduced,
            "broadcast": broadcast,
            "from_rank_1": from_rank_1,
            "precise": precise,
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the workers once; every test below checks a part of what they recorded."""
    out = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_group_identity(results: list[dict[str, Any]]) -> None:
    assert [r["rank"] for r in results] == list(range(WORLD))
    assert all(r["world_size"] == WORLD and r["is_distributed"] for r in results)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_all_reduce_mean_averages_in_place_and_skips_none(results: list[dict[str, Any]]) -> None:
    inputs = [_reduce_inputs(r) for r in range(WORLD)]
    for res in results:
        for i, got in enumerate(res["reduced"]):
            if inputs[0][i] is None:
                assert got is None
                continue
            parts = [inp[i] for inp in inputs]
            want = sum(parts[1:], parts[0]) / WORLD  # type: ignore[arg-type]
            assert got.dtype == parts[0].dtype and got.shape == parts[0].shape  # type: ignore[union-attr]
            assert torch.equal(got, want), f"entry {i}"
    # every rank holds the same bytes
    for a, b in zip(results[0]["reduced"], results[1]["reduced"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("key", "src"), [("broadcast", 0), ("from_rank_1", 1)])
def test_broadcast_copies_the_source_rank(results: list[dict[str, Any]], key: str, src: int) -> None:
    want = _broadcast_inputs(src)
    for res in results:
        for got, expected in zip(res[key], want, strict=True):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got, expected)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_broadcast_is_exact_for_float64_and_int64(results: list[dict[str, Any]]) -> None:
    want = _precise_inputs(0)
    for res in results:
        for got, expected in zip(res["precise"], want, strict=True):
            assert torch.equal(got, expected), f"{expected.dtype}: sent {expected.tolist()}, got {got.tolist()}"

"""Two gloo processes (torch.distributed on loopback, no Ray) training FSG end bit-identical."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsg_core.spec import TrainSpec
from fsg_core.train import fit
from tests.conftest import tiny_spec_dict

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, spec_json: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        result = fit(TrainSpec.model_validate_json(spec_json))
        est = result.components.estimator
        torch.save(
            {
                "model": result.model.state_dict(),
                "estimator": est.state_dict(),  # type: ignore[attr-defined]
                "history": result.history,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}"))
    return out


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_gloo_workers_training_fsg_stay_bit_identical(tmp_path: Path) -> None:
    spec = TrainSpec.model_validate(
        tiny_spec_dict({"name": "fsg", "kernel": "fused"}, epochs=2, batch_size=32, max_steps_per_epoch=4)
    )
    mp.spawn(_worker, args=(_free_port(), spec.model_dump_json(), str(tmp_path)), nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    model0, model1 = states[0]["model"], states[1]["model"]
    assert model0.keys() == model1.keys()
    differing = [k for k in model0 if not torch.equal(model0[k], model1[k])]
    assert not differing, f"weights differ between ranks: {differing}"

    est0, est1 = _flatten(states[0]["estimator"]), _flatten(states[1]["estimator"])
    assert est0.keys() == est1.keys()
    # The FSG state: fast and slow nets, LREs, meta-optimizer moments and the gradient history.
    assert any("history" in k for k in est0)
    differing = [k for k in est0 if not torch.equal(est0[k], est1[k])]
    assert not differing, f"FSG state differs between ranks: {differing}"
    # The run really trained and both ranks saw the same global metrics.
    assert states[0]["history"][-1]["train_loss"] == states[1]["history"][-1]["train_loss"]
    assert states[0]["estimator"]["steps"] == 2 * 4


def test_a_batch_not_divisible_by_the_world_size_is_refused() -> None:
    from fsg_core.data import TensorSplit, iterate_batches

    split = TensorSplit(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter(iterate_batches(split, 5, shuffle=False, generator=None, rank=0, world_size=2)))

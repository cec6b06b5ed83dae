"""What only a GPU can show: the Triton slow-net kernel on CUDA, FSG training there, NCCL between ranks.

Skipped without CUDA (CI has none); ``make gpu-check`` runs them (``-m cuda``) on a GPU machine. The
CPU halves of every check here run in CI: the kernel under Triton's interpreter
(``test_triton_kernel.py``) and the training paths on the CPU.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check on a GPU machine)"),
]

SIZES = [432, 2304, 4608, 9216, 640, 37]  # ResNet-20-like layers, and one of 37 weights (a partial program)


def _case(expand: int, d_state: int, k: int, zero: bool) -> tuple[Any, ...]:
    from tests.fsg_core.estimators.fsg.test_kernels import _inputs, _reference, _ssm, _values_and_grads

    ssm64 = _ssm(expand, d_state)
    hist, order, tokens = _inputs(k, zero, torch.float64, sizes=SIZES)
    gout = torch.randn(sum(SIZES), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want = _values_and_grads(lambda t: _reference(ssm64, hist, order, t, SIZES), ssm64, tokens, gout)
    return ssm64, hist, order, tokens, gout, want


def _on_cuda(ssm64: Any, hist: Any, order: Any, tokens: Any, gout: Any, kernel: str) -> tuple[Any, ...]:
    from fsg_core.estimators.fsg.slow_net import SlowNet
    from tests.fsg_core.estimators.fsg.test_kernels import _values_and_grads

    net = SlowNet(list(SIZES), d_state=ssm64.d_state, expand=ssm64.d_inner, kernel=kernel)  # type: ignore[arg-type]
    assert net.ssm is not None
    net.ssm.load_state_dict(ssm64.state_dict())
    net = net.cuda()
    assert net.ssm is not None
    net.ssm.use_kernels = False  # the PyTorch reference, not mamba_ssm's scan
    out, grads = _values_and_grads(
        lambda t: net(hist.float().cuda(), t, order=order), net.ssm, tokens.float().cuda(), gout.float().cuda()
    )
    return net, out.cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize("expand,d_state", [(8, 4), (16, 8), (100, 16)])
@pytest.mark.parametrize("k,zero", [(5, False), (5, True), (2, False)])
def test_triton_kernel_on_cuda_within_1e5_of_the_float64_truth(expand: int, d_state: int, k: int, zero: bool) -> None:
    from tests.fsg_core.estimators.fsg.test_kernels import _rel

    ssm64, hist, order, tokens, gout, (want, want_grads) = _case(expand, d_state, k, zero)
    net, got, got_grads = _on_cuda(ssm64, hist, order, tokens, gout, "fused")
    backend = net.backend(torch.device("cuda", torch.cuda.current_device()))
    assert backend is not None and backend.name == "triton"
    assert _rel(got, want) <= 1e-5
    errors = [_rel(g, w) for g, w in zip(got_grads, want_grads, strict=True)]
    assert max(errors) <= 1e-5, errors


def test_triton_kernel_on_cuda_is_deterministic() -> None:
    ssm64, hist, order, tokens, gout, _ = _case(8, 4, 5, False)
    _, out_a, grads_a = _on_cuda(ssm64, hist, order, tokens, gout, "fused")
    _, out_b, grads_b = _on_cuda(ssm64, hist, order, tokens, gout, "fused")
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def _train(kernel: str, device: str = "cuda") -> list[dict[str, Any]]:
    from fsg_core.spec import TrainSpec
    from fsg_core.train import fit
    from tests.conftest import tiny_spec_dict

    estimator = {"name": "fsg", "kernel": kernel, "stats_every": 1}
    spec = tiny_spec_dict(estimator, epochs=2, max_steps_per_epoch=6, device=device)
    return [r for r in fit(TrainSpec.model_validate(spec)).history if r["phase"] == "binary"]


def test_fsg_trains_on_cuda_through_the_kernel_like_the_pytorch_path() -> None:
    fused, reference = _train("fused"), _train("torch")
    for got, want in zip(fused, reference, strict=True):
        for key in ("train_loss", "train_acc", "val_acc", "test_loss", "slow_rms"):
            assert math.isclose(got[key], want[key], rel_tol=1e-3, abs_tol=1e-6), (key, got[key], want[key])


def test_fsg_on_cuda_is_bit_identical_for_one_seed() -> None:
    a, b = _train("fused"), _train("fused")
    keys = ("train_loss", "val_acc", "test_loss", "flip_rate", "slow_rms")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nccl_worker(rank: int, world: int, port: int, spec_json: str, out_dir: str) -> None:
    import torch.distributed as dist

    from fsg_core.spec import TrainSpec
    from fsg_core.train import fit

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fit(TrainSpec.model_validate_json(spec_json), device=torch.device("cuda", rank))
        torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two ranks needs two GPUs")
def test_two_nccl_ranks_training_fsg_stay_bit_identical(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from fsg_core.spec import TrainSpec
    from tests.conftest import tiny_spec_dict

    spec = TrainSpec.model_validate(
        tiny_spec_dict(
            {"name": "fsg", "kernel": "fused"}, epochs=2, batch_size=32, max_steps_per_epoch=4, device="cuda"
        )
    )
    os.environ.setdefault("NCCL_DEBUG", "WARN")
    mp.spawn(_nccl_worker, args=(2, _free_port(), spec.model_dump_json(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

"""Benchmark every registered estimator on the training device: step time and peak memory.

    python -m bench.gpu [--device auto|cuda|cpu] [--quick] [--json FILE] [--precision fp32|bf16|fp16] [--resnet18]
                        [--kernels-only] [--skip-kernels]

Part 1 (kernels): FSG's temporal slow net alone, forward + backward over ResNet-20's 270,896 binary
weights with a full history (K = 5), ``lite`` and ``paper`` sizes: the fused kernel of the device
(Triton on CUDA, C++ on a CPU) against the PyTorch path (``kernel: torch``; on CUDA with
``mamba_ssm``'s selective scan too when it is installed). Mean of timed repetitions after warm-up.
NCCL: an all-reduce between two processes when two GPUs are there (one process otherwise).

Part 2 (training):
W1A32 ResNet-20 (and ResNet-18 with ``--resnet18``) on CIFAR-shaped synthetic batches (3x32x32,
batch 128), one run per estimator in the registry (``fsg_core.estimators.names()``, default
hyperparameters, so a new estimator appears by itself), through the real training loop (``fit``).
Warm-up epochs are excluded: FSG's history fills and ``torch.compile`` runs in them. On CUDA, step
times come from CUDA events (the loop synchronizes every step) and peak memory from
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on a CPU both are measured as
``bench.estimators`` does (a separate run for the resident-set peak). Every run is its own process.
Ratios are to STE in the same invocation. Prints a table and writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from bench.estimators import COST_EXTRA, cifar_cost_spec, cost_table_view, measure_cost, measure_run, with_ratios
from bench.output import add_output_options, log, read_report, write_json

KERNEL_REPS, KERNEL_WARMUP = 10, 3


def resnet20_binary_sizes() -> list[int]:
    """Weights per binary layer of W1A32 ResNet-20 (CIFAR-shaped input, 10 classes)."""
    from fsg_core.binary import binary_layers
    from fsg_core.spec import TrainSpec
    from fsg_core.train import build_components

    spec = TrainSpec.model_validate(cifar_cost_spec({"name": "ste"}, 1, device="cpu"))
    return [layer.weight.numel() for _, layer in binary_layers(build_components(spec).model)]


def _time_slow_net(net: Any, history: Any, tokens: Any, device: str, reps: int) -> float:
    """Mean seconds of one forward + backward of ``net`` (CUDA events on a GPU)."""
    import torch

    def once() -> None:
        net(history, tokens).sum().backward()

    for _ in range(KERNEL_WARMUP):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            once()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t0) / reps


def kernel_rows(device: str, quick: bool, log: Any) -> list[dict[str, Any]]:
    """Slow net forward + backward per preset and path (fused kernel, PyTorch, PyTorch + mamba_ssm)."""
    import torch

    from fsg_core.estimators.fsg import PRESETS
    from fsg_core.estimators.fsg.slow_net import SlowNet, has_mamba_kernels

    sizes = resnet20_binary_sizes()
    gen = torch.Generator().manual_seed(0)
    history = (1e-3 * torch.randn(5, sum(sizes), generator=gen)).to(device)
    paths = ["fused", "torch"] + (["torch+mamba_ssm"] if device == "cuda" and has_mamba_kernels() else [])
    rows = []
    for preset in ("lite", "paper"):
        for path in paths:
            if device == "cpu" and preset == "paper" and path == "torch" and quick:
                continue  # ~30 s a repetition on two cores
            torch.manual_seed(0)
            net = SlowNet(list(sizes), kernel="fused" if path == "fused" else "torch", **PRESETS[preset]).to(device)
            assert net.ssm is not None
            net.ssm.use_kernels = path == "torch+mamba_ssm"
            tokens = torch.randn(len(sizes), 1, device=device, requires_grad=True)
            reps = 2 if device == "cpu" and preset == "paper" else (3 if quick else KERNEL_REPS)
            seconds = _time_slow_net(net, history, tokens, device, reps)
            backend = net.backend(history.device)
            rows.append({"preset": preset, "path": path, "backend": backend.name if backend else "pytorch",
                         "fwd_bwd_s": seconds, "reps": reps})  # fmt: skip
            log(f"  slow net {preset:5s} {path:16s} {seconds * 1000:.1f} ms")
    return rows


def nccl_row(log: Any) -> dict[str, Any]:
    """An NCCL all-reduce of 64 MiB between two processes (one per GPU), or within one when one GPU is there."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    world = min(2, torch.cuda.device_count())
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_nccl_worker, args=(rank, world, port, queue)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    results = [queue.get() for _ in range(world)] if not queue.empty() else []
    row = {"world": world, "ok": len(results) == world and all(r.get("ok") for r in results)}
    if results:
        row["allreduce_64mib_s"] = max(r.get("seconds", 0.0) for r in results)
    log(f"  nccl world {world}: {row}")
    return row


def _nccl_worker(rank: int, world: int, port: int, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    try:
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        x = torch.full((16 * 2**20,), float(rank + 1), device="cuda")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        expected = sum(range(1, world + 1)) * world**10
        queue.put({"ok": bool(torch.allclose(x[:4], torch.full((4,), float(expected), device="cuda"))),
                   "seconds": (time.perf_counter() - t0) / 10})  # fmt: skip
        dist.destroy_process_group()
    except Exception as exc:  # reported, not raised: the bench goes on
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


# Steps per epoch; warm-up epochs are added until they hold WARMUP_STEPS steps, then one epoch is
# measured (its first step, after an evaluation, is left out). FSG's history fills in 5 steps and its
# slow net is compiled at the 6th, so 6 is the least that measures its steady state.
STEPS, QUICK_STEPS, WARMUP_STEPS = 10, 6, 6


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model and core count."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


# FSG variants beside the defaults: the paper-size slow net, the PyTorch path, a slow gradient every 4 steps.
FSG_VARIANTS: dict[str, dict[str, Any]] = {
    **COST_EXTRA,
    "fsg_torch": {"name": "fsg", "kernel": "torch"},
    "fsg_every4": {"name": "fsg", "slow_every": 4},
}


def estimators(device: str, quick: bool, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every registered estimator with its defaults; on a GPU (not quick) also the FSG variants.
    ``only`` picks keys among both (STE always runs: every ratio is to it)."""
    from fsg_core.estimators import names

    found: dict[str, dict[str, Any]] = {"ste": {"name": "ste"}}  # first: every ratio is to it
    found |= {name: {"name": name} for name in names()}
    if only:
        unknown = [n for n in only if n not in found and n not in FSG_VARIANTS]
        if unknown:
            raise SystemExit(f"--only: unknown {unknown}; choose from {list(found) + list(FSG_VARIANTS)}")
        return {"ste": found["ste"]} | {n: (found | FSG_VARIANTS)[n] for n in only if n != "ste"}
    return found | (FSG_VARIANTS if device == "cuda" and not quick else {})


def refusal(spec: dict[str, Any]) -> str | None:
    """Why ``TrainSpec`` refuses ``spec`` (fp16 with a learned estimator), or None."""
    from pydantic import ValidationError

    from fsg_core.spec import TrainSpec

    try:
        TrainSpec.model_validate(spec)
    except ValidationError as exc:
        return "skipped: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return None


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Measure every (architecture, estimator) pair; returns the JSON document."""
    import torch

    from fsg_core.train import resolve_device

    try:
        device = resolve_device(args.device).type  # auto: cuda when available
    except ValueError as exc:
        raise SystemExit(f"--device {args.device}: {exc}") from None
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    warmup = args.warmup_epochs if args.warmup_epochs is not None else -(-WARMUP_STEPS // steps)
    archs = ["resnet20"] + (["resnet18"] if args.resnet18 else [])
    meta = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "input_shape": [3, args.image_size, args.image_size],
        "threads": args.threads,
        "quick": args.quick,
        "steps_per_epoch": steps,
        "warmup_epochs": warmup,
    }
    kernels = [] if args.skip_kernels else kernel_rows(device, args.quick, log)
    nccl = nccl_row(log) if device == "cuda" and not args.skip_kernels else {"skipped": "not on CUDA"}
    if args.kernels_only:
        return {"meta": meta, "kernels": kernels, "nccl": nccl, "rows": []}
    rows = []
    for arch in archs:
        cost: dict[str, dict[str, Any]] = {}
        for name, est in estimators(device, args.quick, [n for n in args.only.split(",") if n]).items():
            spec = cifar_cost_spec(
                est,
                steps,
                arch=arch,
                epochs=warmup + 1,
                batch_size=args.batch_size,
                image_size=args.image_size,
                device=device,
                precision=args.precision,
            )
            t0 = time.time()
            skipped = refusal(spec)
            if skipped:
                cost[name] = {"error": skipped}
            elif args.in_process:
                torch.set_num_threads(args.threads)
                cost[name] = measure_run(json.dumps(spec), warmup)
            else:
                # The CUDA allocator's peak is exact in the timed run; a CPU needs its own memory run.
                cost[name] = measure_cost(spec, args.threads, warmup, memory_run=device != "cuda")
            step = cost[name].get("step_time_s")
            log(
                f"  {arch} {name:12s} step {'-' if step is None else f'{step * 1000:.0f} ms'} ({time.time() - t0:.0f}s)"
            )
        for name, row in with_ratios(cost).items():
            rows.append(
                {
                    "arch": arch,
                    "estimator": name,
                    **{k: row.get(k) for k in ("step_time_s", "peak_mem_bytes", "step_time_vs_ste", "peak_mem_vs_ste")},
                    **({"error": row["error"]} if "error" in row else {}),
                }
            )
    return {"meta": meta, "kernels": kernels, "nccl": nccl, "rows": rows}


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    meta = result["meta"]
    console = Console(width=160)
    console.print(f"bench.gpu on {meta['device']}: {meta['device_name']}, torch {meta['torch']}")
    if result.get("kernels"):
        table = Table(title="FSG slow net, forward + backward, ResNet-20 (270,896 weights, K = 5)")
        for col in ("preset", "path", "backend", "fwd + bwd", "vs fused"):
            table.add_column(col, justify="right" if col in ("fwd + bwd", "vs fused") else "left")
        fused = {r["preset"]: r["fwd_bwd_s"] for r in result["kernels"] if r["path"] == "fused"}
        for r in result["kernels"]:
            ratio = r["fwd_bwd_s"] / fused[r["preset"]] if fused.get(r["preset"]) else None
            table.add_row(r["preset"], r["path"], r["backend"], f"{r['fwd_bwd_s'] * 1000:.1f} ms",
                          f"{ratio:.2f}x" if ratio else "-")  # fmt: skip
        console.print(table)
    if result.get("nccl"):
        console.print(f"NCCL: {result['nccl']}")
    for arch in dict.fromkeys(row["arch"] for row in result["rows"]):
        cost = {row["estimator"]: row for row in result["rows"] if row["arch"] == arch}
        shape = "x".join(map(str, meta["input_shape"]))
        title = (
            f"W1A32 {arch}, synthetic {shape}, batch {meta['batch_size']}, {meta['precision']}\n{meta['device_name']}"
        )
        console.print(cost_table_view(cost, title, Table))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="one warm-up and one measured epoch of 6 steps")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--resnet18", action="store_true", help="also ResNet-18 (slow on a CPU)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per run")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"steps per epoch (default {STEPS}, quick {QUICK_STEPS})"
    )
    parser.add_argument(
        "--warmup-epochs", type=int, default=None, help=f"unmeasured epochs (default: enough for {WARMUP_STEPS} steps)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--in-process", action="store_true", help="run every estimator in this process (smoke tests; noisier memory)"
    )
    parser.add_argument("--only", default="", help="comma-separated estimators / FSG variants (default: all)")
    parser.add_argument("--kernels-only", action="store_true", help="only the slow-net kernels and NCCL")
    parser.add_argument("--skip-kernels", action="store_true", help="only the training runs")
    add_output_options(parser, markdown=False)
    args = parser.parse_args(argv)
    if args.report:
        result = read_report(args.report)
        print_report(result)
        return result
    result = run(args, log)
    print_report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""Benchmark every registered estimator on the training device: step time and peak memory.

    python -m bench.gpu [--device auto|cuda|cpu] [--quick] [--json FILE] [--precision fp32|bf16|fp16] [--resnet18]

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
import sys
import time
from pathlib import Path
from typing import Any

from bench.estimators import COST_EXTRA, cifar_cost_spec, cost_table_view, measure_cost, measure_run, with_ratios

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


def estimators(device: str, quick: bool) -> dict[str, dict[str, Any]]:
    """Every registered estimator with its defaults; on a GPU (not quick) also the paper-size FSG slow net."""
    from fsg_core.estimators import names

    found: dict[str, dict[str, Any]] = {"ste": {"name": "ste"}}  # first: every ratio is to it
    found |= {name: {"name": name} for name in names()}
    return found | (COST_EXTRA if device == "cuda" and not quick else {})


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
    rows = []
    for arch in archs:
        cost: dict[str, dict[str, Any]] = {}
        for name, est in estimators(device, args.quick).items():
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
    return {"meta": meta, "rows": rows}


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    meta = result["meta"]
    console = Console(width=160)
    console.print(f"bench.gpu on {meta['device']}: {meta['device_name']}, torch {meta['torch']}")
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
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
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
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run(args, log)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

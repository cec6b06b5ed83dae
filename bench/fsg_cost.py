"""What FSG costs next to STE: mean and median step time and peak memory, measured side by side.

    python -m bench.fsg_cost [--quick] [--reps N] [--json FILE] [--markdown] [--only a,b]

W1A32 ResNet-20 through the real training loop (``fit``), on two inputs: CIFAR-shaped synthetic
batches (3x32x32, batch 128) and scikit-learn's digits (1x8x8, batch 64). Variants: STE; FSG ``lite``
and ``paper`` with ``slow_every`` 1 and 4 (fused kernel); FSG ``lite`` on the PyTorch path
(``kernel: torch``, the reference). Each run is its own process; the variants run in turns, ``--reps``
rounds of them, so that a slow minute of the machine lands on all of them. Step times are every
measured step of every round (a warm-up epoch excluded: FSG's history fills and torch.compile runs
there; the first step of each epoch, after an evaluation, too): the **mean** is what a user pays, the
median is shown beside it (with ``slow_every`` > 1 it shows only the cheap steps), and so is each round's
ratio to the STE run just before it (how much the machine's own drift moves the figure). Peak memory comes from
a separate run per variant (``bench.estimators`` says how). Ratios are to STE on the same input.

What it cannot see: the first epoch (kernel build, compilation), evaluation, data loading beyond the
loop's own, and other processes on the machine. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.estimators import cifar_cost_spec, run_child
from bench.output import TableConsole, add_output_options, log, read_report, write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "ste": {"name": "ste"},
    "fsg": {"name": "fsg"},
    "fsg_every4": {"name": "fsg", "slow_every": 4},
    "fsg_paper": {"name": "fsg", "preset": "paper"},
    "fsg_paper_every4": {"name": "fsg", "preset": "paper", "slow_every": 4},
    "fsg_torch": {"name": "fsg", "kernel": "torch"},
}
# Steps per epoch; the first of each measured epoch follows an evaluation and is left out, so the rest
# is a multiple of 4: every slow_every-4 cycle measured whole, whatever step it starts on.
STEPS = {"cifar": 9, "digits": 17}
PAPER_STEPS = {"cifar": 5, "digits": 9}
WARMUP_STEPS = 6  # FSG's history fills in 5 steps; the compiled PyTorch path compiles at the 6th


def digits_cost_spec(estimator: dict[str, Any], steps: int, epochs: int) -> dict[str, Any]:
    """A W1A32 ResNet-20 run on the real digits data (8x8, batch 64) whose epochs are ``steps`` steps."""
    return {
        "model": {"arch": "resnet20"},
        "data": {"dataset": "digits", "crop_padding": 1, "flip": False, "val_fraction": 0.0, "test_fraction": 0.05},
        "estimator": estimator,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "schedule": {"kind": "constant", "milestones": []},
        "epochs": epochs,
        "batch_size": 64,
        "max_steps_per_epoch": steps,
        "seed": 0,
    }


def spec_for(shape: str, estimator: dict[str, Any], steps: int) -> tuple[dict[str, Any], int]:
    """The run and the epoch from which it is measured (warm-up epochs hold at least WARMUP_STEPS steps)."""
    warmup = -(-WARMUP_STEPS // steps)
    if shape == "cifar":
        return cifar_cost_spec(estimator, steps, epochs=warmup + 1), warmup
    return digits_cost_spec(estimator, steps, warmup + 1), warmup


def _steps(shape: str, name: str, quick: bool) -> int:
    steps = (PAPER_STEPS if "paper" in name else STEPS)[shape]
    return 5 if quick else steps  # quick: 4 measured steps, still one slow_every-4 cycle


def measure(shape: str, names: list[str], reps: int, threads: int, quick: bool, log: Any) -> dict[str, Any]:
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds: dict[str, list[float]] = {n: [] for n in names}  # each round's mean step
    errors: dict[str, str] = {}
    memory: dict[str, int | None] = {}
    for rep in range(reps):
        for name in names:
            if name in errors:
                continue
            spec, warmup = spec_for(shape, VARIANTS[name], _steps(shape, name, quick))
            t0 = time.time()
            res = run_child(spec, warmup, threads)
            if "error" in res:
                errors[name] = res["error"]
                log(f"  {shape} {name}: {res['error']}")
                continue
            times[name].extend(res["step_times_s"])
            rounds[name].append(statistics.fmean(res["step_times_s"]))
            log(f"  {shape} {name:17s} round {rep + 1}: mean {statistics.fmean(res['step_times_s']) * 1e3:.1f} ms "
                f"({time.time() - t0:.0f}s)")  # fmt: skip
    for name in names:
        if name in errors:
            continue
        spec, warmup = spec_for(shape, VARIANTS[name], _steps(shape, name, quick))
        memory[name] = run_child(spec, warmup, threads, memory=True).get("peak_mem_bytes")
        log(f"  {shape} {name:17s} peak memory {memory[name]}")
    rows = {}
    for name in names:
        if name in errors:
            rows[name] = {"error": errors[name]}
            continue
        ts = times[name]
        rows[name] = {
            "step_time_s": statistics.fmean(ts),
            "step_time_median_s": statistics.median(ts),
            "steps_measured": len(ts),
            "round_means_s": rounds[name],
            "peak_mem_bytes": memory.get(name),
        }
    base = rows.get("ste", {})
    for row in rows.values():
        for key, ratio_key in (("step_time_s", "step_time_vs_ste"), ("peak_mem_bytes", "peak_mem_vs_ste")):
            if row.get(key) and base.get(key):
                row[ratio_key] = row[key] / base[key]
        # Each round against the STE run just before it: how much the machine moved the ratio.
        pairs = zip(row.get("round_means_s", []), base.get("round_means_s", []), strict=False)
        row["round_ratios"] = [mine / ste for mine, ste in pairs]
    return rows


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's CPU goals, each with its measured ratio and whether it is met."""

    def row(shape: str, name: str) -> dict[str, Any]:
        return result["shapes"].get(shape, {}).get(name, {})

    checks = [
        ("CIFAR shape, lite, slow_every 1: mean step <= 1.2x STE", row("cifar", "fsg").get("step_time_vs_ste"), 1.2),
        ("CIFAR shape, lite, slow_every 1: memory <= 1.1x STE", row("cifar", "fsg").get("peak_mem_vs_ste"), 1.1),
        ("CIFAR shape, paper preset: mean step <= 6x STE (CPU)", row("cifar", "fsg_paper").get("step_time_vs_ste"), 6),
        ("digits, lite, slow_every 1: mean step <= 4x STE", row("digits", "fsg").get("step_time_vs_ste"), 4),
    ]
    return [{"goal": g, "ratio": r, "met": None if r is None else r <= limit} for g, r, limit in checks]


def print_report(result: dict[str, Any], markdown: bool) -> None:
    meta = result["meta"]
    console = TableConsole(markdown)
    titles = {"cifar": "CIFAR-shaped input (synthetic 3x32x32, batch 128)", "digits": "digits (1x8x8, batch 64)"}
    for shape, rows in result["shapes"].items():
        title = f"W1A32 ResNet-20, {titles[shape]}, {meta['threads']} threads, {meta['reps']} rounds"
        table = console.table(title)
        for col in ("variant", "mean step", "median step", "vs STE (mean)", "rounds", "peak memory", "vs STE"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, r in rows.items():
            if "error" in r:
                table.add_row(name, r["error"], "", "", "", "", "")
                continue
            mem = r.get("peak_mem_bytes")
            table.add_row(
                name,
                f"{r['step_time_s'] * 1e3:.1f} ms",
                f"{r['step_time_median_s'] * 1e3:.1f} ms",
                f"{r['step_time_vs_ste']:.2f}x" if r.get("step_time_vs_ste") else "-",
                " ".join(f"{x:.2f}" for x in r.get("round_ratios", [])) or "-",
                f"{mem / 2**20:.0f} MiB" if mem else "-",
                f"{r['peak_mem_vs_ste']:.2f}x" if r.get("peak_mem_vs_ste") else "-",
            )
        console.print(table)
    for g in result["goals"]:
        state = "-" if g["met"] is None else ("met" if g["met"] else "NOT met")
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        print(f"{'- ' if markdown else ''}{g['goal']}: {ratio}, {state}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 measured steps a round, two rounds")
    parser.add_argument("--reps", type=int, default=None, help="rounds of every variant (default 3, quick 2)")
    parser.add_argument("--only", default="", help=f"comma-separated variants of {list(VARIANTS)} (ste always runs)")
    parser.add_argument("--shapes", default="cifar,digits", help="cifar, digits or both")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        result = read_report(args.report)
        print_report(result, args.markdown)
        return result
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    names = ["ste"] + [n for n in names if n != "ste"]
    reps = args.reps or (2 if args.quick else 3)

    import torch

    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "reps": reps,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d"),
    }
    shapes = [s for s in args.shapes.split(",") if s]
    result: dict[str, Any] = {"meta": meta, "shapes": {}}
    for shape in shapes:
        result["shapes"][shape] = measure(shape, names, reps, args.threads, args.quick, log)
    result["goals"] = goals(result)
    print_report(result, args.markdown)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

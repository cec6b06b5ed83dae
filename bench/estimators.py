"""Benchmark every estimator: accuracy on digits (W1A32 ResNet-20) and cost on CIFAR-shaped inputs.

    python -m bench.estimators [--quick] [--json FILE] [--seeds N] [--epochs N] [--only a,b]

Part 1 (accuracy): per seed, a full-precision pre-training of ResNet-20 on scikit-learn's digits with
that seed's own split (its training set never holds the seed's validation images), then binarized
(W1A32) training from it with every estimator, under Adam and under plain SGD: final train loss, best
validation accuracy, last-k test accuracy (k at most a third of the epochs), and step time and peak
memory as ratios to STE measured in the same run.

Part 2 (cost): step time and peak memory per estimator on CIFAR-shaped synthetic data (3x32x32,
batch 128), where the base network costs what it costs on CIFAR (FSG_SPEC §7: on 8x8 digits the
base step is ~16x cheaper and every hypernetwork looks expensive).

Every run is its own process, so peak memory and torch.compile caches don't leak between runs.
Step times are means over the measured steps of normal runs (the median is kept beside it in the JSON:
it hides the expensive steps of ``slow_every`` > 1); on CUDA they come from events. Memory comes from
separate short runs with glibc's mmap threshold lowered so that the resident set follows live memory: the peak resident
set growth during the measured epoch (``VmHWM`` after a reset through ``/proc/self/clear_refs``,
minus the resident set before it), or on a GPU the CUDA allocator's peak during the measured epoch
(``max_memory_allocated`` after ``reset_peak_memory_stats``: weights, optimizer and estimator state included).
Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.output import TableConsole, add_output_options, log, read_report, write_json

ESTIMATORS: dict[str, dict[str, Any]] = {
    "ste": {"name": "ste"},
    "clipped_ste": {"name": "clipped_ste"},
    "approx_sign": {"name": "approx_sign"},
    "ede": {"name": "ede"},
    "reste": {"name": "reste"},
    "fda": {"name": "fda"},
    "biper": {"name": "biper"},
    "metaquant_multifc": {"name": "metaquant", "variant": "multifc"},
    "metaquant_lstmfc": {"name": "metaquant", "variant": "lstmfc", "hidden": 20},
    "fsg": {"name": "fsg"},
    "fsg_mix": {"name": "fsg", "update": "mix"},
    "fsg_gru": {"name": "fsg", "slow_net": "gru"},
    "fsg_every8": {"name": "fsg", "slow_every": 8},
}
SAME_AS_STE_UNDER_DOREFA = {"clipped_ste"}
# Cost-only variants (part 2): the paper-size slow net on CPU is reported, not trained to the end.
COST_EXTRA: dict[str, dict[str, Any]] = {"fsg_paper": {"name": "fsg", "preset": "paper"}}

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adam": {"name": "adam", "lr": 1e-3},
    "sgd": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
}


# --------------------------------------------------------------------------------------------- child
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_run(spec_json: str, measure_from_epoch: int) -> dict[str, Any]:
    """Train ``spec_json`` in this process; step times and peak memory of the binarized epochs from
    ``measure_from_epoch`` on (earlier epochs warm up; the first step of each epoch, which follows an
    evaluation, is left out)."""
    import torch

    from fsg_core.reporting import Reporter
    from fsg_core.spec import TrainSpec
    from fsg_core.train import fit

    spec = TrainSpec.model_validate_json(spec_json)
    cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())

    class Meter(Reporter):
        def __init__(self) -> None:
            self.base = 0
            self.epoch = 0
            self.peaks: list[int] = []
            # (start, end) stamps of measured steps: perf_counter seconds, or CUDA events read at the end
            self.intervals: list[tuple[Any, Any]] = []
            self.t: Any = None

        def _start(self) -> None:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.base = 0  # every allocated byte is this run's tensors: the whole peak counts
            else:
                self.base = _rss_bytes()
                _reset_hwm()

        def on_phase(self, phase: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
            if phase == "binary" and measure_from_epoch == 0:
                self._start()

        def on_step(self, phase: str, epoch: int, step: int, loss: Any) -> None:
            if cuda:
                now: Any = torch.cuda.Event(enable_timing=True)
                now.record()
            else:
                now = time.perf_counter()
            if phase == "binary" and epoch >= measure_from_epoch and step > 0:
                self.intervals.append((self.t, now))
            self.t = now

        def step_times(self) -> list[float]:
            if cuda:
                torch.cuda.synchronize()
                return [start.elapsed_time(end) / 1000 for start, end in self.intervals]
            return [end - start for start, end in self.intervals]

        def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
            if metrics["phase"] != "binary":
                return
            if metrics["epoch"] == measure_from_epoch:  # the next epoch is measured
                self._start()
            elif metrics["epoch"] > measure_from_epoch:
                peak = torch.cuda.max_memory_allocated() if cuda else _hwm_bytes()
                self.peaks.append(peak - self.base)

    meter = Meter()
    result = fit(spec, meter)
    step_times = meter.step_times()
    return {
        "summary": result.summary,
        "history": result.history,
        # The mean is what a user pays; a median hides the expensive steps (slow_every > 1).
        "step_time_s": statistics.fmean(step_times) if step_times else None,
        "step_time_median_s": statistics.median(step_times) if step_times else None,
        "step_times_s": step_times,
        "peak_mem_bytes": max(meter.peaks) if meter.peaks else None,
    }


def run_child(spec: dict[str, Any], measure_from_epoch: int, threads: int, *, memory: bool = False) -> dict[str, Any]:
    """Run one spec in a fresh process. ``memory=True`` makes the resident set follow live memory
    (large tensors go straight to mmap and back to the OS when freed, instead of staying in glibc's
    caches); that slows every allocation, so timings come from runs without it."""
    env = dict(os.environ)
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"spec": spec, "measure_from_epoch": measure_from_epoch}, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.estimators", "--child", fh.name],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cost(
    spec: dict[str, Any], threads: int, measure_from_epoch: int = 2, *, memory_run: bool = True
) -> dict[str, Any]:
    """Step time (a normal run) and peak memory (a run with memory tracking) of a short spec.

    The default three epochs: the first two warm up (FSG's history fills after 5 steps, then
    torch.compile runs once) and the third is measured. ``memory_run=False`` takes the memory from
    the timed run too: exact for the CUDA allocator's peak, glibc's caches included on a CPU.
    """
    timed = run_child(spec, measure_from_epoch, threads)
    sized = run_child(spec, measure_from_epoch, threads, memory=True) if memory_run else timed
    return {
        "step_time_s": timed.get("step_time_s"),
        "step_time_median_s": timed.get("step_time_median_s"),
        "peak_mem_bytes": sized.get("peak_mem_bytes"),
        **({"error": timed["error"]} if "error" in timed else {}),
    }


def cifar_cost_spec(
    estimator: dict[str, Any],
    steps: int,
    *,
    arch: str = "resnet20",
    epochs: int = 3,
    batch_size: int = 128,
    image_size: int = 32,
    **overrides: Any,
) -> dict[str, Any]:
    """A W1A32 run on CIFAR-shaped synthetic data whose epochs are ``steps`` steps (cost, not accuracy)."""
    return {
        "model": {"arch": arch},
        "data": {
            "dataset": "synthetic",
            "synthetic_shape": [3, image_size, image_size],
            "synthetic_samples": batch_size * steps * 2,
            # accuracy is not the point: no validation split and a small test split keep evaluation short
            "val_fraction": 0.0,
            "test_fraction": 0.05,
        },
        "estimator": estimator,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "schedule": {"kind": "constant", "milestones": []},
        "epochs": epochs,
        "batch_size": batch_size,
        "max_steps_per_epoch": steps,
        "seed": 0,
        **overrides,
    }


# -------------------------------------------------------------------------------------------- parent
DIGITS_DATA: dict[str, Any] = {"dataset": "digits", "crop_padding": 1, "flip": False}


def digits_spec(
    estimator: dict[str, Any], optimizer: dict[str, Any], seed: int, epochs: int, init: str, forward: str = "dorefa"
) -> dict:
    return {
        "model": {"arch": "resnet20"},
        "data": dict(DIGITS_DATA),
        "binarize": {"weights": True, "activations": False, "forward": forward},
        "estimator": estimator,
        "optimizer": optimizer,
        "schedule": {"kind": "step", "milestones": [max(1, int(epochs * 2 / 3))], "gamma": 0.1},
        "epochs": epochs,
        "batch_size": 64,
        "seed": seed,
        "init": {"pretrain_epochs": 0, "checkpoint": init},
    }


def pretrain_spec(epochs: int, seed: int) -> dict[str, Any]:
    """Full-precision ResNet-20 on digits for the binarized runs of ``seed``: the same data section and
    seed as theirs, so its training set is theirs and none of their validation images leaks into it."""
    return {
        "model": {"arch": "resnet20"},
        "data": dict(DIGITS_DATA),
        "binarize": {"weights": False},
        "estimator": {"name": "ste"},
        "optimizer": {"name": "adam", "lr": 3e-3},
        "schedule": {"kind": "cosine", "milestones": []},
        "epochs": epochs,
        "batch_size": 64,
        "seed": seed,
    }


def _pretrain(path: Path, epochs: int, threads: int, seed: int) -> dict[str, Any]:
    spec = pretrain_spec(epochs, seed)
    code = (
        "import json,sys,torch;from fsg_core.spec import TrainSpec;from fsg_core.train import fit;"
        "r=fit(TrainSpec.model_validate_json(sys.argv[1]));torch.save(r.model.state_dict(),sys.argv[2]);"
        "print(json.dumps(r.history[-1]))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec), str(path)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _std(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def accuracy_table(
    names: list[str], seeds: int, epochs: int, pretrain_epochs: int, threads: int, log: Any, forward: str = "dorefa"
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    fp: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inits = {seed: Path(tmp) / f"fp_resnet20_digits_seed{seed}.pt" for seed in range(seeds)}
        for seed, init in inits.items():
            t0 = time.time()
            fp[seed] = _pretrain(init, pretrain_epochs, threads, seed)
            val = fp[seed]["val_acc"]
            log(
                f"FP pre-training of seed {seed}: {pretrain_epochs} epochs, val_acc {val:.3f} ({time.time() - t0:.0f}s)"
            )
        for opt_name, opt in OPTIMIZERS.items():
            for name in names:
                runs = []
                for seed in range(seeds):
                    t0 = time.time()
                    spec = digits_spec(ESTIMATORS[name], opt, seed, epochs, str(inits[seed]), forward)
                    res = run_child(spec, 1, threads)
                    runs.append(res)
                    acc = res.get("summary", {}).get("best_val_acc")
                    log(f"  {opt_name:4s} {name:18s} seed {seed}: best_val {_fmt(acc)} ({time.time() - t0:.0f}s)")
                results[f"{opt_name}/{name}"] = runs
        for name in names:
            short = digits_spec(ESTIMATORS[name], OPTIMIZERS["adam"], 0, 3, str(inits[0]), forward)
            short["max_steps_per_epoch"] = 8
            memory[name] = measure_cost(short, threads).get("peak_mem_bytes")
            log(f"  memory {name:18s} {_fmt(memory[name], ',')} bytes")
    return {"fp_pretrain": fp, "runs": results, "peak_mem_bytes": memory}


def cost_table(names: list[str], steps: int, threads: int, log: Any) -> dict[str, Any]:
    results = {}
    for name in names:
        t0 = time.time()
        res = measure_cost(cifar_cost_spec({**ESTIMATORS, **COST_EXTRA}[name], steps), threads)
        results[name] = res
        log(f"  cost {name:18s} step {_fmt(res.get('step_time_s'))} s ({time.time() - t0:.0f}s)")
    return results


def with_ratios(cost: dict[str, dict[str, Any]], base: str = "ste") -> dict[str, dict[str, Any]]:
    """Each row of ``cost`` plus ``step_time_vs_ste`` and ``peak_mem_vs_ste`` (None where a figure is missing)."""

    def ratio(row: dict[str, Any], key: str) -> float | None:
        value, reference = row.get(key), cost.get(base, {}).get(key)
        return value / reference if value and reference else None

    return {
        name: {**row, "step_time_vs_ste": ratio(row, "step_time_s"), "peak_mem_vs_ste": ratio(row, "peak_mem_bytes")}
        for name, row in cost.items()
    }


def cost_table_view(cost: dict[str, dict[str, Any]], title: str, table_class: Any) -> Any:
    """A table of step time and peak memory per estimator, with ratios to STE (``with_ratios``)."""
    table = table_class(title=title)
    for col in ("estimator", "mean step", "vs STE", "peak memory", "vs STE"):
        table.add_column(col, justify="right" if col != "estimator" else "left")
    for name, res in with_ratios(cost).items():
        t, mem, t_ratio, mem_ratio = (
            res.get(k) for k in ("step_time_s", "peak_mem_bytes", "step_time_vs_ste", "peak_mem_vs_ste")
        )
        table.add_row(
            name,
            f"{t * 1000:.0f} ms" if t else res.get("error", "-"),
            f"{t_ratio:.2f}x" if t_ratio else "-",
            f"{mem / 2**20:.0f} MiB" if mem else "-",
            f"{mem_ratio:.2f}x" if mem_ratio else "-",
        )
    return table


def print_report(
    acc: dict[str, Any] | None, cost: dict[str, Any] | None, meta: dict[str, Any], markdown: bool = False
) -> None:
    console = TableConsole(markdown)
    Table = console.Table
    console.print(f"bench.estimators {meta}")
    if acc:
        for opt_name in OPTIMIZERS:
            base = acc["runs"].get(f"{opt_name}/ste", [])
            base_time = _mean([r.get("step_time_s") for r in base])
            base_mem = acc["peak_mem_bytes"].get("ste")
            forward = meta.get("forward", "dorefa")
            table = Table(
                title=f"W1A32 ResNet-20 on digits ({forward}), {opt_name}, {meta['seeds']} seed(s), mean ± std"
            )
            for col in ("estimator", "final train loss", "best val acc", "last-k test acc", "step", "memory"):
                table.add_column(col, justify="right" if col != "estimator" else "left")
            for key, runs in acc["runs"].items():
                if not key.startswith(f"{opt_name}/"):
                    continue
                ok = [r for r in runs if "summary" in r]
                if not ok:
                    table.add_row(key.split("/", 1)[1], *["error: " + runs[0].get("error", "?")] + [""] * 4)
                    continue

                def cell(k: str, runs: list[dict[str, Any]] = ok) -> str:
                    m, s = _mean([r["summary"].get(k) for r in runs]), _std([r["summary"].get(k) for r in runs])
                    return _fmt(m) + ("" if s is None else f" ± {s:.3f}")

                t = _mean([r.get("step_time_s") for r in ok])
                mem = acc["peak_mem_bytes"].get(key.split("/", 1)[1])
                table.add_row(
                    key.split("/", 1)[1],
                    cell("final_train_loss"),
                    cell("best_val_acc"),
                    cell("last_k_test_acc"),
                    f"{t * 1000:.0f} ms ({t / base_time:.2f}x)" if t and base_time else "-",
                    f"{mem / 2**20:.0f} MiB ({mem / base_mem:.2f}x)" if mem and base_mem else "-",
                )
            console.print(table)
    if cost:
        title = "Cost on CIFAR-shaped input (synthetic 3x32x32, batch 128, ResNet-20 W1A32)"
        console.print(cost_table_view(cost, title, Table))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer epochs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per estimator and optimizer (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="binarized epochs (default 15, quick 8)")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated estimator keys (default: all)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--cost-steps", type=int, default=None, help="steps per epoch of a cost run (default 6)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--forward",
        choices=["dorefa", "bwn"],
        default="dorefa",
        help="the binarizer of the accuracy runs: dorefa (x = tanh W / max|tanh W|, the MetaQuant/FSG codes') or "
        "bwn (x = W, where closed-form estimators act on W as in their papers)",
    )
    add_output_options(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.report:
        saved = read_report(args.report)
        print_report(saved["accuracy"], saved["cost"], saved["meta"], markdown=args.markdown)
        return

    if args.child:
        job = json.loads(Path(args.child).read_text())
        print(json.dumps(measure_run(json.dumps(job["spec"]), job["measure_from_epoch"])))
        return

    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (8 if args.quick else 15)
    cost_steps = args.cost_steps or (4 if args.quick else 6)
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in ESTIMATORS and n not in COST_EXTRA]
    if unknown:
        parser.error(f"unknown estimator keys {unknown}; choose from {list(ESTIMATORS) + list(COST_EXTRA)}")
    names = [n for n in only if n in ESTIMATORS] or list(ESTIMATORS)
    if "ste" not in names:
        names.insert(0, "ste")  # every ratio is to STE measured in the same run
    cost_names = names + ([n for n in only if n in COST_EXTRA] if only else [] if args.quick else list(COST_EXTRA))

    import torch

    meta = {
        "seeds": seeds,
        "epochs": epochs,
        "pretrain_epochs": args.pretrain_epochs,
        "torch": torch.__version__,
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "forward": args.forward,
    }
    # Under the dorefa forward |x| <= 1 always, so clipped_ste computes exactly what ste does: its accuracy rows
    # would repeat STE's (FSG_SPEC §2). It stays in the cost table, and runs when asked for by name (--only).
    acc_names = names if only or args.forward != "dorefa" else [n for n in names if n not in SAME_AS_STE_UNDER_DOREFA]
    acc = (
        None
        if args.skip_accuracy
        else accuracy_table(acc_names, seeds, epochs, args.pretrain_epochs, args.threads, log, args.forward)
    )
    cost = None if args.skip_cost else cost_table(cost_names, cost_steps, args.threads, log)
    print_report(acc, cost, meta, markdown=args.markdown)
    write_json(args.json, {"meta": meta, "accuracy": acc, "cost": cost})


if __name__ == "__main__":
    main()

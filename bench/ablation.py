"""The FSG ablation, run through the service as study jobs: what each part of FSG is worth.

    python -m bench.ablation [--optimizer adam|sgd|both] [--seeds N] [--epochs N] [--variants A,B] [--quick]
                             [--executor ray_train|ray_task] [--json FILE]

Submits ``examples/study_fsg_ablation.json`` (Adam) and/or ``examples/study_fsg_ablation_sgd.json``
(plain SGD) to an ``fsg up`` of its own (a temporary FSG_HOME, a local Ray on this machine's CPUs):
digits W1A32 ResNet-20 from a per-seed full-precision pre-training, STE, ReSTE, MetaQuant-MultiFC
(with the research code's look-ahead value, and with the look-ahead at ``W - lr c M``), FSG and its
ablations (no slow net with alpha unchanged, alpha 0, ``mix``, no LRE, no normalisation, history 1 and 10).
Prints each study's table (means with 95% t intervals, paired differences against STE with a paired
t-test and a sign test) and writes the studies' JSON. ``--quick`` is a smoke run
(2 seeds, 3 epochs of 4 steps): its figures mean nothing. The paper-size slow net is not in the
examples: on 2 CPU cores one run of it costs about as much as the whole study (FSG_SPEC §7).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.output import add_output_options, read_report, write_json
from bench.service import LocalService
from service.cli.study import study_rows, study_table, study_title

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = {"adam": EXAMPLES / "study_fsg_ablation.json", "sgd": EXAMPLES / "study_fsg_ablation_sgd.json"}


def study_spec(
    optimizer: str,
    *,
    seeds: int | None,
    epochs: int | None,
    quick: bool,
    variants: list[str] | None = None,
    executor: str | None = None,
) -> dict[str, Any]:
    """The example study, resized by the command line; ``variants`` keeps those (and the baseline) only;
    ``executor`` runs its trials on Ray Train worker groups (``ray_train``) or in their Tune trials."""
    spec = json.loads(SPECS[optimizer].read_text())
    if executor:
        spec["resources"]["executor"] = executor
    if variants:
        known = [v["name"] for v in spec["study"]["variants"]]
        unknown = sorted(set(variants) - set(known))
        if unknown:
            raise SystemExit(f"--variants: {', '.join(unknown)} not in {SPECS[optimizer].name} ({', '.join(known)})")
        keep = set(variants) | {spec["study"]["baseline"]}
        spec["study"]["variants"] = [v for v in spec["study"]["variants"] if v["name"] in keep]
    if quick:
        seeds, epochs = seeds or 2, epochs or 3
        spec["max_steps_per_epoch"] = 4
        spec["init"]["pretrain_epochs"] = 1
    if seeds is not None:
        spec["study"]["seeds"] = seeds
    if epochs is not None:
        spec["epochs"] = epochs
        spec["schedule"]["milestones"] = [m for m in (int(epochs * 0.6), int(epochs * 0.85)) if 0 < m < epochs]
    return spec


def run(specs: dict[str, dict[str, Any]], console: Console) -> dict[str, Any]:
    service = LocalService()
    try:
        client = service.client
        jobs = {name: client.submit(spec) for name, spec in specs.items()}
        totals = {name: len(s["study"]["variants"]) * s["study"]["seeds"] for name, s in specs.items()}
        t0 = time.monotonic()
        finished: dict[str, dict[str, Any]] = {}
        while len(finished) < len(jobs):
            for name, job in jobs.items():
                if name in finished:
                    continue
                current = client.job(job["id"])
                done = sum(row["trials_done"] for row in client.study(job["id"])["variants"])
                console.log(f"{name}: {current['state']}, {done}/{totals[name]} trials ({time.monotonic() - t0:.0f} s)")
                if current["state"] in ("succeeded", "failed", "cancelled"):
                    finished[name] = current
            time.sleep(30)
        return {
            name: {"job": finished[name], "study": client.study(job["id"]), "wall_s": time.monotonic() - t0}
            for name, job in jobs.items()
        }
    finally:
        service.close()


# The questions of the ablation, each a paired comparison (same seed, same split, same pre-training).
PAIRS = [
    ("fsg", "ste", "does FSG beat STE?"),
    ("fsg", "metaquant_multifc", "does FSG beat MetaQuant (its fast net alone, with MetaQuant's update)?"),
    (
        "metaquant_multifc",
        "metaquant_multifc_proposal",
        "MetaQuant: the research code's value trick vs the look-ahead at W - lr c M",
    ),
    ("fsg", "fsg_no_slow", "does the slow net matter (alpha unchanged, s = 0)?"),
    ("fsg", "fsg_alpha0", "alpha 0.9 vs 0 (the fast term's weight changes too)"),
    ("fsg", "fsg_mix", "update fast (research code) vs mix (paper text)"),
    ("fsg", "fsg_no_lre", "do the layer tokens matter?"),
    ("fsg", "fsg_no_norm", "does normalising the history matter?"),
    ("fsg", "fsg_hist1", "history 5 vs 1"),
    ("fsg", "fsg_hist10", "history 5 vs 10"),
]
PAIR_FIGURES = ("best_val_acc", "test_acc_at_best_val", "final_train_loss")


def pairs(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Each question of ``PAIRS``: the paired differences (a - b) of each figure over the seeds both finished."""
    from service.db.study import paired

    figures: dict[tuple[str, int], dict[str, Any]] = {}
    for trial in study["trials"]:
        config = trial.get("config") or {}
        if trial["state"] == "succeeded" and "variant" in config:
            figures[(config["variant"], int(config["seed"]))] = trial["figures"]
    seeds = range(study["seeds"])
    present = {variant for variant, _ in figures}
    out = []
    for a, b, question in PAIRS:
        if a not in present or b not in present:
            continue  # a study run with --variants answers its own questions only
        row: dict[str, Any] = {"a": a, "b": b, "question": question}
        for figure in PAIR_FIGURES:
            row[figure] = paired(
                [figures.get((a, s), {}).get(figure) for s in seeds],
                [figures.get((b, s), {}).get(figure) for s in seeds],
            )
        out.append(row)
    return out


def pairs_markdown(study: dict[str, Any]) -> str:
    def cell(d: dict[str, Any]) -> str:
        if d["mean"] is None:
            return "-"
        ci = "" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]"
        tp = "-" if d["t_p"] is None else f"{d['t_p']:.3g}"
        return f"{d['mean']:+.4f}{ci}, t p {tp}, {d['wins']}/{d['losses']}"

    lines = ["| question | a - b | best val acc | test @ best val | final train loss |", "|---|---|---|---|---|"]
    for row in pairs(study):
        figures = " | ".join(cell(row[f]) for f in PAIR_FIGURES)
        lines.append(f"| {row['question']} | {row['a']} - {row['b']} | {figures} |")
    return "\n".join(lines)


def markdown(study: dict[str, Any]) -> str:
    """The study's table as GitHub markdown (the README's)."""
    headers, rows = study_rows(study)
    lines = [f"*{study_title(study)}*", "", "| " + " | ".join(headers) + " |"]
    lines.append("|---|" + "---:|" * (len(headers) - 1))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=["adam", "sgd", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the example's, 5)")
    parser.add_argument("--epochs", type=int, default=None, help="binarized epochs (default: the example's, 24)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, 3 epochs of 4 steps")
    parser.add_argument(
        "--variants", default=None, help="comma-separated variant names to run (the baseline always runs)"
    )
    parser.add_argument(
        "--executor",
        choices=["ray_train", "ray_task"],
        default=None,
        help="where each trial trains: a Ray Train worker group, or its Tune trial (default: the example's)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        saved = read_report(args.report)
        for name, result in saved.items():
            print(f"\n{name}: {result['job']['state']}")
            print(markdown(result["study"]) + "\n\n" + pairs_markdown(result["study"]) if args.markdown else "")
            if not args.markdown:
                Console(width=220).print(study_table(result["study"]))
        return
    optimizers = ["adam", "sgd"] if args.optimizer == "both" else [args.optimizer]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    specs = {
        o: study_spec(
            o, seeds=args.seeds, epochs=args.epochs, quick=args.quick, variants=variants, executor=args.executor
        )
        for o in optimizers
    }
    console = Console(stderr=True)
    results = run(specs, console)
    out = Console(file=sys.stdout, width=220)
    for name, result in results.items():
        out.print(f"\n[bold]{name}[/bold]: {result['job']['state']} in {result['wall_s'] / 60:.0f} min")
        out.print(study_table(result["study"]))
    write_json(args.json, results)


if __name__ == "__main__":
    main()

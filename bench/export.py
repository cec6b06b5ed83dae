"""What a deployed model weighs and how fast it answers: file sizes and CPU latency per architecture.

    python -m bench.export [--quick] [--archs a,b] [--threads N] [--json FILE] [--markdown]

For each architecture (resnet20, resnet56, vgg_small, resnet18 at CIFAR's 3x32x32, 10 classes) and
protocol (W1A32: bwn per-channel weights; W1A1: binary activations with a full-precision stem and
classifier), with random weights (neither size nor latency depends on their values):

* sizes: the fp32 state dict (safetensors, what ``torch.save`` of the same network would hold), the
  packed file (``fsg_core.packed``), the ONNX export (``fsg_core.export``) in float32 and ``--fp16``;
* latency of one forward at batch 1 and 64 of: the full-precision network (the same architecture with
  float weights and ReLU/Hardtanh activations, what one would deploy without binarizing), the packed
  model loaded in PyTorch (``load_packed``), and the ONNX file in ONNX Runtime (CPU provider, default
  graph optimisations, its thread pool not spinning between calls). All three get the same thread
  count. They run in three rounds of blocks (10 calls of each at batch 1, 2 at batch 64, one untimed
  call first), so a slow minute of the machine lands on all three; **mean** and median per call.

What it cannot see: ONNX Runtime's session creation (its graph optimisation, done once), model
loading, and any bit-level kernel: all three compute the ±1 weights in float arithmetic, so the binary
networks cost what float ones cost here. The speed of 1-bit inference (XNOR and popcount) needs a BNN
runtime (larq compute engine, daBNN, FINN); what this file shows is what the ONNX export costs next to
PyTorch and what each file weighs. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.output import TableConsole, add_output_options, log, read_report, write_json

ARCHS = ("resnet20", "resnet56", "vgg_small", "resnet18")
PROTOCOLS = {
    "W1A32": {"forward": "bwn", "per_channel": True, "act": None, "keep_first_last_fp": False},
    "W1A1": {"forward": "dorefa", "per_channel": False, "act": {"name": "approx_sign"}, "keep_first_last_fp": True},
}
SHAPE = (3, 32, 32)
ROUNDS = 3
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # CIFAR-10's


def _models(arch: str, protocol: str, work: Path) -> dict[str, Any]:
    """The full-precision network, the packed file and its ONNX exports for ``arch`` under ``protocol``."""
    import torch

    from fsg_core.binary import Binarizer
    from fsg_core.estimators import build_estimator, get
    from fsg_core.export import to_onnx
    from fsg_core.models import LayerFactory, build_model
    from fsg_core.packed import save_packed, state_dict_bytes

    p = PROTOCOLS[protocol]
    torch.manual_seed(0)
    act = build_estimator(get(p["act"]["name"]).Params.model_validate(p["act"])) if p["act"] else None
    factory = LayerFactory(
        binarizer=Binarizer(p["forward"], p["per_channel"]),
        estimator=get("ste")(),
        act_estimator=act,
        keep_first_last_fp=p["keep_first_last_fp"],
    )
    binary = build_model(arch, num_classes=10, in_channels=3, factory=factory).eval()
    # The float twin: same layers, float weights; its activations as the protocol's (Hardtanh for W1A1).
    fp_factory = LayerFactory(act_estimator=act) if act is not None else LayerFactory()
    fp = build_model(arch, num_classes=10, in_channels=3, factory=fp_factory).eval()
    for m in fp.modules():  # LayerFactory() builds no binary layer, but keep the float path explicit
        if hasattr(m, "binarize_activations"):
            m.binarize_activations = False
    packed = work / f"{arch}-{protocol}.packed.safetensors"
    binarize = {
        "weights": True,
        "activations": act is not None,
        "forward": p["forward"],
        "per_channel": p["per_channel"],
        "keep_first_last_fp": p["keep_first_last_fp"],
    }
    packed_bytes = save_packed(
        binary, packed, arch=arch, num_classes=10, in_channels=3, input_shape=SHAPE, mean=MEAN, std=STD,
        binarize=binarize, act_estimator=p["act"],
    )  # fmt: skip
    onnx_fp32, onnx_fp16 = work / f"{arch}-{protocol}.onnx", work / f"{arch}-{protocol}.fp16.onnx"
    return {
        "fp": fp,
        "packed": packed,
        "onnx": onnx_fp32,
        "bytes": {
            "fp32_state_dict": state_dict_bytes(binary),
            "packed": packed_bytes,
            "onnx": to_onnx(packed, onnx_fp32),
            "onnx_fp16": to_onnx(packed, onnx_fp16, fp16=True),
        },
    }


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(arch: str, protocol: str, threads: int, calls: dict[int, int], work: Path, log: Any) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from fsg_core.packed import load_packed

    built = _models(arch, protocol, work)
    packed = load_packed(built["packed"]).model
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's pool spins after each run by default, which would steal the cores PyTorch's next call needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(built["onnx"]), options, providers=["CPUExecutionProvider"])
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    latency: dict[str, dict[str, Any]] = {}
    for batch, n in calls.items():
        images = torch.rand(batch, *SHAPE)
        normalized = (images - mean) / std
        raw = images.numpy()
        engines = {
            "pytorch_fp32": lambda x=normalized: built["fp"](x),
            "pytorch_packed": lambda x=normalized: packed(x),
            "onnxruntime": lambda x=raw: session.run(None, {"image": x}),
        }
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            for fn in engines.values():  # warm-up: allocator, oneDNN primitives, ORT's first run
                fn()
                fn()
            for _ in range(ROUNDS):  # rounds of blocks: each engine's threads get the machine to themselves
                for name, fn in engines.items():
                    fn()  # the first call after another engine's block wakes this engine's thread pool
                    times[name] += [_timed(fn) for _ in range(n)]
        latency[str(batch)] = {
            name: {"mean_s": statistics.fmean(ts), "median_s": statistics.median(ts), "calls": len(ts)}
            for name, ts in times.items()
        }
        log(
            f"  {arch} {protocol} batch {batch}: "
            + ", ".join(f"{k} {v['mean_s'] * 1e3:.2f} ms" for k, v in latency[str(batch)].items())
        )
    return {"bytes": built["bytes"], "latency": latency}


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def print_report(result: dict[str, Any], markdown: bool) -> None:
    meta = result["meta"]
    console = TableConsole(markdown, width=200)
    calls = ", ".join(f"{n} at batch {b}" for b, n in meta["calls"].items())
    for arch, protocols in result["archs"].items():
        title = (
            f"{arch}, 3x32x32, 10 classes: file sizes, and CPU latency of one forward, mean / median "
            f"({meta['threads']} threads; calls: {calls})"
        )
        table = console.table(title)
        columns = ["protocol", "batch", "fp32 state dict", "packed", "ONNX", "ONNX --fp16"]
        columns += ["PyTorch fp32", "packed in PyTorch", "ONNX Runtime", "ONNX Runtime vs packed"]
        for col in columns:
            table.add_column(col, justify="left" if col == "protocol" else "right")
        for protocol, r in protocols.items():
            b = r["bytes"]
            for i, batch in enumerate(meta["calls"]):
                sizes = [b["fp32_state_dict"], b["packed"], b["onnx"], b["onnx_fp16"]]
                cells = [protocol if i == 0 else "", str(batch)] + [_size(n) if i == 0 else "" for n in sizes]
                lat = r["latency"][str(batch)]
                for engine in ("pytorch_fp32", "pytorch_packed", "onnxruntime"):
                    cells.append(f"{lat[engine]['mean_s'] * 1e3:.2f} / {lat[engine]['median_s'] * 1e3:.2f} ms")
                cells.append(f"{lat['onnxruntime']['mean_s'] / lat['pytorch_packed']['mean_s']:.2f}x")
                table.add_row(*cells)
        console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 calls at batch 1, 1 at batch 64, per round")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        result = read_report(args.report)
        print_report(result, args.markdown)
        return result
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown architectures {unknown}; choose from {list(ARCHS)}")

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    calls = {1: 2, 64: 1} if args.quick else {1: 10, 64: 2}  # per engine per round

    meta = {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "calls": {b: n * ROUNDS for b, n in calls.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    result: dict[str, Any] = {"meta": meta, "archs": {}}
    with tempfile.TemporaryDirectory(prefix="fsg-bench-export-") as tmp:
        for arch in archs:
            result["archs"][arch] = {
                protocol: measure(arch, protocol, args.threads, calls, Path(tmp), log) for protocol in PROTOCOLS
            }
    print_report(result, args.markdown)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

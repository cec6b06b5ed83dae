"""A larq-style model summary: per layer 1-bit vs 32-bit values, memory, binary vs full-precision MACs.

Counting rules (the packed file's, so the memory column predicts its data section):

* a conv/linear layer is *binary* when its weights are binarized (``binarize_weights``) or, for a
  packed inference model whose weights are frozen, when its name is in ``binary_names``; its weight
  counts as 1-bit values;
* everything else floating point that the packed file stores counts as 32-bit values: trainable
  parameters (biases, BatchNorm's weight and bias, full-precision layers), BatchNorm's
  ``running_mean`` and ``running_var`` (Keras, and so larq, count them as non-trainable parameters
  too) and bwn's scales (1 per layer, or 1 per output channel); ``num_batches_tracked`` is not
  counted;
* memory is ``ceil(#1-bit / 8) + 4 * #32-bit`` bytes per layer; kB are 1024 bytes, as in larq;
* MACs are per sample: a conv does ``C_out H_out W_out * C_in / groups * k_h k_w``, a linear
  ``in * out``. They are 1-bit MACs when the layer's weights are binary (whatever its inputs), else
  32-bit MACs.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from fsg_core.binary import BinaryLayer
from fsg_core.packed import load_packed, state_dict_bytes

__all__ = ["LayerRow", "ModelSummary", "describe_packed", "format_summary", "summarize"]

_KB = 1024


@dataclass(frozen=True)
class LayerRow:
    """One leaf module of the forward pass.

    Attributes:
        name: qualified module name.
        type: class name.
        output_shape: output shape without the batch dimension.
        binary_params: 1-bit values (the weight of a binary layer).
        fp_params: 32-bit values (see the module docstring for what counts).
        binary_macs / fp_macs: multiply-accumulates per sample with binary / full-precision weights.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    binary_params: int
    fp_params: int
    binary_macs: int
    fp_macs: int

    @property
    def memory_bytes(self) -> int:
        """Bytes of the layer in the packed format: bit-packed 1-bit values plus float32 values."""
        return math.ceil(self.binary_params / 8) + 4 * self.fp_params


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows in forward order, and the totals derived from them."""

    input_shape: tuple[int, int, int]
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def binary_params(self) -> int:
        return sum(r.binary_params for r in self.rows)

    @property
    def fp_params(self) -> int:
        return sum(r.fp_params for r in self.rows)

    @property
    def total_params(self) -> int:
        return self.binary_params + self.fp_params

    @property
    def binary_fraction(self) -> float:
        """Share of all counted values that are 1-bit."""
        return self.binary_params / self.total_params if self.total_params else 0.0

    @property
    def memory_bytes(self) -> int:
        """Packed memory: the sum of the rows' ``memory_bytes``."""
        return sum(r.memory_bytes for r in self.rows)

    @property
    def fp32_memory_bytes(self) -> int:
        """Memory if every counted value were float32."""
        return 4 * self.total_params

    @property
    def memory_ratio(self) -> float:
        """Packed memory over fp32 memory (smaller is better)."""
        return self.memory_bytes / self.fp32_memory_bytes if self.fp32_memory_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        """fp32 memory over packed memory (larger is better)."""
        return self.fp32_memory_bytes / self.memory_bytes if self.memory_bytes else 1.0

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def fp_macs(self) -> int:
        return sum(r.fp_macs for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ``input_shape``, ``layers`` (rows with ``memory_bytes``) and ``totals``."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [
                {**asdict(r), "output_shape": list(r.output_shape), "memory_bytes": r.memory_bytes} for r in self.rows
            ],
            "totals": {
                "binary_params": self.binary_params,
                "fp_params": self.fp_params,
                "total_params": self.total_params,
                "binary_fraction": self.binary_fraction,
                "memory_bytes": self.memory_bytes,
                "fp32_memory_bytes": self.fp32_memory_bytes,
                "memory_ratio": self.memory_ratio,
                "compression_ratio": self.compression_ratio,
                "binary_macs": self.binary_macs,
                "fp_macs": self.fp_macs,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSummary:
        """Inverse of ``as_dict`` (totals are recomputed from the rows)."""
        rows = [
            LayerRow(
                name=r["name"],
                type=r["type"],
                output_shape=tuple(r["output_shape"]),
                binary_params=r["binary_params"],
                fp_params=r["fp_params"],
                binary_macs=r["binary_macs"],
                fp_macs=r["fp_macs"],
            )
            for r in data["layers"]
        ]
        c, h, w = data["input_shape"]
        return cls(input_shape=(c, h, w), rows=rows)


def _default_binary_names(model: nn.Module) -> set[str]:
    return {
        name
        for name, m in model.named_modules()
        if isinstance(m, BinaryLayer) and m.estimator is not None and m.binarize_weights
    }


def _scale_count(module: nn.Module) -> int:
    """bwn's stored scales: one per layer or one per output channel; dorefa has none."""
    if not isinstance(module, BinaryLayer) or module.binarizer.kind != "bwn":
        return 0
    return module.weight.shape[0] if module.binarizer.per_channel else 1


def _macs(module: nn.Module, output: Tensor) -> int:
    per_sample = output[0].numel()  # output elements of one sample
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def _row(name: str, module: nn.Module, output: Tensor, binary: bool) -> LayerRow:
    params = dict(module.named_parameters(recurse=False))
    bits = params.pop("weight").numel() if binary else 0
    fp = sum(p.numel() for p in params.values()) + (_scale_count(module) if binary else 0)
    # Floating buffers are what the packed file stores besides parameters (BatchNorm's running
    # statistics); the integer num_batches_tracked is left out, as in the file.
    fp += sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    macs = _macs(module, output)
    return LayerRow(
        name=name,
        type=type(module).__name__,
        output_shape=tuple(output.shape[1:]),
        binary_params=bits,
        fp_params=fp,
        binary_macs=macs if binary else 0,
        fp_macs=0 if binary else macs,
    )


def summarize(
    model: nn.Module, input_shape: tuple[int, int, int], binary_names: Iterable[str] | None = None
) -> ModelSummary:
    """Count ``model``'s values and MACs layer by layer with one forward pass of a zero batch of 1.

    Runs in eval mode without gradients and restores the model's mode afterwards.

    Args:
        model: a training model (binary layers have ``binarize_weights`` on) or a packed inference model.
        input_shape: ``(C, H, W)`` of one input.
        binary_names: names of the layers whose weights are binary; None takes the layers that
            binarize their weights now (pass ``PackedModel.binary_names`` for a packed model).

    Returns:
        The rows of the leaf modules that ran, in the order they first ran (a module called twice in
        one forward is counted once).
    """
    binary = set(binary_names) if binary_names is not None else _default_binary_names(model)
    rows: dict[str, LayerRow] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in rows and isinstance(output, Tensor):
                rows[name] = _row(name, module, output, name in binary)

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook_for(name)) for name, m in leaves]
    was_training = model.training
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    c, h, w = input_shape
    return ModelSummary(input_shape=(c, h, w), rows=list(rows.values()))


def _count(n: int) -> str:
    return f"{n:,}" if n else "0"


def format_summary(summary: ModelSummary, width: int = 120) -> str:
    """Render ``summary`` as text: a per-layer table, then a totals block (larq's layout)."""
    table = Table(title=f"Model summary (input {tuple(summary.input_shape)})", title_justify="left")
    table.add_column("Layer")
    table.add_column("Output shape")
    for header in ("# 1-bit", "# 32-bit", "Memory (kB)", "1-bit MACs", "32-bit MACs"):
        table.add_column(header, justify="right")
    for r in summary.rows:
        table.add_row(
            f"{r.name} ({r.type})",
            str(tuple(r.output_shape)),
            _count(r.binary_params),
            _count(r.fp_params),
            f"{r.memory_bytes / _KB:.2f}",
            _count(r.binary_macs),
            _count(r.fp_macs),
        )
    table.add_section()
    table.add_row(
        "Total",
        "",
        _count(summary.binary_params),
        _count(summary.fp_params),
        f"{summary.memory_bytes / _KB:.2f}",
        _count(summary.binary_macs),
        _count(summary.fp_macs),
    )

    totals = Table(title="Totals", title_justify="left", show_header=False)
    totals.add_column("")
    totals.add_column("", justify="right")
    totals.add_row("Total params", _count(summary.total_params))
    totals.add_row("Binary params (1-bit)", _count(summary.binary_params))
    totals.add_row("Full-precision params (32-bit)", _count(summary.fp_params))
    totals.add_row("Binary fraction", f"{summary.binary_fraction:.2%}")
    totals.add_row("Memory, packed (kB)", f"{summary.memory_bytes / _KB:.2f}")
    totals.add_row("Memory, fp32 (kB)", f"{summary.fp32_memory_bytes / _KB:.2f}")
    totals.add_row("Compression ratio", f"{summary.compression_ratio:.2f}x")

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    console.print(totals)
    return buffer.getvalue()


def describe_packed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a packed file and describe it (what ``fsg summary FILE`` shows).

    Returns:
        A JSON-able dict: ``summary`` (``ModelSummary.as_dict()``; ``ModelSummary.from_dict`` turns it
        back for ``format_summary``), ``file_bytes`` (the file's measured size),
        ``fp32_state_dict_bytes`` (``state_dict_bytes`` of the model), ``compression_ratio``
        (fp32 state dict bytes over file bytes) and ``header`` (the file's metadata).

    Raises:
        PackedFormatError: the file is not a readable packed model.
    """
    packed = load_packed(path)
    shape = packed.header["input_shape"]
    summary = summarize(packed.model, (shape[0], shape[1], shape[2]), binary_names=packed.binary_names)
    file_bytes = os.stat(path).st_size
    fp32_bytes = state_dict_bytes(packed.model)
    return {
        "summary": summary.as_dict(),
        "file_bytes": file_bytes,
        "fp32_state_dict_bytes": fp32_bytes,
        "compression_ratio": fp32_bytes / file_bytes,
        "header": packed.header,
    }

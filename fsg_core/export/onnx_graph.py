"""Lower a packed inference model to an ONNX graph: one pass over its ``torch.fx`` trace.

Why a lowering of our own rather than ``torch.onnx.export``: the graph a BNN runtime needs is a
statement about the binary network, not whatever a tracer emits. Here every binary layer's weight is
an initializer holding exactly ±1 (its ``bwn`` scale a separate per-channel factor), ``sign`` is
``sign(0) = +1`` as in training (ONNX's ``Sign`` gives 0 there), BatchNorm is folded and nothing else
is in the graph; the bytes are deterministic, and export takes milliseconds with no extra packages
beyond ``onnx``.

Folding (exact in real arithmetic; float results differ by rounding only). A BatchNorm, and a binary
layer's scale, become a pending per-channel affine ``y = m x + b`` carried on the value instead of
being emitted. It is pushed through what commutes with it exactly (global average pooling, flatten
of ``(N, C, 1, 1)``, max pooling when every ``m >= 0``) and composed with the next BatchNorm; then it is

* folded into the weights and bias of the full-precision conv or linear that produced the value
  (``W' = m W``, ``b' = m b_conv + b``): the stem conv of W1A1, every conv of a full-precision layer;
* folded into the full-precision linear that consumes it (``W' = W diag(m)``, ``b' = W b + b_fc``):
  the BatchNorm1d before the classifier;
* otherwise emitted as one ``Mul`` and one ``Add`` (skipped when ``m`` is all ones or ``b`` all
  zeros), which keeps the binary weights ±1: after a binary conv, and where the value feeds a ``sign``.

Supported modules and functions are listed in ``_MODULES`` and ``_FUNCTIONS``; anything else is an
``ExportError`` naming it (a new architecture made of these ops exports with no change here).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fsg_core.binary import BinaryLayer
from fsg_core.errors import NonRetryableError
from fsg_core.estimators.base import ClosedFormEstimator, Estimator
from fsg_core.estimators.biper import BiPer

if TYPE_CHECKING:  # onnx is an optional extra: imported by the caller, passed in as ``onnx``
    from onnx import ModelProto, NodeProto, TensorProto

__all__ = ["ExportError", "INPUT_NAME", "OUTPUT_NAME", "lower"]

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_NORMALIZED = "normalized_image"


class ExportError(NonRetryableError, ValueError):
    """The model (or a setting) cannot be written as ONNX; the message names the module or option."""


@dataclass
class _Affine:
    """A pending per-channel ``m x + b`` over dim 1, not yet in the graph."""

    mul: np.ndarray  # (C,) float32
    add: np.ndarray  # (C,) float32

    def then(self, mul: np.ndarray, add: np.ndarray) -> _Affine:
        """This affine followed by ``mul x + add``."""
        return _Affine(mul * self.mul, mul * self.add + add)


@dataclass
class _FoldTarget:
    """A full-precision conv or linear whose output nothing else reads: an affine may go into it."""

    node: NodeProto
    weight: str
    bias: str | None


@dataclass
class _Value:
    """What an fx node's output is in the ONNX graph: a tensor name, maybe with a pending affine."""

    name: str
    affine: _Affine | None = None
    fold: _FoldTarget | None = None
    materialized: str | None = None


class _Tracer(fx.Tracer):
    """Binary layers are leaves: their forward (estimators, autograd functions) is ours to lower."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, BinaryLayer) or super().is_leaf_module(m, module_qualified_name)


class _Lowering:
    def __init__(
        self,
        onnx: Any,
        model: nn.Module,
        binary: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
        fp16: bool,
    ) -> None:
        self.onnx = onnx
        self.model = model
        self.binary = binary
        self.fp16 = fp16
        self.nodes: list[NodeProto] = []
        self.arrays: dict[str, np.ndarray] = {}  # initializers, float32 until ``initializers()``
        self._signs: dict[str, str] = {}
        self._scalars: dict[float, str] = {}
        self._count = 0

    # --- graph building --------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.arrays[name] = np.ascontiguousarray(array, dtype=np.float32)
        return name

    def scalar(self, value: float) -> str:
        """One initializer per scalar value, however many ops read it (every sign reads 0, 1 and -1)."""
        if value not in self._scalars:
            self._scalars[value] = self.const("scalar", np.array(value))
        return self._scalars[value]

    def initializers(self) -> tuple[list[TensorProto], list[NodeProto]]:
        """The initializers, and (``fp16``) the ``Cast`` nodes that bring float16 storage back to float32.

        ``fp16`` stores as float16 only what float16 holds exactly: every ±1 weight (nearly all of a
        binary network's bytes) and whatever else happens to be exact. Rounding the rest (full-precision
        stem and classifier, folded BatchNorm) would save a few KB and, in a W1A1 network, flip binary
        activations that sit near 0: logits then differ by 1e-1, not 1e-7.
        """
        from onnx import TensorProto, numpy_helper

        tensors, casts = [], []
        for name, array in self.arrays.items():
            half = array.astype(np.float16)
            if self.fp16 and array.size > 1 and np.array_equal(half.astype(np.float32), array):
                stored = f"{name}_fp16"
                tensors.append(numpy_helper.from_array(half, stored))
                casts.append(
                    self.onnx.helper.make_node("Cast", [stored], [name], name=f"cast_{name}", to=TensorProto.FLOAT)
                )
            else:
                tensors.append(numpy_helper.from_array(array, name))
        return tensors, casts

    # --- values ----------------------------------------------------------------------------------
    def materialize(self, value: _Value) -> str:
        """The tensor name of ``value`` with its pending affine applied (folded or emitted once)."""
        if value.affine is None:
            return value.name
        if value.materialized is None:
            value.materialized = self._apply(value)
        return value.materialized

    def _apply(self, value: _Value) -> str:
        assert value.affine is not None
        mul, add = value.affine.mul, value.affine.add
        if value.fold is not None:  # into the producer: W' = m W, b' = m b + add
            target = value.fold
            w = self.arrays[target.weight]
            self.arrays[target.weight] = w * mul.reshape(-1, *([1] * (w.ndim - 1)))
            if target.bias is None:
                target.bias = self.const("bias", add)
                target.node.input.append(target.bias)
            else:
                self.arrays[target.bias] = self.arrays[target.bias] * mul + add
            return value.name
        name = value.name
        shape = [-1] + [1] * (self._rank(value) - 2)
        if not np.all(mul == 1.0):
            name = self.node("Mul", [name, self.const("scale", mul.reshape(shape))], "mul")
        if np.any(add != 0.0):
            name = self.node("Add", [name, self.const("shift", add.reshape(shape))], "add")
        return name

    def _rank(self, value: _Value) -> int:
        return self.ranks[value.name]

    def sign(self, name: str, estimator: Estimator) -> str:
        """The activation estimator's forward at the end of training, ``sign(0) = +1``."""
        if name in self._signs:
            return self._signs[name]
        x = name
        if isinstance(estimator, BiPer):
            assert isinstance(estimator.params, BiPer.Params)
            omega = self.scalar(estimator.params.omega)
            x = self.node("Sin", [self.node("Mul", [x, omega], "omega_x")], "sin")
        elif not isinstance(estimator, ClosedFormEstimator) or type(estimator).forward_value is not (
            ClosedFormEstimator.forward_value
        ):
            raise ExportError(f"activation estimator {estimator.name!r} has a forward with no ONNX lowering")
        zero, one, minus_one = (self.scalar(v) for v in (0.0, 1.0, -1.0))
        positive = self.node("GreaterOrEqual", [x, zero], "nonneg")
        self._signs[name] = self.node("Where", [positive, one, minus_one], "sign")
        return self._signs[name]

    # --- the pass --------------------------------------------------------------------------------
    def run(self, example: torch.Tensor) -> tuple[str, tuple[int, ...]]:
        """Lower every node; the output's tensor name and shape (for ``example``)."""
        graph = _Tracer().trace(self.model)
        gm = fx.GraphModule(self.model, graph)
        ShapeProp(gm).propagate(example)
        self.ranks: dict[str, int] = {}
        values: dict[fx.Node, _Value] = {}
        output = None
        for node in graph.nodes:
            if node.op == "placeholder":
                values[node] = _Value(_NORMALIZED)
            elif node.op == "output":
                output = (self.materialize(values[_arg(node)]), _shape(_arg(node)))
                continue
            elif node.op == "call_module":
                module = gm.get_submodule(node.target)
                handler = next((h for kind, h in _MODULES if isinstance(module, kind)), None)
                if handler is None:
                    raise ExportError(f"module {node.target!r} ({type(module).__name__}) has no ONNX lowering")
                values[node] = handler(self, node, module, values)
            elif node.op in ("call_function", "call_method"):
                handler = _FUNCTIONS.get(node.target)
                if handler is None:
                    raise ExportError(f"{node.op} {node.target!r} (in {node.name}) has no ONNX lowering")
                values[node] = handler(self, node, values)
            else:
                raise ExportError(f"fx node {node.name} ({node.op}) has no ONNX lowering")
            meta = node.meta.get("tensor_meta")
            if meta is not None:
                self.ranks[values[node].name] = len(meta.shape)
        assert output is not None
        return output


def _arg(node: fx.Node) -> fx.Node:
    """The tensor a module or function node reads."""
    arg = node.args[0]
    if not isinstance(arg, fx.Node):
        raise ExportError(f"{node.name} reads {arg!r}, not a tensor")
    return arg


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _conv(low: _Lowering, node: fx.Node, m: nn.Conv2d, values: dict[fx.Node, _Value]) -> _Value:
    x = low.materialize(values[_arg(node)])
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise ExportError(f"conv {node.target!r}: padding {m.padding!r} / {m.padding_mode!r} has no lowering")
    attrs = {
        "strides": list(m.stride),
        "pads": [*m.padding, *m.padding],
        "dilations": list(m.dilation),
        "group": m.groups,
        "kernel_shape": list(m.kernel_size),
    }
    return _weighted(low, node, m, x, "Conv", attrs)


def _linear(low: _Lowering, node: fx.Node, m: nn.Linear, values: dict[fx.Node, _Value]) -> _Value:
    source = values[_arg(node)]
    if not isinstance(m, BinaryLayer) and source.affine is not None:
        # fc(m x + b) = (W diag m) x + (W b + b_fc): the BatchNorm1d before the classifier goes into it.
        w = m.weight.detach().float().numpy()
        bias = m.bias.detach().float().numpy() if m.bias is not None else np.zeros(w.shape[0], np.float32)
        folded = (w * source.affine.mul[None, :], w @ source.affine.add + bias)
        return _weighted(low, node, m, source.name, "Gemm", {"transB": 1}, fp_override=folded)
    return _weighted(low, node, m, low.materialize(source), "Gemm", {"transB": 1})


def _weighted(
    low: _Lowering,
    node: fx.Node,
    m: nn.Conv2d | nn.Linear,
    x: str,
    op: str,
    attrs: dict[str, Any],
    fp_override: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Value:
    name = str(node.target)
    binary = name in low.binary and isinstance(m, BinaryLayer)
    channels = _shape(node)[1]
    if isinstance(m, BinaryLayer) and m.binarize_activations and m.act_estimator is not None:
        x = low.sign(x, m.act_estimator)
    if binary:
        signs, scale = low.binary[name]
        weight = low.const(f"{name}.signs", signs.numpy())
        b = np.zeros(channels, np.float32) if m.bias is None else m.bias.detach().float().numpy()
        if scale is not None:  # y = s (W x) + b: the scale goes after the op, and must not reach the bias
            mul = np.broadcast_to(scale.numpy().astype(np.float32), (channels,)).copy()
            out = low.node(op, [x, weight], name.replace(".", "_"), **attrs)
            return _Value(out, _Affine(mul, b))
        bias = None if m.bias is None else low.const(f"{name}.bias", b)
    elif fp_override is not None:
        weight = low.const(f"{name}.weight", fp_override[0])
        bias = low.const(f"{name}.bias", fp_override[1])
    else:
        weight = low.const(f"{name}.weight", m.weight.detach().float().numpy())
        bias = None if m.bias is None else low.const(f"{name}.bias", m.bias.detach().float().numpy())
    inputs = [x, weight] + ([bias] if bias is not None else [])
    out = low.fresh(name.replace(".", "_") or op.lower())
    onnx_node = low.onnx.helper.make_node(op, inputs, [out], name=out, **attrs)
    low.nodes.append(onnx_node)
    if binary:
        return _Value(out)
    fold = _FoldTarget(onnx_node, weight, bias) if len(node.users) == 1 else None
    return _Value(out, fold=fold)


def _batchnorm(low: _Lowering, node: fx.Node, m: nn.modules.batchnorm._BatchNorm, values: dict) -> _Value:
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise ExportError(f"BatchNorm {node.target!r} keeps no running statistics: it has no inference form")
    # As PyTorch's CPU kernel evaluates it: alpha = w / sqrt(var + eps), beta = b - mean alpha, y = x alpha + beta.
    var = m.running_var.detach().float().numpy()
    mean = m.running_mean.detach().float().numpy()
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(m.eps))
    alpha = invstd * (m.weight.detach().float().numpy() if m.weight is not None else np.float32(1.0))
    beta = (m.bias.detach().float().numpy() if m.bias is not None else np.float32(0.0)) - mean * alpha
    source = values[_arg(node)]
    if source.materialized is not None:  # already applied for another reader: start from the result
        source = _Value(source.materialized)
    affine = (source.affine or _Affine(np.ones_like(alpha), np.zeros_like(alpha))).then(alpha, beta)
    # Folding into the producer rewrites its raw output: only when this BatchNorm is its one reader.
    return _Value(source.name, affine, source.fold if len(node.users) == 1 else None)


def _relu(low: _Lowering, node: fx.Node, m: nn.Module, values: dict) -> _Value:
    return _Value(low.node("Relu", [low.materialize(values[_arg(node)])], "relu"))


def _hardtanh(low: _Lowering, node: fx.Node, m: nn.Hardtanh, values: dict) -> _Value:
    lo, hi = low.scalar(m.min_val), low.scalar(m.max_val)
    return _Value(low.node("Clip", [low.materialize(values[_arg(node)]), lo, hi], "hardtanh"))


def _identity(low: _Lowering, node: fx.Node, m: nn.Module, values: dict) -> _Value:
    return values[_arg(node)]


def _pass_affine(source: _Value, out: str) -> _Value:
    """``out`` computed from ``source``'s raw tensor, with ``source``'s affine still pending on it."""
    return _Value(out, source.affine)


def _maxpool(low: _Lowering, node: fx.Node, m: nn.MaxPool2d, values: dict) -> _Value:
    def pair(v: Any) -> list[int]:
        return [v, v] if isinstance(v, int) else list(v)

    attrs = {
        "kernel_shape": pair(m.kernel_size),
        "strides": pair(m.stride if m.stride is not None else m.kernel_size),
        "pads": pair(m.padding) * 2,
        "dilations": pair(m.dilation),
        "ceil_mode": int(m.ceil_mode),
    }
    source = values[_arg(node)]
    if source.affine is not None and source.materialized is None and np.all(source.affine.mul >= 0):
        # max(m x + b) = m max(x) + b for m >= 0: pool first, on the raw tensor (fewer elements to scale).
        return _pass_affine(source, low.node("MaxPool", [source.name], "maxpool", **attrs))
    return _Value(low.node("MaxPool", [low.materialize(source)], "maxpool", **attrs))


def _adaptive_avgpool(low: _Lowering, node: fx.Node, m: nn.AdaptiveAvgPool2d, values: dict) -> _Value:
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    if tuple(size) != (1, 1):
        raise ExportError(f"{node.target!r}: AdaptiveAvgPool2d to {size} has no lowering (only to 1x1)")
    source = values[_arg(node)]
    if source.affine is not None and source.materialized is None:  # the mean of m x + b is m mean(x) + b
        return _pass_affine(source, low.node("GlobalAveragePool", [source.name], "avgpool"))
    return _Value(low.node("GlobalAveragePool", [low.materialize(source)], "avgpool"))


def _flatten(low: _Lowering, node: fx.Node, values: dict) -> _Value:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    rank = len(_shape(_arg(node)))
    if start != 1 or end not in (-1, rank - 1):
        raise ExportError(f"flatten({start}, {end}) in {node.name} has no lowering (only flatten(1))")
    return _flatten_from(low, node, values[_arg(node)])


def _flatten_module(low: _Lowering, node: fx.Node, m: nn.Flatten, values: dict) -> _Value:
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"{node.target!r}: Flatten({m.start_dim}, {m.end_dim}) has no lowering (only 1, -1)")
    return _flatten_from(low, node, values[_arg(node)])


def _flatten_from(low: _Lowering, node: fx.Node, source: _Value) -> _Value:
    spatial = _shape(_arg(node))[2:]
    if source.affine is not None and source.materialized is None and all(s == 1 for s in spatial):
        return _pass_affine(source, low.node("Flatten", [source.name], "flatten", axis=1))
    return _Value(low.node("Flatten", [low.materialize(source)], "flatten", axis=1))


def _add(low: _Lowering, node: fx.Node, values: dict) -> _Value:
    if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
        raise ExportError(f"{node.name}: only the sum of two tensors has a lowering")
    a, b = (low.materialize(values[arg]) for arg in node.args if isinstance(arg, fx.Node))
    return _Value(low.node("Add", [a, b], "residual"))


_Handler = Callable[..., _Value]
# Order matters: BinaryConv2d is a Conv2d, BatchNorm1d and 2d share their base.
_MODULES: list[tuple[type[nn.Module], _Handler]] = [
    (nn.Conv2d, _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _batchnorm),
    (nn.ReLU, _relu),
    (nn.Hardtanh, _hardtanh),
    (nn.MaxPool2d, _maxpool),
    (nn.AdaptiveAvgPool2d, _adaptive_avgpool),
    (nn.Flatten, _flatten_module),
    (nn.Identity, _identity),
    (nn.Dropout, _identity),  # evaluation: the identity
]
_FUNCTIONS: dict[Any, _Handler] = {
    "flatten": _flatten,
    torch.flatten: _flatten,
    operator.add: _add,
    torch.add: _add,
    "add": _add,
}


def lower(
    onnx: Any,
    model: nn.Module,
    binary: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    *,
    input_shape: tuple[int, ...],
    mean: list[float],
    std: list[float],
    fp16: bool,
    opset: int,
) -> ModelProto:
    """The ONNX model of ``model`` (eval mode): input ``image`` (batch, C, H, W) as the dataset gives it,
    normalised in the graph; output ``logits`` (batch, classes)."""
    from onnx import TensorProto, helper

    low = _Lowering(onnx, model, binary, fp16)
    c = input_shape[0]
    mean_name = low.const("mean", np.asarray(mean, np.float32).reshape(1, c, 1, 1))
    std_name = low.const("std", np.asarray(std, np.float32).reshape(1, c, 1, 1))
    # (x - mean) / std exactly as fsg_core.data.transforms.normalize computes it.
    centred = low.node("Sub", [INPUT_NAME, mean_name], "centred")
    low.nodes.append(helper.make_node("Div", [centred, std_name], [_NORMALIZED], name=_NORMALIZED))
    with torch.no_grad():
        result, out_shape = low.run(torch.zeros(2, *input_shape))
    low.nodes.append(helper.make_node("Identity", [result], [OUTPUT_NAME], name=OUTPUT_NAME))
    initializers, casts = low.initializers()
    graph = helper.make_graph(
        casts + low.nodes,
        "fsg_binary_network",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", *out_shape[1:]])],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))

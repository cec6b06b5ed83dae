"""Export a packed 1-bit model to formats other runtimes open: ONNX (``to_onnx``).

The source is always the packed deployment file (``fsg_core.packed``), never the training
checkpoint: what is exported is exactly the network ``load_packed`` rebuilds.

The ONNX model (layout in ``onnx_graph``):

* input ``image``: float32 ``(batch, C, H, W)``, pixels as the dataset gives them before
  normalisation (H and W those of training); the per-channel normalisation ``(image - mean) / std``
  is **in the graph** (its values are also in the metadata, ``fsg.mean`` / ``fsg.std``). The batch
  axis is dynamic.
* output ``logits``: float32 ``(batch, num_classes)``.
* every binary layer's weight an initializer of exact ±1 values, its ``bwn`` scale a separate
  per-channel factor; binary activations (W1A1) as ``sign`` with ``sign(0) = +1``
  (``Where(x >= 0, 1, -1)``); BatchNorm folded (exactly, in real arithmetic) into the neighbouring
  full-precision layer or into a per-channel ``Mul``/``Add``. No training-only op.
* ``fp16=True`` stores as float16 every initializer float16 holds exactly (the ±1 weights: nearly all
  the bytes), cast back to float32 in the graph: about half the file and the same logits. Arithmetic
  stays float32; choose the compute precision in the runtime (TensorRT's ``--fp16``, ONNX Runtime's float16 converter).
* metadata (``metadata_props``): ``fsg.arch``, ``fsg.num_classes``, ``fsg.protocol`` (W1A32 or W1A1),
  ``fsg.format`` and ``fsg.format_version`` of the packed source, ``fsg.input_shape``, ``fsg.mean``,
  ``fsg.std``, ``fsg.normalization`` (``in-graph``), ``fsg.storage`` and ``fsg.header`` (the packed
  file's whole header, JSON).

``onnx`` is an optional extra (``pip install 'fsg[export]'``); without it ``MissingExportExtra``
says so.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsg_core.errors import NonRetryableError
from fsg_core.export.onnx_graph import INPUT_NAME, OUTPUT_NAME, ExportError, lower
from fsg_core.files import write_atomic
from fsg_core.packed import load_packed

if TYPE_CHECKING:
    from onnx import ModelProto

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "ExportError",
    "MissingExportExtra",
    "max_opset",
    "onnx_model",
    "require_onnx",
    "to_onnx",
]

# 17: read by ONNX Runtime >= 1.13, TensorRT >= 8.6 and OpenVINO >= 2022.3; nothing here needs newer.
DEFAULT_OPSET = 17
MIN_OPSET = 13  # GreaterOrEqual (12), Clip with tensor bounds (11), Where (9); 13 is the floor we test


class MissingExportExtra(NonRetryableError, ImportError):
    """The ``export`` extra (onnx) is not installed."""


def require_onnx() -> Any:
    """The ``onnx`` module, or ``MissingExportExtra`` naming the extra to install."""
    try:
        import onnx
    except ImportError as err:
        raise MissingExportExtra(
            "ONNX export needs the 'export' extra: pip install 'fsg[export]' (onnx; onnxruntime to run the model)"
        ) from err
    return onnx


def max_opset() -> int:
    """The newest opset the installed ``onnx`` knows."""
    return int(require_onnx().defs.onnx_opset_version())


def _version() -> str:
    try:
        return metadata.version("fsg")
    except metadata.PackageNotFoundError:  # a source tree run without installing
        return "0+unknown"


def onnx_model(packed: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET, fp16: bool = False) -> ModelProto:
    """The ONNX model of the packed file ``packed`` (layout in the module docstring), checked.

    Raises:
        MissingExportExtra: ``onnx`` is not installed.
        PackedFormatError: ``packed`` is not a packed model this version reads (truncated, corrupt, ...).
        ExportError: ``opset`` is out of range, or the model holds a layer with no ONNX lowering.
    """
    onnx = require_onnx()
    newest = max_opset()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset must be between {MIN_OPSET} and {newest} (the installed onnx's newest), got {opset}")
    loaded = load_packed(packed)
    header = loaded.header
    model = lower(
        onnx,
        loaded.model,
        loaded.binary,
        input_shape=tuple(header["input_shape"]),
        mean=header["mean"],
        std=header["std"],
        fp16=fp16,
        opset=opset,
    )
    model.producer_name = "fsg"
    model.producer_version = _version()
    model.doc_string = (
        f"{header['arch']} binary network ({'W1A1' if header['act_estimator'] else 'W1A32'}) exported by fsg from "
        f"a packed file; input '{INPUT_NAME}' (batch, {', '.join(map(str, header['input_shape']))}) normalised in "
        f"the graph, output '{OUTPUT_NAME}' (batch, {header['num_classes']})"
    )
    props = {
        "fsg.arch": header["arch"],
        "fsg.num_classes": str(header["num_classes"]),
        "fsg.protocol": "W1A1" if header["act_estimator"] else "W1A32",
        "fsg.format": header["format"],
        "fsg.format_version": str(header["format_version"]),
        "fsg.input_shape": json.dumps(header["input_shape"]),
        "fsg.mean": json.dumps(header["mean"]),
        "fsg.std": json.dumps(header["std"]),
        "fsg.normalization": "in-graph: (image - mean) / std",
        "fsg.storage": "float16" if fp16 else "float32",
        "fsg.header": json.dumps(header, separators=(",", ":"), sort_keys=True),
    }
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx(
    packed: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
) -> int:
    """Write the ONNX model of the packed file ``packed`` to ``out`` atomically; the bytes written.

    Nothing is written when anything fails: a corrupt source leaves no partial ``out``.

    Raises:
        as ``onnx_model``.
    """
    data = onnx_model(packed, opset=opset, fp16=fp16).SerializeToString(deterministic=True)
    write_atomic(Path(out), data)
    return len(data)

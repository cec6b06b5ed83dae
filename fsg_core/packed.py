"""The packed deployment file (1 bit per binary weight, safetensors) and the loader of its inference model.

Layout, ``format_version`` 1. The container is safetensors, never pickle, so opening someone else's
file cannot execute code. Tensors:

* ``<layer>.bits`` for every binary layer: ``uint8``, shape ``(ceil(n / 8),)``. The layer's effective
  weight (``binary_weight()`` at ``progress = 1``, so BiPer stores ``sign(sin(w x))``, not ``sign(W)``)
  is flattened in row-major (C) order; bit 1 means +1 and bit 0 means -1 (sign(0) = +1). Bits are
  packed MSB-first within each byte (``numpy.packbits``' default ``bitorder="big"``): weight ``k`` is
  bit ``7 - k % 8`` (value ``1 << (7 - k % 8)``) of byte ``k // 8``; the unused low bits of the last
  byte are 0.
* ``<layer>.scale``: the ``bwn`` scale ``a``, float32, shape ``()`` per layer or ``(C_out,)`` per
  output channel; dorefa has none.
* ``<bn>.bn``: each BatchNorm's ``weight, bias, running_mean, running_var`` stacked, shape ``(4, C)``
  (one header entry instead of four; ``num_batches_tracked`` only matters in training and is dropped).
* every other floating state-dict entry (full-precision first/last layers, biases) under its own key,
  float32, or float16 with ``fp16=True`` (then logits are only close to the trained model's).

Metadata key ``"fsg"`` holds one compact JSON object: ``format`` ("fsg-packed"), ``format_version``,
``arch``, ``num_classes``, ``in_channels``, ``input_shape``, ``mean``, ``std``, ``binarize`` (the
settings; ``forward``, ``per_channel`` and ``keep_first_last_fp`` are what the loader rebuilds from),
``act_estimator`` (the activation estimator's params or null), ``fp_dtype``, ``layers`` (per binary
layer ``[name, shape, has_scale]``, arrays rather than objects because every key is paid for twice in
the escaped metadata) and ``extra``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize
from torch import Tensor, nn

from fsg_core.binary import Binarizer, BinaryLayer, binary_layers
from fsg_core.errors import NonRetryableError
from fsg_core.estimators import UnknownEstimatorError, build_estimator, get
from fsg_core.estimators.base import Estimator
from fsg_core.files import write_atomic
from fsg_core.models import LayerFactory, UnknownModelError, build_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedModel",
    "load_packed",
    "pack_signs",
    "save_packed",
    "state_dict_bytes",
    "unpack_signs",
]

FORMAT = "fsg-packed"
FORMAT_VERSION = 1
_META_KEY = "fsg"
_BN_SUFFIX = ".bn"
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")  # row order of a stacked (4, C) tensor


class PackedFormatError(NonRetryableError, ValueError):
    """A file is not a packed model this version can read; the message names the file and the defect."""


@dataclass
class PackedModel:
    """An inference model rebuilt from a packed file.

    Attributes:
        model: the network in eval mode, binary weights frozen to ±1 (±a for bwn), activations
            binarized as in training.
        header: the file's ``"fsg"`` metadata.
        binary: per binary layer, its ±1 signs (float32, the layer's weight shape) and its scale
            (``()`` or ``(C_out,)``, None without one), as stored: ``weight == signs * scale``.
    """

    model: nn.Module
    header: dict[str, Any]
    binary: dict[str, tuple[Tensor, Tensor | None]] = dataclasses.field(default_factory=dict)

    @property
    def binary_names(self) -> set[str]:
        """Qualified names of the layers whose weights are binary."""
        return {name for name, _, _ in self.header["layers"]}


def pack_signs(weight: Tensor) -> Tensor:
    """Bit-pack the signs of ``weight``: row-major, bit 1 for ``>= 0``, MSB-first, zero-padded.

    Returns:
        A uint8 tensor of shape ``(ceil(weight.numel() / 8),)``.
    """
    bits = (weight.detach().cpu() >= 0).numpy().reshape(-1)
    return torch.from_numpy(np.packbits(bits))


def unpack_signs(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """The ±1 float32 tensor of ``shape`` that ``pack_signs`` packed into ``packed``."""
    n = math.prod(shape)
    bits = np.unpackbits(packed.numpy(), count=n)
    return torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0).reshape(tuple(shape))


def _fp32_state(model: nn.Module) -> dict[str, Tensor]:
    # clone(): safetensors refuses tensors that share storage (tied weights), copies never do.
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
        for k, v in model.state_dict().items()
    }


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of ``model``'s state dict, floating tensors as float32, saved as a safetensors file.

    This is the baseline of the compression ratio. It is the length of the exact bytes
    ``safetensors`` writes for that file (measured in memory: no temporary file needed).
    """
    return len(serialize(_fp32_state(model)))


def _stackable_bns(model: nn.Module) -> list[str]:
    """BatchNorms with all four vectors (affine, tracked statistics) stored as one (4, C) tensor."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats
    ]


def _model_act_params(model: nn.Module) -> dict[str, Any] | None:
    for module in model.modules():
        if isinstance(module, BinaryLayer) and module.act_estimator is not None:
            return module.act_estimator.params.model_dump(mode="json")
    return None


def _layer_binarizer(layers: list[tuple[str, BinaryLayer]]) -> Binarizer | None:
    kinds = {layer.binarizer for _, layer in layers}
    if len(kinds) > 1:
        raise ValueError(f"binary layers use different binarizers {sorted(map(str, kinds))}; one is supported")
    return kinds.pop() if kinds else None


def _build(
    arch: str,
    num_classes: int,
    in_channels: int,
    binarizer: Binarizer | None,
    act_estimator: Estimator | None,
    keep_first_last_fp: bool,
) -> nn.Module:
    """The architecture with binary layers where the file has them; the weight estimator is never used."""
    factory = LayerFactory(
        binarizer=binarizer,
        estimator=get("ste")() if binarizer is not None else None,
        act_estimator=act_estimator,
        keep_first_last_fp=keep_first_last_fp,
    )
    return build_model(arch, num_classes=num_classes, in_channels=in_channels, factory=factory)


def _layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(layer.weight.shape) for name, layer in binary_layers(model)}


def _effective_weights(layers: list[tuple[str, BinaryLayer]]) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Each layer's ``binary_weight()`` and scale, as the trained network computes them at the end.

    ``progress = 1`` puts two-stage estimators (BiPer) in their binary stage; the look-ahead weight is
    training-only (evaluation uses ``W``), and ``binarize_weights`` is forced on because the packed
    file is always the binarized network. Everything is restored afterwards.
    """
    estimators = {id(layer.estimator): layer.estimator for _, layer in layers if layer.estimator is not None}
    saved_progress = {key: est.progress for key, est in estimators.items()}
    saved = [(layer.lookahead, layer.lookahead_bias, layer.capture, layer.binarize_weights) for _, layer in layers]
    out: dict[str, tuple[Tensor, Tensor | None]] = {}
    try:
        for est in estimators.values():
            est.progress = 1.0
        with torch.no_grad():
            for name, layer in layers:
                layer.lookahead, layer.lookahead_bias, layer.capture, layer.binarize_weights = None, None, False, True
                w = layer.binary_weight().detach().float().cpu()
                scale = layer.binarizer.scale(layer.weight)
                if scale is not None:  # (C_out, 1, ...) per channel -> (C_out,); per layer stays ()
                    scale = scale.detach().float().cpu().reshape(-1 if scale.dim() else ())
                out[name] = (w, scale)
    finally:
        for key, est in estimators.items():
            est.progress = saved_progress[key]
        for (_, layer), (lookahead, lookahead_bias, capture, enabled) in zip(layers, saved, strict=True):
            layer.lookahead, layer.lookahead_bias, layer.capture, layer.binarize_weights = (
                lookahead,
                lookahead_bias,
                capture,
                enabled,
            )
    return out


def save_packed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    num_classes: int,
    in_channels: int,
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    binarize: dict[str, Any],
    act_estimator: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
    fp16: bool = False,
) -> int:
    """Write ``model`` as a packed deployment file (layout in the module docstring), atomically.

    Args:
        model: a model built by ``build_model(arch, ...)`` with binary layers (train or eval mode;
            the mode is left unchanged).
        path: the file to write; its directory must exist.
        arch, num_classes, in_channels: how to rebuild the architecture.
        input_shape: ``(C, H, W)`` the model was trained on.
        mean, std: the per-channel input normalisation.
        binarize: the binarization settings (``BinarizeSpec`` as a dict). ``forward`` and
            ``per_channel`` are filled in from the model's layers; ``keep_first_last_fp`` defaults to
            False.
        act_estimator: the activation estimator's params as a dict, or None when activations are full
            precision; it must match the estimator the model's layers hold.
        extra: any JSON-able information to keep in the header (run id, accuracy, ...).
        fp16: store the full-precision tensors (BatchNorm, biases, full-precision layers) as float16.

    Returns:
        The number of bytes written.

    Raises:
        ValueError: the settings contradict the model (binarizer kind, activation estimator, or a set of
            binary layers that ``keep_first_last_fp`` would not rebuild).
        UnknownModelError: ``arch`` is not registered.
    """
    path = Path(path)
    layers = list(binary_layers(model))
    binarizer = _layer_binarizer(layers)

    settings = dict(binarize)
    settings.setdefault("keep_first_last_fp", False)
    if binarizer is not None:
        for key, value in (("forward", binarizer.kind), ("per_channel", binarizer.per_channel)):
            if settings.setdefault(key, value) != value:
                raise ValueError(f"binarize[{key!r}] is {settings[key]!r} but the model's layers use {value!r}")

    act_params = None
    if act_estimator is not None:
        act_params = get(act_estimator["name"]).Params.model_validate(act_estimator).model_dump(mode="json")
    if act_params != _model_act_params(model):
        raise ValueError(
            f"act_estimator {act_params} differs from the model's activation estimator {_model_act_params(model)}"
        )

    # Rebuild the skeleton now so that a file the loader could not reconstruct is never written.
    act = build_estimator(get(act_params["name"]).Params.model_validate(act_params)) if act_params else None
    skeleton = _build(arch, num_classes, in_channels, binarizer, act, bool(settings["keep_first_last_fp"]))
    if _layer_shapes(skeleton) != _layer_shapes(model):
        raise ValueError(
            f"the model's binary layers do not match {arch!r} rebuilt with keep_first_last_fp="
            f"{settings['keep_first_last_fp']}: set binarize['keep_first_last_fp'] as in training"
        )

    fp_dtype = torch.float16 if fp16 else torch.float32
    tensors: dict[str, Tensor] = {}
    entries = []
    for name, (weight, scale) in _effective_weights(layers).items():
        tensors[f"{name}.bits"] = pack_signs(weight)
        if scale is not None:
            tensors[f"{name}.scale"] = scale.contiguous()
        entries.append([name, list(weight.shape), scale is not None])

    state = model.state_dict()
    consumed = {f"{name}.weight" for name, _ in layers}  # stored as bits above
    for bn in _stackable_bns(model):
        keys = [f"{bn}.{field}" if bn else field for field in _BN_FIELDS]
        tensors[bn + _BN_SUFFIX] = torch.stack([state[k].detach().float() for k in keys]).to(fp_dtype).cpu()
        consumed.update(keys)
    for key, value in state.items():
        if key in consumed or not value.is_floating_point():
            continue  # num_batches_tracked: training-only
        tensors[key] = value.detach().to(fp_dtype).cpu().contiguous()

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_shape": [int(s) for s in input_shape],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "binarize": settings,
        "act_estimator": act_params,
        "fp_dtype": "float16" if fp16 else "float32",
        "layers": entries,
        "extra": extra or {},
    }
    data = serialize(tensors, metadata={_META_KEY: json.dumps(header, separators=(",", ":"))})
    write_atomic(path, data)
    return len(data)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as err:
        raise PackedFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
    if _META_KEY not in metadata:
        raise PackedFormatError(f"{path}: a safetensors file without {_META_KEY!r} metadata, not a packed model")
    try:
        header = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as err:
        raise PackedFormatError(f"{path}: the {_META_KEY!r} metadata is not valid JSON: {err}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise PackedFormatError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise PackedFormatError(
            f"{path}: unsupported format_version {header.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION} (re-export the model, or upgrade fsg)"
        )
    return header, tensors


def _take(tensors: dict[str, Tensor], key: str, path: Path) -> Tensor:
    try:
        return tensors.pop(key)
    except KeyError:
        raise PackedFormatError(f"{path}: tensor {key!r} is missing") from None


def _layer_entries(header: dict[str, Any], path: Path) -> list[tuple[str, list[int], bool]]:
    entries = header.get("layers")
    if not isinstance(entries, list) or not all(
        isinstance(e, list)
        and len(e) == 3
        and isinstance(e[0], str)
        and isinstance(e[1], list)
        and all(isinstance(d, int) and d > 0 for d in e[1])
        and isinstance(e[2], bool)
        for e in entries
    ):
        raise PackedFormatError(f"{path}: header field 'layers' must be a list of [name, shape, has_scale]")
    return [(name, shape, has_scale) for name, shape, has_scale in entries]


def _binary_weight(
    tensors: dict[str, Tensor], name: str, shape: list[int], has_scale: bool, path: Path
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The layer's ±1 signs, its scale (None without one) and the weight they make."""
    bits = _take(tensors, f"{name}.bits", path)
    n = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (n + 7) // 8:
        raise PackedFormatError(
            f"{path}: bit tensor {name}.bits is {bits.dtype} {list(bits.shape)}, expected uint8 "
            f"[{(n + 7) // 8}] for a layer of shape {shape}"
        )
    if n % 8 and int(bits[-1]) & ((1 << (8 - n % 8)) - 1):
        raise PackedFormatError(f"{path}: bit tensor {name}.bits has non-zero padding bits")
    signs = unpack_signs(bits, shape)
    if not has_scale:
        return signs, None, signs
    scale = _take(tensors, f"{name}.scale", path).float()
    if scale.dim() > 1 or (scale.dim() == 1 and scale.numel() != shape[0]):
        raise PackedFormatError(f"{path}: {name}.scale has shape {list(scale.shape)}, expected [] or [{shape[0]}]")
    # Same product as ``binary_weight()`` (signs * scale), so the values are bit-identical.
    weight = signs * (scale.view(-1, *([1] * (len(shape) - 1))) if scale.dim() else scale)
    return signs, scale, weight


def load_packed(path: str | os.PathLike[str]) -> PackedModel:
    """Rebuild the inference model of a packed file.

    Binary weights are frozen (``weight`` holds ±1, or ±a for bwn, and ``binarize_weights`` is off);
    activations are binarized by the estimator the header names at ``progress = 1``, exactly as the
    trained network evaluates. With float32 storage its logits equal the trained model's.

    Raises:
        PackedFormatError: the file is not safetensors, is truncated or corrupt, lacks the ``"fsg"``
            metadata, has another format or an unsupported ``format_version``, names an unknown
            architecture or estimator, or its tensors do not fit the architecture.
    """
    path = Path(path)
    header, tensors = _read(path)
    entries = _layer_entries(header, path)
    try:
        binarize = header["binarize"]
        act = None
        if header["act_estimator"] is not None:
            params = header["act_estimator"]
            act = build_estimator(get(params["name"]).Params.model_validate(params))
            act.progress = 1.0
        binarizer = Binarizer(binarize["forward"], bool(binarize["per_channel"])) if entries else None
        model = _build(
            header["arch"],
            int(header["num_classes"]),
            int(header["in_channels"]),
            binarizer,
            act,
            bool(binarize["keep_first_last_fp"]),
        )
    except (UnknownModelError, UnknownEstimatorError, ValueError) as err:  # also invalid estimator params
        raise PackedFormatError(f"{path}: {err}") from err
    except (KeyError, TypeError) as err:
        raise PackedFormatError(f"{path}: the header lacks or mistypes field {err}") from err

    expected = _layer_shapes(model)
    found = {name: shape for name, shape, _ in entries}
    if found != expected:
        raise PackedFormatError(f"{path}: binary layers {found} do not match {header['arch']!r}'s {expected}")

    state: dict[str, Tensor] = {}
    binary: dict[str, tuple[Tensor, Tensor | None]] = {}
    for name, shape, has_scale in entries:
        signs, scale, state[f"{name}.weight"] = _binary_weight(tensors, name, shape, has_scale, path)
        binary[name] = (signs, scale)
    for bn in _stackable_bns(model):
        stacked = _take(tensors, bn + _BN_SUFFIX, path).float()
        if stacked.dim() != 2 or stacked.shape[0] != len(_BN_FIELDS):
            raise PackedFormatError(f"{path}: {bn}{_BN_SUFFIX} has shape {list(stacked.shape)}, expected [4, C]")
        for field, row in zip(_BN_FIELDS, stacked, strict=True):
            state[f"{bn}.{field}" if bn else field] = row
    for key, value in model.state_dict().items():
        if key not in state and value.is_floating_point():
            state[key] = _take(tensors, key, path).float()
    if tensors:
        raise PackedFormatError(f"{path}: unexpected tensors {sorted(tensors)} for {header['arch']!r}")
    try:
        model.load_state_dict(state, strict=False)  # only num_batches_tracked stays at its default
    except RuntimeError as err:  # a shape mismatch
        raise PackedFormatError(f"{path}: tensors do not fit {header['arch']!r}: {err}") from err

    for _, layer in binary_layers(model):
        layer.binarize_weights = False
    model.requires_grad_(False)
    return PackedModel(model=model.eval(), header=header, binary=binary)

"""The packed deployment file: exact round trip, documented bit order, size, and format errors."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fsg_core.binary import Binarizer, BinaryLayer, binary_layers
from fsg_core.estimators import get
from fsg_core.models import LayerFactory, build_model
from fsg_core.packed import (
    PackedFormatError,
    load_packed,
    pack_signs,
    save_packed,
    state_dict_bytes,
    unpack_signs,
)

SIDE = 8  # smallest input every architecture accepts (VGG-small pools three times); keeps tests fast


def trained_binary_model(
    arch: str = "resnet20",
    *,
    forward: str = "dorefa",
    per_channel: bool = False,
    estimator: str = "ste",
    act: dict[str, Any] | None = None,
    keep_first_last_fp: bool = False,
    num_classes: int = 10,
    in_channels: int = 3,
) -> tuple[nn.Module, dict[str, Any]]:
    """A binary model with random latent weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    act_est = get(act["name"]).Params.model_validate(act) if act else None
    factory = LayerFactory(
        binarizer=Binarizer(forward, per_channel),  # type: ignore[arg-type]
        estimator=get(estimator)(),
        act_estimator=get(act_est.name)(act_est) if act_est else None,
        keep_first_last_fp=keep_first_last_fp,
    )
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, factory=factory)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, in_channels, SIDE, SIDE) * 2 + 0.3)
    for m in model.modules():  # the packed model is the end-of-training network (BiPer's binary stage)
        if isinstance(m, BinaryLayer):
            for est in (m.estimator, m.act_estimator):
                if est is not None:
                    est.progress = 1.0
    settings = {
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_shape": (in_channels, SIDE, SIDE),
        "mean": [0.5] * in_channels,
        "std": [0.25] * in_channels,
        "binarize": {
            "weights": True,
            "activations": act is not None,
            "forward": forward,
            "per_channel": per_channel,
            "keep_first_last_fp": keep_first_last_fp,
        },
        "act_estimator": act,
    }
    return model.eval(), settings


def _logits(model: nn.Module, in_channels: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(16, in_channels, SIDE, SIDE))


def _packbits_reference(w: np.ndarray) -> np.ndarray:
    """The documented layout, written independently of numpy.packbits: row-major, bit 1 = (w >= 0),
    weight k at value 2**(7 - k % 8) of byte k // 8, zero-padded."""
    bits = (w.reshape(-1) >= 0).astype(np.int64)
    padded = np.zeros(math.ceil(bits.size / 8) * 8, dtype=np.int64)
    padded[: bits.size] = bits
    return (padded.reshape(-1, 8) * (2 ** np.arange(7, -1, -1))).sum(1).astype(np.uint8)


CASES = {
    "resnet20-dorefa": {},
    "vgg_small-dorefa": {"arch": "vgg_small"},
    "resnet20-bwn-per-channel": {"forward": "bwn", "per_channel": True},
    "resnet20-bwn-per-layer": {"forward": "bwn"},
    "resnet20-w1a1": {"act": {"name": "approx_sign"}, "keep_first_last_fp": True},
    "resnet20-biper": {"estimator": "biper"},
    "resnet20-biper-w1a1-biper": {
        "estimator": "biper",
        "act": {"name": "biper", "omega": 3.0, "continuous_fraction": 0.5},
        "keep_first_last_fp": True,
    },
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_round_trip_logits_are_equal(case: str, tmp_path: Path) -> None:
    model, settings = trained_binary_model(**CASES[case])
    path = tmp_path / "model.fsg"
    written = save_packed(model, path, **settings, extra={"case": case})

    packed = load_packed(path)
    assert written == path.stat().st_size
    assert not packed.model.training
    assert torch.equal(_logits(packed.model), _logits(model))
    assert packed.header["extra"] == {"case": case}
    assert packed.header["act_estimator"] == (
        get(settings["act_estimator"]["name"]).Params.model_validate(settings["act_estimator"]).model_dump(mode="json")
        if settings["act_estimator"]
        else None
    )
    assert packed.binary_names == {name for name, _ in binary_layers(model)}
    assert list(tmp_path.iterdir()) == [path], "the atomic write left a temporary file behind"

    # Every stored bit tensor follows the documented layout of the trained layer's binary_weight().
    with safe_open(str(path), framework="np") as f:
        for name, layer in binary_layers(model):
            with torch.no_grad():
                effective = layer.binary_weight().numpy()
            np.testing.assert_array_equal(f.get_tensor(f"{name}.bits"), _packbits_reference(effective))


def test_biper_bits_are_sign_of_sin_not_sign_of_weight(tmp_path: Path) -> None:
    model, settings = trained_binary_model(estimator="biper")
    save_packed(model, tmp_path / "m.fsg", **settings)
    name, layer = next(binary_layers(model))
    omega = layer.estimator.params.omega  # type: ignore[union-attr]
    x = layer.binarizer.latent(layer.weight.detach()).numpy()
    with safe_open(str(tmp_path / "m.fsg"), framework="np") as f:
        bits = f.get_tensor(f"{name}.bits")
    np.testing.assert_array_equal(bits, _packbits_reference(np.sin(omega * x)))
    assert not np.array_equal(bits, _packbits_reference(x)), "with w = 20 the two sign rules must differ"


def test_fp16_storage_is_smaller_and_close(tmp_path: Path) -> None:
    # Binary activations would turn fp16 rounding into sign flips; W1A32 keeps the comparison smooth.
    model, settings = trained_binary_model(keep_first_last_fp=True)
    fp32_bytes = save_packed(model, tmp_path / "fp32.fsg", **settings)
    fp16_bytes = save_packed(model, tmp_path / "fp16.fsg", **settings, fp16=True)
    packed = load_packed(tmp_path / "fp16.fsg")
    assert packed.header["fp_dtype"] == "float16"
    assert fp16_bytes < fp32_bytes
    expected = _logits(model)
    torch.testing.assert_close(_logits(packed.model), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_pack_signs_bit_order_on_a_known_tensor() -> None:
    # 10 weights -> 2 bytes; sign(0) = +1 is bit 1; the last byte's 6 unused low bits are 0.
    w = torch.tensor([[1.0, -2.0, 0.0, -0.5, 3.0], [-1.0, -1.0, 2.0, 0.25, -4.0]])
    expected = _packbits_reference(w.numpy())
    assert expected.tolist() == [0b10101001, 0b10000000]
    assert pack_signs(w).dtype == torch.uint8
    assert pack_signs(w).tolist() == expected.tolist()
    assert torch.equal(unpack_signs(pack_signs(w), w.shape), torch.where(w >= 0, 1.0, -1.0))


def test_resnet20_size_is_at_most_a_21st_of_fp32(tmp_path: Path) -> None:
    model, settings = trained_binary_model("resnet20", num_classes=10, in_channels=3)
    path = tmp_path / "r20.fsg"
    packed_bytes = save_packed(model, path, **settings)
    fp32_bytes = state_dict_bytes(model)
    assert packed_bytes <= fp32_bytes / 21, f"packed {packed_bytes} B vs fp32 {fp32_bytes} B"

    # The binary part is exactly ceil(n / 8) bytes per layer.
    with safe_open(str(path), framework="pt") as f:
        for name, layer in binary_layers(model):
            bits = f.get_tensor(f"{name}.bits")
            assert bits.dtype == torch.uint8
            assert bits.numel() == math.ceil(math.prod(layer.weight.shape) / 8)


def test_state_dict_bytes_is_the_size_of_the_fp32_safetensors_file(tmp_path: Path) -> None:
    model, _ = trained_binary_model()
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "fp32.safetensors")
    assert state_dict_bytes(model) == os.stat(tmp_path / "fp32.safetensors").st_size


def test_save_rejects_settings_that_contradict_the_model(tmp_path: Path) -> None:
    model, settings = trained_binary_model(keep_first_last_fp=True)
    with pytest.raises(ValueError, match="keep_first_last_fp"):
        save_packed(model, tmp_path / "a.fsg", **{**settings, "binarize": {"keep_first_last_fp": False}})
    with pytest.raises(ValueError, match="act_estimator"):
        save_packed(model, tmp_path / "b.fsg", **{**settings, "act_estimator": {"name": "ste"}})
    with pytest.raises(ValueError, match="forward"):
        save_packed(
            model, tmp_path / "c.fsg", **{**settings, "binarize": {"forward": "bwn", "keep_first_last_fp": True}}
        )
    assert list(tmp_path.iterdir()) == []


# --- format errors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, settings = trained_binary_model()
    path = tmp_path_factory.mktemp("packed") / "good.fsg"
    save_packed(model, path, **settings)
    return path


def _rewrite(src: Path, dst: Path, header: dict[str, Any] | None = None, tensors: dict | None = None) -> Path:
    """Copy a packed file with some header fields or tensors replaced (None removes a field)."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["fsg"])
        data = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in (header or {}).items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    data.update(tensors or {})
    save_file(data, dst, metadata={"fsg": json.dumps(meta)})
    return dst


def _corrupt(kind: str, good: Path, dst: Path) -> Path:
    if kind == "truncated":
        dst.write_bytes(good.read_bytes()[:-100])
    elif kind == "random-bytes":
        dst.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        dst.write_bytes(b"")
    elif kind == "no-fsg-metadata":
        save_file({"weight": torch.zeros(3)}, dst)
    elif kind == "other-format":
        _rewrite(good, dst, header={"format": "something-else"})
    elif kind == "format-version-2":
        _rewrite(good, dst, header={"format_version": 2})
    elif kind == "unknown-arch":
        _rewrite(good, dst, header={"arch": "resnet21"})
    elif kind == "no-layers":
        _rewrite(good, dst, header={"layers": None})
    elif kind == "bits-one-byte-short":
        with safe_open(str(good), framework="pt") as f:
            bits = f.get_tensor("stages.0.0.conv1.bits")
        _rewrite(good, dst, tensors={"stages.0.0.conv1.bits": bits[:-1].clone()})
    elif kind == "bits-wrong-dtype":
        _rewrite(good, dst, tensors={"conv1.bits": torch.zeros(54, dtype=torch.float32)})
    else:
        raise AssertionError(kind)
    return dst


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "safetensors"),
        ("random-bytes", "safetensors"),
        ("empty", "safetensors"),
        ("no-fsg-metadata", "'fsg' metadata"),
        ("other-format", "format is 'something-else'"),
        ("format-version-2", "unsupported format_version 2"),
        ("unknown-arch", "unknown architecture 'resnet21'"),
        ("no-layers", "'layers'"),
        ("bits-one-byte-short", "stages.0.0.conv1.bits"),
        ("bits-wrong-dtype", "conv1.bits"),
    ],
)
def test_malformed_files_raise_packed_format_error(kind: str, reason: str, packed_file: Path, tmp_path: Path) -> None:
    bad = _corrupt(kind, packed_file, tmp_path / f"{kind}.fsg")
    with pytest.raises(PackedFormatError, match=re.escape(bad.name)) as info:
        load_packed(bad)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)

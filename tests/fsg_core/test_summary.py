"""The larq-style summary: counts and MACs written as arithmetic from shapes, never snapshots."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from fsg_core.binary import Binarizer
from fsg_core.estimators import get
from fsg_core.models import LayerFactory, build_model
from fsg_core.packed import load_packed, save_packed, state_dict_bytes
from fsg_core.summary import LayerRow, ModelSummary, describe_packed, format_summary, summarize

INPUT = (3, 32, 32)
# ResNet-20 BatchNorm channels: stem, 6 in stage 1, 6 + shortcut in stages 2 and 3, the head's BatchNorm1d.
BN_CHANNELS = 16 + 6 * 16 + 7 * 32 + 7 * 64 + 64


def _resnet20(*, forward: str = "dorefa", per_channel: bool = False, w1a1: bool = False) -> nn.Module:
    factory = LayerFactory(
        binarizer=Binarizer(forward, per_channel),  # type: ignore[arg-type]
        estimator=get("ste")(),
        act_estimator=get("clipped_ste")() if w1a1 else None,
        keep_first_last_fp=w1a1,
    )
    return build_model("resnet20", num_classes=10, in_channels=3, factory=factory)


def _rows(summary: ModelSummary) -> dict[str, LayerRow]:
    return {r.name: r for r in summary.rows}


def test_resnet20_binary_weights_are_every_conv_and_linear_weight() -> None:
    model = _resnet20()
    summary = summarize(model, INPUT)

    from_shapes = sum(math.prod(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    by_hand = (
        3 * 16 * 3 * 3  # stem
        + 6 * 16 * 16 * 3 * 3  # stage 1: 3 blocks x 2 convs
        + 16 * 32 * 3 * 3
        + 5 * 32 * 32 * 3 * 3
        + 16 * 32  # stage 2, with its 1x1 shortcut
        + 32 * 64 * 3 * 3
        + 5 * 64 * 64 * 3 * 3
        + 32 * 64  # stage 3, with its 1x1 shortcut
        + 64 * 10  # head
    )
    assert summary.binary_params == from_shapes == by_hand == 270_896
    # 32-bit: each BatchNorm's weight, bias, running mean and running var, plus the head's bias.
    assert summary.fp_params == 4 * BN_CHANNELS + 10
    assert summary.total_params == by_hand + 4 * BN_CHANNELS + 10
    assert summary.binary_fraction == pytest.approx(by_hand / summary.total_params)


def test_macs_and_memory_of_single_layers() -> None:
    rows = _rows(summarize(_resnet20(), INPUT))

    conv = rows["stages.1.0.conv1"]  # 16 -> 32 channels, 3x3, stride 2: 32x32 -> 16x16
    assert conv.output_shape == (32, 16, 16)
    assert conv.binary_macs == (32 * 16 * 16) * 16 * 3 * 3
    assert conv.fp_macs == 0
    assert conv.memory_bytes == math.ceil(32 * 16 * 3 * 3 / 8)

    shortcut = rows["stages.1.0.shortcut.0"]  # 1x1, stride 2
    assert shortcut.binary_macs == (32 * 16 * 16) * 16 * 1 * 1

    fc = rows["fc"]
    assert (fc.binary_params, fc.fp_params, fc.binary_macs) == (64 * 10, 10, 64 * 10)
    assert fc.memory_bytes == math.ceil(64 * 10 / 8) + 4 * 10

    bn = rows["stages.2.0.bn1"]
    assert (bn.binary_params, bn.fp_params, bn.binary_macs, bn.fp_macs) == (0, 4 * 64, 0, 0)
    assert rows["act1"].memory_bytes == 0


def test_w1a1_keeps_first_and_last_layers_full_precision() -> None:
    summary = summarize(_resnet20(w1a1=True), INPUT)
    rows = _rows(summary)

    stem, fc = rows["conv1"], rows["fc"]
    assert (stem.binary_params, stem.fp_params) == (0, 3 * 16 * 3 * 3)
    assert (stem.binary_macs, stem.fp_macs) == (0, (16 * 32 * 32) * 3 * 3 * 3)
    assert (fc.binary_params, fc.fp_params, fc.fp_macs) == (0, 64 * 10 + 10, 64 * 10)
    assert summary.binary_params == 270_896 - 3 * 16 * 3 * 3 - 64 * 10
    assert summary.fp_macs == stem.fp_macs + fc.fp_macs


def test_bwn_scales_count_as_32_bit_values() -> None:
    per_channel = _rows(summarize(_resnet20(forward="bwn", per_channel=True), INPUT))
    per_layer = _rows(summarize(_resnet20(forward="bwn"), INPUT))
    assert per_channel["stages.2.1.conv2"].fp_params == 64
    assert per_layer["stages.2.1.conv2"].fp_params == 1
    assert per_channel["fc"].fp_params == 10 + 10  # bias + one scale per output


def test_totals_and_ratios_follow_from_the_rows() -> None:
    summary = summarize(_resnet20(), INPUT)
    assert summary.memory_bytes == sum(math.ceil(r.binary_params / 8) + 4 * r.fp_params for r in summary.rows)
    assert summary.fp32_memory_bytes == 4 * summary.total_params
    assert summary.compression_ratio == pytest.approx(summary.fp32_memory_bytes / summary.memory_bytes)
    assert summary.memory_ratio == pytest.approx(1 / summary.compression_ratio)


def test_full_precision_mode_counts_nothing_binary() -> None:
    model = _resnet20()
    for m in model.modules():
        if hasattr(m, "binarize_weights"):
            m.binarize_weights = False
    summary = summarize(model, INPUT)
    assert summary.binary_params == 0 and summary.binary_macs == 0
    assert summary.fp_params == 270_896 + 4 * BN_CHANNELS + 10


def test_summarize_restores_the_training_mode() -> None:
    model = _resnet20().train()
    summarize(model, INPUT)
    assert model.training


def test_as_dict_is_json_and_round_trips() -> None:
    summary = summarize(_resnet20(w1a1=True), INPUT)
    data = json.loads(json.dumps(summary.as_dict()))
    assert data["totals"]["binary_params"] == summary.binary_params
    assert data["layers"][0]["memory_bytes"] == summary.rows[0].memory_bytes
    assert ModelSummary.from_dict(data) == summary


def test_format_summary_shows_every_layer_and_the_totals() -> None:
    summary = summarize(_resnet20(), INPUT)
    text = format_summary(summary)
    for header in ("Layer", "Output shape", "# 1-bit", "# 32-bit", "Memory (kB)", "1-bit MACs", "32-bit MACs"):
        assert header in text
    for row in summary.rows:
        assert row.name in text
    assert f"{summary.binary_params:,}" in text
    assert f"{summary.compression_ratio:.2f}x" in text


@pytest.fixture()
def packed_resnet20(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = _resnet20(w1a1=True).eval()
    path = tmp_path / "r20.fsg"
    save_packed(
        model,
        path,
        arch="resnet20",
        num_classes=10,
        in_channels=3,
        input_shape=INPUT,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        binarize={"keep_first_last_fp": True},
        act_estimator={"name": "clipped_ste"},
    )
    return model, path


def test_packed_model_summary_equals_the_training_model_summary(packed_resnet20: tuple[nn.Module, Path]) -> None:
    model, path = packed_resnet20
    packed = load_packed(path)
    assert summarize(packed.model, INPUT, binary_names=packed.binary_names) == summarize(model, INPUT)
    # Frozen weights are not binarized any more: without the names, nothing counts as 1-bit.
    assert summarize(packed.model, INPUT).binary_params == 0


def test_describe_packed(packed_resnet20: tuple[nn.Module, Path]) -> None:
    model, path = packed_resnet20
    info = describe_packed(path)
    json.dumps(info)

    assert info["file_bytes"] == os.stat(path).st_size
    assert info["fp32_state_dict_bytes"] == state_dict_bytes(model)
    assert info["compression_ratio"] == info["fp32_state_dict_bytes"] / info["file_bytes"]
    assert info["summary"]["totals"]["binary_params"] == 270_896 - 3 * 16 * 3 * 3 - 64 * 10
    # The summary's packed memory is exactly the file's data section (file = 8-byte length + header + data).
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert info["summary"]["totals"]["memory_bytes"] == info["file_bytes"] - 8 - header_len
    assert format_summary(ModelSummary.from_dict(info["summary"]))
    assert torch.equal(torch.tensor(info["header"]["input_shape"]), torch.tensor(INPUT))

"""The checkpoint directory: what is written is read back, the packed model only in the binarized phase,
and a place without a checkpoint reads as None."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fsg_core.checkpoint import CheckpointError
from fsg_core.checkpoint_dir import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    PACKED_FILE,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from fsg_core.packed import load_packed
from fsg_core.spec import TrainSpec
from fsg_core.train import Components, build_components
from tests.conftest import tiny_spec_dict


@pytest.fixture(scope="module")
def components() -> Components:
    return build_components(TrainSpec.model_validate(tiny_spec_dict()), torch.device("cpu"))


def _state(components: Components, phase: str, epoch: int) -> dict[str, Any]:
    return {"model": components.model.state_dict(), "phase": phase, "epoch": epoch}


def test_binary_phase_round_trip(tmp_path: Path, components: Components) -> None:
    metrics = {"phase": "binary", "epoch": 3, "val_acc": 0.5, "train_loss": 1.25}
    written = write_checkpoint_dir(tmp_path / "ckpt", metrics, _state(components, "binary", 3), components)

    found = read_checkpoint_dir(tmp_path / "ckpt")
    assert found == written
    assert found.checkpoint_path == tmp_path / "ckpt" / CHECKPOINT_FILE
    assert found.checkpoint_bytes == found.checkpoint_path.stat().st_size
    assert found.packed_path == tmp_path / "ckpt" / PACKED_FILE
    assert found.packed_bytes == found.packed_path.stat().st_size
    assert found.load_metrics() == metrics
    state = found.load_state()
    assert (state["phase"], state["epoch"]) == ("binary", 3)
    for name, tensor in components.model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), name
    # The packed file is a working 1-bit model of the same network.
    packed = load_packed(found.packed_path)
    assert packed.model(torch.zeros(2, *components.splits.input_shape)).shape == (2, 10)


def test_full_precision_phase_writes_no_packed_model(tmp_path: Path, components: Components) -> None:
    written = write_checkpoint_dir(
        tmp_path, {"phase": "pretrain", "epoch": 1}, _state(components, "pretrain", 1), components
    )
    assert written.packed_path is None and written.packed_bytes is None
    assert not (tmp_path / PACKED_FILE).exists()
    assert read_checkpoint_dir(tmp_path) == written


def test_without_components_no_packed_model_even_when_binary(tmp_path: Path, components: Components) -> None:
    written = write_checkpoint_dir(tmp_path, {"phase": "binary", "epoch": 1}, _state(components, "binary", 1), None)
    assert written.packed_path is None


@pytest.mark.parametrize("where", ["missing", "empty", "file", "none", "blank"])
def test_no_checkpoint_reads_as_none(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / METRICS_FILE).write_text("{}")  # metrics alone are no checkpoint
    path = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "file": tmp_path / "file"}.get(where)
    assert read_checkpoint_dir(path if where != "blank" else "") is None


def test_a_run_history_reads_as_its_last_epoch(tmp_path: Path, components: Components) -> None:
    """``fsg train``'s output directory keeps the whole history in metrics.json."""
    write_checkpoint_dir(tmp_path, {"phase": "binary", "epoch": 2}, _state(components, "binary", 2), None)
    rows = [{"phase": "binary", "epoch": 1}, {"phase": "binary", "epoch": 2}]
    (tmp_path / METRICS_FILE).write_text(json.dumps(rows))
    found = read_checkpoint_dir(tmp_path)
    assert found is not None and found.load_metrics() == rows[-1]


def test_unreadable_metrics_name_the_file(tmp_path: Path, components: Components) -> None:
    found = write_checkpoint_dir(tmp_path, {"phase": "pretrain", "epoch": 1}, _state(components, "pretrain", 1), None)
    (tmp_path / METRICS_FILE).unlink()
    assert found.load_metrics() is None
    (tmp_path / METRICS_FILE).write_text("{half")
    with pytest.raises(CheckpointError, match=METRICS_FILE):
        found.load_metrics()
    (tmp_path / METRICS_FILE).write_text("3")
    with pytest.raises(CheckpointError, match="int"):
        found.load_metrics()

"""``fsg export`` on a trained model, and ``fsg download --format onnx`` from the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.conftest import tiny_spec_dict

ort = pytest.importorskip("onnxruntime")
runner = CliRunner()


def test_a_trained_model_exported_to_onnx_predicts_what_fsg_measured(tmp_path: Path) -> None:
    from fsg_core.data import build_splits
    from fsg_core.spec import TrainSpec

    spec = tiny_spec_dict(epochs=1, binarize={"activations": True, "keep_first_last_fp": True})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", str(tmp_path / "spec.json"), "--out", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["export", str(out / "model.packed.safetensors"), "--fp16"])
    assert result.exit_code == 0, result.output
    onnx_file = out / "model.onnx"  # the default name, beside the packed file
    assert "model.onnx" in result.output and f"{onnx_file.stat().st_size:,} bytes" in result.output

    # ONNX Runtime, given the raw test images, gets the test accuracy the run reported.
    train_spec = TrainSpec.model_validate(spec)
    splits = build_splits(train_spec.data, seed=train_spec.seed)
    mean = np.asarray(splits.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(splits.std, np.float32).reshape(1, -1, 1, 1)
    raw = splits.test.images.numpy() * std + mean  # the splits hold normalised images
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": raw.astype(np.float32)})
    correct = int((logits.argmax(1) == splits.test.labels.numpy()).sum())
    rows = json.loads((out / "metrics.json").read_text())
    assert correct == round(rows[-1]["test_acc"] * len(splits.test))


def test_export_errors_are_clear_and_leave_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.packed.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = runner.invoke(app, ["export", str(bad), "--out", str(tmp_path / "bad.onnx")])
    assert result.exit_code == 1 and "bad.packed.safetensors" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.packed.safetensors"]
    missing = runner.invoke(app, ["export", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    wrong = runner.invoke(app, ["export", str(bad), "--format", "tflite"])
    assert wrong.exit_code == 2 and "--format" in wrong.output


def test_download_onnx(api: Any, submit: Any, worker: Any, artifacts: Any, tmp_path: Path) -> None:
    job = submit()
    worker.start(job["id"])
    packed, full = artifacts(job["id"], 1)
    worker.checkpoint(job["id"], epoch=1, packed=packed, full=full)
    dest = tmp_path / "m.onnx"
    result = runner.invoke(app, ["download", job["id"], "--format", "onnx", "--out", str(dest)])
    assert result.exit_code == 0, result.output
    assert dest.read_bytes() == (packed.parent / "model.onnx").read_bytes()
    ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    wrong = runner.invoke(app, ["download", job["id"], "--format", "zip"])
    assert wrong.exit_code != 0 and "packed, onnx, full" in wrong.output

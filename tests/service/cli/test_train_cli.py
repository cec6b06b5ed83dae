"""``fsg train``, ``fsg summary`` and ``fsg estimators`` from the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from fsg_core.estimators import names
from fsg_core.packed import load_packed
from service.cli import app
from tests.conftest import tiny_spec_dict

runner = CliRunner()


def _write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


def test_train_writes_metrics_checkpoint_and_a_packed_model_that_reproduces_test_accuracy(tmp_path: Path) -> None:
    spec = _write(tmp_path / "spec.json", tiny_spec_dict(epochs=2))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(spec), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output

    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    with (out / "metrics.csv").open() as fh:
        assert [row["phase"] for row in csv.DictReader(fh)] == ["pretrain", "binary", "binary"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert (out / "checkpoint.pt").stat().st_size > 0

    # The packed model alone reproduces the accuracy the run reported on its test split.
    from fsg_core.data import build_splits
    from fsg_core.spec import TrainSpec

    packed = load_packed(out / "model.packed.safetensors")
    test = build_splits(TrainSpec.model_validate(tiny_spec_dict()).data, seed=3).test
    with torch.no_grad():
        correct = int((packed.model(test.images).argmax(1) == test.labels).sum())
    assert correct == round(rows[-1]["test_acc"] * len(test))


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    short = _write(tmp_path / "short.json", tiny_spec_dict(epochs=1))
    assert runner.invoke(app, ["train", str(short), "--out", str(out), "-q"]).exit_code == 0
    longer = _write(tmp_path / "long.json", tiny_spec_dict(epochs=2))
    result = runner.invoke(app, ["train", str(longer), "--out", str(out), "-q", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    rows = json.loads((out / "metrics.json").read_text())
    # The resumed process reports only the epoch it ran; pretraining and epoch 1 were not redone.
    assert [(r["phase"], r["epoch"]) for r in rows] == [("binary", 2)]


def test_invalid_spec_names_the_field_and_exits_2(tmp_path: Path) -> None:
    bad = tiny_spec_dict(epochs=0)
    bad["estimator"] = {"name": "fsg", "alpha": 3}
    result = runner.invoke(app, ["train", str(_write(tmp_path / "bad.json", bad))])
    assert result.exit_code == 2
    assert "epochs" in result.output and "estimator.fsg.alpha" in result.output


def test_missing_cifar_archive_is_a_clear_error(tmp_path: Path) -> None:
    spec = tiny_spec_dict(data={"dataset": "cifar10", "root": str(tmp_path)})
    result = runner.invoke(app, ["train", str(_write(tmp_path / "c.json", spec)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "cifar-10" in result.output


def test_summary_json_reports_size_and_compression(tmp_path: Path) -> None:
    spec = _write(tmp_path / "spec.json", tiny_spec_dict(epochs=1))
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", str(spec), "--out", str(out), "-q"]).exit_code == 0
    packed = out / "model.packed.safetensors"
    result = runner.invoke(app, ["summary", str(packed), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["file_bytes"] == packed.stat().st_size
    assert info["compression_ratio"] == info["fp32_state_dict_bytes"] / info["file_bytes"]
    text = runner.invoke(app, ["summary", str(packed)])
    assert text.exit_code == 0 and "compression" in text.output


def test_summary_of_a_corrupt_file_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = runner.invoke(app, ["summary", str(bad)])
    assert result.exit_code == 1
    assert "bad.safetensors" in result.output


def test_estimators_lists_every_registered_name_with_defaults() -> None:
    result = runner.invoke(app, ["estimators", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == names()
    fsg = next(r for r in rows if r["name"] == "fsg")
    alpha = next(p for p in fsg["params"] if p["name"] == "alpha")
    assert alpha["default"] == 0.9
    table = runner.invoke(app, ["estimators"])
    assert all(n in table.output for n in names())

"""The training loop: determinism, bit-exact resume, phases, summaries, learning on real data."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fsg_core.binary import binary_layers
from fsg_core.checkpoint import load_checkpoint
from fsg_core.reporting import FileReporter, Reporter
from fsg_core.spec import TrainSpec
from fsg_core.train import fit, last_k, summarize_history
from tests.conftest import tiny_spec_dict

TIMING = {"step_time_s", "epoch_time_s"}
FSG_CPU = {"name": "fsg", "kernel": "fused"}  # the C++ kernel, or an error: never a silent fallback


def _metrics(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "estimator", [{"name": "ste"}, FSG_CPU, {"name": "metaquant", "variant": "lstmfc", "hidden": 4}]
)
def test_same_seed_gives_identical_metrics_and_weights(estimator: dict[str, Any]) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(estimator))
    a, b = fit(spec), fit(spec)
    assert _metrics(a.history) == _metrics(b.history)
    wa, wb = _weights(a.model), _weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_different_seed_changes_the_run() -> None:
    a = fit(TrainSpec.model_validate(tiny_spec_dict(seed=1)))
    b = fit(TrainSpec.model_validate(tiny_spec_dict(seed=2)))
    assert _metrics(a.history) != _metrics(b.history)


class _Crash(Exception):
    pass


class _CrashAfter(Reporter):
    """Lets ``n`` epoch reports through, then fails like a killed process would."""

    def __init__(self, inner: Reporter, n: int) -> None:
        self.inner, self.n = inner, n

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self.inner.report(metrics, checkpoint)
        self.n -= 1
        if self.n == 0:
            raise _Crash


@pytest.mark.parametrize("crash_after", [1, 3])  # inside pre-training, inside binarized training
@pytest.mark.parametrize("estimator", [{"name": "reste"}, FSG_CPU])
def test_resume_after_a_crash_ends_bit_identical(tmp_path, estimator: dict[str, Any], crash_after: int) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(estimator, epochs=3, init={"pretrain_epochs": 2}))
    straight = fit(spec)

    files = FileReporter(tmp_path)
    with pytest.raises(_Crash):
        fit(spec, _CrashAfter(files, crash_after))
    resumed = fit(spec, FileReporter(tmp_path), resume=files.checkpoint_path)

    ws, wr = _weights(straight.model), _weights(resumed.model)
    assert ws.keys() == wr.keys()
    assert all(torch.equal(ws[k], wr[k]) for k in ws), [k for k in ws if not torch.equal(ws[k], wr[k])]
    assert _metrics(straight.history) == _metrics(resumed.history)
    if estimator["name"] == "fsg":
        sa = straight.components.estimator.state_dict()
        sb = resumed.components.estimator.state_dict()
        assert torch.equal(sa["extra"]["history"]["buffer"], sb["extra"]["history"]["buffer"])
        for ma, mb in zip(sa["modules"], sb["modules"], strict=True):
            assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_phases_are_reported_in_order_with_the_metrics_keys() -> None:
    result = fit(TrainSpec.model_validate(tiny_spec_dict(FSG_CPU, epochs=2, init={"pretrain_epochs": 1})))
    phases = [(r["phase"], r["epoch"]) for r in result.history]
    assert phases == [("pretrain", 1), ("binary", 1), ("binary", 2)]
    binary = result.history[-1]
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "step_time_s", "flip_rate", "grad_norm"):
        assert key in binary and math.isfinite(binary[key]), key
    for key in ("fast_rms", "slow_rms", "fast_scale"):
        assert math.isfinite(binary[key]), key
    assert "flip_rate" not in result.history[0]  # pre-training has no binary weights
    # The trained model is returned binarized and in eval mode.
    assert not result.model.training
    assert all(layer.binarize_weights for _, layer in binary_layers(result.model))


def test_lr_schedule_is_applied_per_epoch() -> None:
    spec = tiny_spec_dict(epochs=3, schedule={"kind": "step", "milestones": [1, 2], "gamma": 0.5})
    spec["init"] = {"pretrain_epochs": 0}
    result = fit(TrainSpec.model_validate(spec))
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_summary_reports_best_and_last_k() -> None:
    rows = [{"phase": "pretrain", "val_acc": 0.99, "test_acc": 0.99, "train_loss": 0.1}] + [
        {"phase": "binary", "val_acc": v, "test_acc": t, "train_loss": 1.0 - i / 20, "step_time_s": 0.5}
        for i, (v, t) in enumerate(zip([0.1 * i for i in range(12)], [0.05 * i for i in range(12)], strict=True))
    ]
    s = summarize_history(rows)
    assert s["epochs"] == 12
    assert s["best_val_acc"] == pytest.approx(1.1) and s["best_val_epoch"] == 12
    assert s["test_acc_at_best_val"] == pytest.approx(0.55)
    # 12 binarized epochs: the window is a third of them, so the collapse at the start stays out.
    assert s["last_k"] == 4 and s["last_k_test_acc"] == pytest.approx(sum(0.05 * i for i in range(8, 12)) / 4)
    assert s["final_train_loss"] == pytest.approx(1.0 - 11 / 20)


@pytest.mark.parametrize(("epochs", "k"), [(1, 1), (2, 1), (8, 2), (20, 6), (30, 10), (200, 10)])
def test_the_last_k_window_is_at_most_a_third_of_the_epochs(epochs: int, k: int) -> None:
    assert last_k(epochs) == k


def test_init_from_another_runs_checkpoint_skips_pretraining(tmp_path) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(epochs=1))
    first = fit(spec, FileReporter(tmp_path / "a"))
    again = tiny_spec_dict(epochs=1, init={"pretrain_epochs": 0, "checkpoint": str(tmp_path / "a" / "checkpoint.pt")})
    second = fit(TrainSpec.model_validate(again))
    assert [r["phase"] for r in second.history] == ["binary"]
    assert second.components.model is second.model
    # Starting weights came from the file: the untouched BN buffers of the stem equal the first run's end state.
    assert first.history[-1]["phase"] == "binary"


def test_init_checkpoint_of_another_architecture_is_a_clear_error(tmp_path) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(epochs=1))
    fit(spec, FileReporter(tmp_path))
    other = tiny_spec_dict(
        model={"arch": "resnet32"}, init={"pretrain_epochs": 0, "checkpoint": str(tmp_path / "checkpoint.pt")}
    )
    with pytest.raises(ValueError, match="does not match resnet32"):
        fit(TrainSpec.model_validate(other))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [{"name": "ste"}, {"name": "fsg"}])
def test_w1a32_resnet20_learns_digits(estimator: dict[str, Any]) -> None:
    """Real data, real protocol: full-precision pre-training, then binarized training.

    Chance is 10%; both estimators must end far above it on the held-out validation split.
    """
    spec = tiny_spec_dict(
        estimator,
        epochs=4,
        batch_size=64,
        max_steps_per_epoch=None,
        schedule={"kind": "step", "milestones": [3]},
        init={"pretrain_epochs": 4, "pretrain_optimizer": {"name": "adam", "lr": 3e-3}},
    )
    result = fit(TrainSpec.model_validate(spec))
    assert result.summary["best_val_acc"] > 0.6, result.history
    assert result.summary["final_train_loss"] < result.history[len(result.history) - 4]["train_loss"] + 1.0


# --- mixed precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_resumes_bit_identical(tmp_path, precision: str) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(epochs=2, init={"pretrain_epochs": 0}, precision=precision))
    straight = fit(spec)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in straight.history)

    files = FileReporter(tmp_path)
    with pytest.raises(_Crash):
        fit(spec, _CrashAfter(files, 1))
    resumed = fit(spec, FileReporter(tmp_path), resume=files.checkpoint_path)
    ws, wr = _weights(straight.model), _weights(resumed.model)
    assert all(torch.equal(ws[k], wr[k]) for k in ws), [k for k in ws if not torch.equal(ws[k], wr[k])]
    assert _metrics(straight.history) == _metrics(resumed.history)  # fp16: loss_scale included
    assert all(p.dtype == torch.float32 for p in resumed.model.parameters())


def test_fp16_loss_scale_is_checkpointed_and_restored(tmp_path) -> None:
    spec = TrainSpec.model_validate(tiny_spec_dict(epochs=3, init={"pretrain_epochs": 0}, precision="fp16"))
    files = FileReporter(tmp_path)
    with pytest.raises(_Crash):
        fit(spec, _CrashAfter(files, 1))
    state = load_checkpoint(files.checkpoint_path)
    assert set(state["scaler"]) >= {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    assert state["scaler"]["scale"] == state["history"][-1]["loss_scale"]
    # A scale the run would never reach by itself in 3 steps (it starts at 2**16 and only halves):
    # the resumed epochs must start from it.
    state["scaler"]["scale"] = 3.0
    resumed = fit(spec, resume=state)
    assert [r["loss_scale"] for r in resumed.history[1:]] == [3.0, 3.0]


def test_fp16_grad_norm_is_of_unscaled_gradients() -> None:
    runs = {p: fit(TrainSpec.model_validate(tiny_spec_dict(epochs=1, precision=p))) for p in ("fp32", "fp16")}
    fp32, fp16 = (runs[p].history[-1]["grad_norm"] for p in ("fp32", "fp16"))
    assert runs["fp16"].history[-1]["loss_scale"] >= 2.0**10
    assert 0.2 < fp16 / fp32 < 5  # a scaled norm would be loss_scale times larger


def test_bf16_learned_estimator_reads_float32_gradients(monkeypatch) -> None:
    from fsg_core.estimators.lookahead import LookaheadEstimator

    seen: set[torch.dtype] = set()
    after_backward = LookaheadEstimator.after_backward

    def spy(self: LookaheadEstimator, group: Any = None) -> bool:
        seen.update(layer.captured_grad.dtype for _, layer in self.layers if layer.captured_grad is not None)
        return after_backward(self, group)

    monkeypatch.setattr(LookaheadEstimator, "after_backward", spy)
    result = fit(TrainSpec.model_validate(tiny_spec_dict(FSG_CPU, precision="bf16", init={"pretrain_epochs": 0})))
    assert seen == {torch.float32}
    est = result.components.estimator.state_dict()
    assert est["extra"]["history"]["buffer"].dtype == torch.float32
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_packed_model_of_a_bf16_run_gives_the_trained_models_logits(tmp_path) -> None:
    from fsg_core.packed import load_packed

    result = fit(TrainSpec.model_validate(tiny_spec_dict(precision="bf16")))
    result.save_packed(tmp_path / "model.packed.safetensors")
    packed = load_packed(tmp_path / "model.packed.safetensors")
    x = result.components.splits.test.images[:16]
    with torch.no_grad():
        assert torch.equal(packed.model(x), result.model(x))


def test_bipers_continuous_stage_is_reported_apart_from_the_binary_figures() -> None:
    rows = [
        {"phase": "binary", "val_acc": 0.99, "test_acc": 0.98, "train_loss": 0.1, "biper_stage": 1.0},
        {"phase": "binary", "val_acc": 0.97, "test_acc": 0.96, "train_loss": 0.2, "biper_stage": 1.0},
        {"phase": "binary", "val_acc": 0.60, "test_acc": 0.55, "train_loss": 0.9, "biper_stage": 2.0},
        {"phase": "binary", "val_acc": 0.70, "test_acc": 0.65, "train_loss": 0.8, "biper_stage": 2.0},
    ]
    s = summarize_history(rows)
    assert (s["epochs"], s["continuous_epochs"]) == (2, 2)
    assert s["best_val_acc"] == pytest.approx(0.70) and s["best_val_epoch"] == 2  # rows without "epoch": counted
    numbered = [dict(r, epoch=i + 1) for i, r in enumerate(rows)]
    assert summarize_history(numbered)["best_val_epoch"] == 4  # the run's epoch, first stage included
    assert s["continuous_best_val_acc"] == pytest.approx(0.99)
    assert summarize_history(rows[:2]) == {"continuous_epochs": 2, "continuous_best_val_acc": pytest.approx(0.99)}

"""``fit(spec, reporter)``: the one training loop, shared by ``fsg train``, the tests and Ray workers.

Reads top to bottom: build (data, model, estimator) -> maybe resume -> full-precision pre-training
(W1A32 protocol) -> binarized training, each epoch [lr from the schedule -> train -> evaluate -> report
-> checkpoint on rank 0] -> summary (best and last-k). Data parallelism is explicit: every rank builds
the same model from the same seed, trains on its slice of each global batch, and gradients (and a
learned estimator's ``g`` and meta-gradients) are averaged with one all-reduce per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg_core import distributed as dist_utils
from fsg_core.binary import Binarizer, binary_layers, set_binary
from fsg_core.checkpoint import CheckpointError, load_checkpoint, load_weights
from fsg_core.data import Splits, TensorSplit, build_splits, iterate_batches, should_pin_memory
from fsg_core.estimators import Estimator, LearnedEstimator, build_estimator, get
from fsg_core.models import LayerFactory, build_model
from fsg_core.reporting import Reporter
from fsg_core.schedules import learning_rate
from fsg_core.spec import OptimSpec, ScheduleSpec, TrainSpec

__all__ = ["Components", "FitResult", "build_components", "evaluate", "fit", "save_packed_model", "summarize_history"]

PHASES = ("pretrain", "binary")


@dataclass
class Components:
    """What a run is built from; ``build_components`` makes them identically on every rank."""

    spec: TrainSpec
    device: torch.device
    splits: Splits
    model: nn.Module
    estimator: Estimator
    act_estimator: Estimator | None

    def save_packed(self, path: str | Path, *, fp16: bool = False) -> int:
        """Write the 1-bit deployment artifact of the model as it is now; returns its size in bytes."""
        return save_packed_model(self, path, fp16=fp16)


@dataclass
class FitResult:
    """What ``fit`` returns: per-epoch metrics, the summary, and the trained model."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module
    components: Components
    final_state: dict[str, Any] | None = field(default=None, repr=False)

    def save_packed(self, path: str | Path, *, fp16: bool = False) -> int:
        """Write the 1-bit deployment artifact of the trained model; returns its size in bytes."""
        return save_packed_model(self.components, path, fp16=fp16)


def save_packed_model(c: Components, path: str | Path, *, fp16: bool = False) -> int:
    """Write the 1-bit deployment artifact of ``c.model`` as it is now; returns its size in bytes."""
    from fsg_core.packed import save_packed

    model = c.model
    was_training = model.training
    model.eval()
    try:
        return save_packed(
            model,
            path,
            arch=c.spec.model.arch,
            num_classes=c.splits.num_classes if c.spec.model.num_classes is None else c.spec.model.num_classes,
            in_channels=c.splits.input_shape[0],
            input_shape=c.splits.input_shape,
            mean=c.splits.mean,
            std=c.splits.std,
            binarize=c.spec.binarize.model_dump(mode="json"),
            act_estimator=None if c.act_estimator is None else c.act_estimator.params.model_dump(mode="json"),
            # Kept small: the header counts against the packed size goal (ResNet-20 <= 1/21 of fp32).
            extra={"estimator": c.spec.estimator.name},
            fp16=fp16,
        )
    finally:
        model.train(was_training)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _activation_estimator(spec: TrainSpec) -> Estimator | None:
    if not spec.binarize.activations:
        return None
    params = spec.binarize.activation_estimator
    if params is None:
        cls = get(spec.estimator.name)
        params = (
            spec.estimator if not cls.learned else get("clipped_ste").Params.model_validate({"name": "clipped_ste"})
        )
    return build_estimator(params)


def build_components(spec: TrainSpec, device: torch.device | None = None) -> Components:
    """Data, model and estimators for ``spec``; the same on every rank (seeded)."""
    device = device or resolve_device(spec.device)
    splits = build_splits(spec.data, spec.seed)
    estimator = build_estimator(spec.estimator)
    act_estimator = _activation_estimator(spec)
    factory = LayerFactory(
        binarizer=Binarizer(spec.binarize.forward, spec.binarize.per_channel) if spec.binarize.weights else None,
        estimator=estimator if spec.binarize.weights else None,
        act_estimator=act_estimator,
        keep_first_last_fp=spec.binarize.keep_first_last_fp,
    )
    torch.manual_seed(spec.seed)
    num_classes = spec.model.num_classes or splits.num_classes
    if num_classes < splits.num_classes:
        raise ValueError(f"model.num_classes={num_classes} is below the dataset's {splits.num_classes} classes")
    model = build_model(spec.model.arch, num_classes=num_classes, in_channels=splits.input_shape[0], factory=factory)
    if spec.init.checkpoint:
        weights = load_weights(spec.init.checkpoint)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"init.checkpoint {spec.init.checkpoint!r} does not match {spec.model.arch}: {exc}"
            ) from exc
    return Components(spec, device, splits, model.to(device), estimator, act_estimator)


def build_optimizer(params: list[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def _lr(base: OptimSpec, sched: ScheduleSpec, epoch: float, total: int) -> float:
    return learning_rate(
        base.lr,
        epoch,
        total_epochs=total,
        kind=sched.kind,
        milestones=sched.milestones,
        gamma=sched.gamma,
        warmup_epochs=sched.warmup_epochs,
        min_lr=sched.min_lr,
    )


def _epoch_seed(seed: int, phase: str, epoch: int) -> int:
    # Batches depend only on (seed, phase, epoch): a resumed run draws exactly the batches it would have.
    return (seed * 1_000_003 + PHASES.index(phase) * 100_003 + epoch) % (2**63 - 1)


def _steps_per_epoch(spec: TrainSpec, n: int) -> int:
    steps = n // spec.batch_size if n >= spec.batch_size else 1
    return min(steps, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else steps


def _autocast(spec: TrainSpec, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward's mixed precision. Only the model's forward and loss run under it: the weights,
    optimizer states, learned estimators' hypernetworks and the gradients they read stay float32
    (autocast's casts hand float32 gradients back to float32 leaves), and evaluation runs in float32
    like the packed inference model."""
    if spec.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if spec.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: TensorSplit, batch_size: int, device: torch.device, group: Any = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``split``, sharded over ranks and summed back."""
    if len(split) == 0:
        return math.nan, math.nan
    model.eval()
    rank, world = dist_utils.rank(), dist_utils.world_size(group)
    index = torch.arange(len(split))[rank::world]
    pin = should_pin_memory(split.images.device, device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for part in index.split(batch_size):
        x, y = split.images[part], split.labels[part]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.numel()
    if dist_utils.is_distributed(group):
        torch.distributed.all_reduce(sums, group=group)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def _binary_signs(model: nn.Module) -> Tensor | None:
    """Every binary weight's sign as one flat bool tensor (from ``W`` itself: no tanh, no binarizer)."""
    layers = [layer for _, layer in binary_layers(model) if layer.binarize_weights]
    if not layers:
        return None
    return torch.cat([layer.sign_bits().reshape(-1) for layer in layers])


class _StepTimer:
    """Sums the time of training steps without waiting on the device in between.

    On CUDA, events recorded around each step and read once, at the end of the epoch (a synchronise
    per step would cost the overlap of host and device); on a CPU, ``perf_counter``.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[Any, Any]] = []
        self.total_s = 0.0
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((self._start, end))
        else:
            self.total_s += time.perf_counter() - self._start

    def seconds(self) -> float:
        if self.cuda and self.events:
            self.events[-1][1].synchronize()
            self.total_s += sum(start.elapsed_time(end) for start, end in self.events) / 1000
            self.events = []
        return self.total_s


class _Trainer:
    """One phase of training: its optimizer, schedule and epoch loop."""

    def __init__(
        self, c: Components, phase: str, reporter: Reporter, group: Any, history: list[dict[str, Any]]
    ) -> None:
        self.c, self.phase, self.reporter, self.group, self.history = c, phase, reporter, group, history
        spec = c.spec
        pre = phase == "pretrain"
        self.optim_spec = spec.init.pretrain_optimizer if pre else spec.optimizer
        self.sched_spec = spec.init.pretrain_schedule if pre else spec.schedule
        self.epochs = spec.init.pretrain_epochs if pre else spec.epochs
        self.estimator = c.estimator if not pre else None
        self.learned = isinstance(self.estimator, LearnedEstimator)
        set_binary(c.model, not pre)
        if self.learned:
            assert isinstance(self.estimator, LearnedEstimator)
            torch.manual_seed(spec.seed + 1)  # hypernetwork init independent of what ran before
            self.estimator.setup(list(binary_layers(c.model)))
            self.estimator.to(c.device)
        self.params = [p for p in c.model.parameters() if p.requires_grad]
        self.binary_params = {id(layer.weight) for _, layer in binary_layers(c.model)} if not pre else set()
        self.optimizer = build_optimizer(self.params, self.optim_spec)
        self.steps = _steps_per_epoch(spec, len(c.splits.train))
        self.scaler = torch.amp.GradScaler(c.device.type, enabled=spec.precision == "fp16")

    def state(self, next_epoch: int) -> dict[str, Any]:
        est = self.c.estimator
        cuda = self.c.device.type == "cuda"
        return {
            "phase": self.phase,
            "epoch": next_epoch,
            "model": self.c.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "estimator": est.state_dict() if isinstance(est, LearnedEstimator) and self.phase == "binary" else None,
            "history": list(self.history),
            "spec": self.c.spec.model_dump_json(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.c.device) if cuda else None,
            # fp16's loss scale and growth tracker ({} when the scaler is off): a resumed run scales
            # its losses exactly as the uninterrupted one would.
            "scaler": self.scaler.state_dict(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.learned and state.get("estimator") is not None:
            assert isinstance(self.estimator, LearnedEstimator)
            self.estimator.load_state_dict(state["estimator"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.c.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.c.device)

    def _set_lr(self, epoch_float: float) -> float:
        lr = _lr(self.optim_spec, self.sched_spec, epoch_float, self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self, epoch: int) -> dict[str, float]:
        c, spec = self.c, self.c.spec
        model = c.model
        model.train()
        gen = torch.Generator().manual_seed(_epoch_seed(spec.seed, self.phase, epoch))
        rank, world = dist_utils.rank(), dist_utils.world_size(self.group)
        sums = torch.zeros(3, dtype=torch.float64, device=c.device)  # loss sum, correct, count
        # Flip rate and gradient norm are summed on the device: a float() per step would wait for the GPU.
        flips = torch.zeros((), dtype=torch.float64, device=c.device)
        grad_norm = torch.zeros((), dtype=torch.float64, device=c.device)
        timer = _StepTimer(c.device)
        signs = _binary_signs(model) if self.estimator is not None else None
        batches = iterate_batches(
            c.splits.train,
            spec.batch_size,
            shuffle=True,
            generator=gen,
            augment=spec.data,
            rank=rank,
            world_size=world,
            drop_last=len(c.splits.train) >= spec.batch_size,
            max_batches=self.steps,
            pin_memory=should_pin_memory(c.splits.train.images.device, c.device),
        )
        lr = 0.0
        for step, (x, y) in enumerate(batches):
            timer.start()
            x = x.to(c.device, non_blocking=True)
            y = y.to(c.device, non_blocking=True)
            if self.estimator is not None:
                self.estimator.progress = min((epoch + step / self.steps) / self.epochs, 1.0)
            lr = self._set_lr(epoch + step / self.steps)
            if self.learned:
                self.estimator.before_forward(lr)  # type: ignore[union-attr]
            with _autocast(spec, c.device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            dist_utils.all_reduce_mean([p.grad for p in self.params], self.group)
            stepped = self.estimator.after_backward(self.group) if self.learned else True  # type: ignore[union-attr]
            if stepped:
                # fp16: true gradients from here on (a no-op otherwise). After the all-reduce, so every
                # rank sees the same inf/nan and skips the same steps.
                self.scaler.unscale_(self.optimizer)
                if self.binary_params:
                    grads = [p.grad for p in self.params if id(p) in self.binary_params and p.grad is not None]
                    if grads:
                        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                        grad_norm += torch.where(torch.isfinite(norm), norm, 0.0)  # a skipped fp16 step adds 0
                self.scaler.step(self.optimizer)
                self.scaler.update()
            timer.stop()
            with torch.no_grad():
                sums[0] += loss.detach().double() * y.numel()
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.numel()
                if signs is not None:
                    new_signs = _binary_signs(model)
                    assert new_signs is not None
                    flips += (new_signs != signs).sum() / new_signs.numel()
                    signs = new_signs
            self.reporter.on_step(self.phase, epoch, step, loss.detach())
        if dist_utils.is_distributed(self.group):
            torch.distributed.all_reduce(sums, group=self.group)
        n_steps = max(self.steps, 1)
        out = {
            "train_loss": float(sums[0] / sums[2]),
            "train_acc": float(sums[1] / sums[2]),
            "lr": lr,
            "step_time_s": timer.seconds() / n_steps,
        }
        if self.estimator is not None:
            out["flip_rate"] = float(flips) / n_steps
            out["grad_norm"] = float(grad_norm) / n_steps
            out.update(self.estimator.statistics())
        if self.scaler.is_enabled():
            out["loss_scale"] = self.scaler.get_scale()
        return out

    def run(self, start_epoch: int) -> None:
        c, spec = self.c, self.c.spec
        self.reporter.on_phase(self.phase, self.epochs, self.steps, start_epoch)
        for epoch in range(start_epoch, self.epochs):
            t0 = time.perf_counter()
            metrics: dict[str, Any] = {"phase": self.phase, "epoch": epoch + 1}
            metrics.update(self.train_epoch(epoch))
            # Every rank ends the epoch with rank 0's BatchNorm statistics, as DDP's broadcast_buffers does.
            dist_utils.broadcast_tensors([b for b in c.model.buffers() if b.is_floating_point()], 0, self.group)
            metrics["val_loss"], metrics["val_acc"] = evaluate(
                c.model, c.splits.val, spec.eval_batch_size, c.device, self.group
            )
            metrics["test_loss"], metrics["test_acc"] = evaluate(
                c.model, c.splits.test, spec.eval_batch_size, c.device, self.group
            )
            metrics["epoch_time_s"] = time.perf_counter() - t0
            self.history.append(metrics)
            last = epoch + 1 == self.epochs
            due = last or (epoch + 1) % spec.checkpoint_every == 0
            state = self.state(epoch + 1) if due and dist_utils.rank() == 0 else None
            self.reporter.report(metrics, state)


def last_k(epochs: int) -> int:
    """The window of the "last-k" figures for a run of ``epochs`` binarized epochs: at most a third of
    them (a short run's mean would otherwise include the collapse when binarization starts), at most
    10, at least 1."""
    return max(1, min(10, epochs // 3))


def summarize_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and last-k figures of the binarized phase (FSG_SPEC §1: report both), k = ``last_k``."""
    rows = [r for r in history if r.get("phase") == "binary"]
    # BiPer's first stage trains continuous sin(w x) weights: not a BNN, so its epochs are reported apart
    # and kept out of the binary figures (``biper_stage`` is the stage at the end of the epoch).
    continuous = [r for r in rows if r.get("biper_stage") == 1.0]
    rows = [r for r in rows if r.get("biper_stage") != 1.0]
    stage: dict[str, Any] = {}
    if continuous:
        stage["continuous_epochs"] = len(continuous)
        vals = [r["val_acc"] for r in continuous if isinstance(r.get("val_acc"), float) and math.isfinite(r["val_acc"])]
        if vals:
            stage["continuous_best_val_acc"] = max(vals)
    if not rows:
        return stage

    def finite(key: str) -> list[tuple[int, float]]:
        return [(i, r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), float) and math.isfinite(r[key])]

    out: dict[str, Any] = {"epochs": len(rows), "final_train_loss": rows[-1]["train_loss"], **stage}
    val = finite("val_acc")
    test = finite("test_acc")
    if val:
        best_i, best_v = max(val, key=lambda t: t[1])
        epoch = rows[best_i].get("epoch", best_i + 1)  # the run's binarized epoch (BiPer: after its first stage)
        out.update(best_val_acc=best_v, best_val_epoch=epoch, test_acc_at_best_val=rows[best_i].get("test_acc"))
    if test:
        out["best_test_acc"] = max(v for _, v in test)
        k = last_k(len(rows))
        tail = [v for _, v in test[-k:]]
        out["last_k"] = len(tail)
        out["last_k_test_acc"] = sum(tail) / len(tail)
        out["final_test_acc"] = test[-1][1]
    steps = [r["step_time_s"] for r in rows if "step_time_s" in r]
    if steps:
        out["mean_step_time_s"] = sum(steps) / len(steps)
    return out


def fit(
    spec: TrainSpec,
    reporter: Reporter | None = None,
    *,
    resume: dict[str, Any] | str | Path | None = None,
    device: torch.device | None = None,
    group: Any = None,
) -> FitResult:
    """Train ``spec`` to the end; resume from a checkpoint (state or path) when given.

    Args:
        spec: the run.
        reporter: receives per-step progress, per-epoch metrics and checkpoints.
        resume: a state from ``Reporter.report``'s checkpoint or a checkpoint file.
        device: overrides ``spec.device`` (Ray workers pass their assigned GPU).
        group: the torch.distributed process group (None: the default group when initialised).

    Returns:
        The metrics history, the summary, and the trained model (on ``device``).
    """
    reporter = reporter or Reporter()
    if spec.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    state = load_checkpoint(resume) if isinstance(resume, (str, Path)) else resume
    c = build_components(spec, device)
    reporter.on_setup(c)
    history: list[dict[str, Any]] = []
    start_phase, start_epoch = "pretrain", 0
    if state is not None:
        c.model.load_state_dict(state["model"])
        history = list(state["history"])
        start_phase, start_epoch = state["phase"], int(state["epoch"])
    final_state = None
    for phase in PHASES[PHASES.index(start_phase) :]:
        if phase == "pretrain" and spec.init.pretrain_epochs == 0:
            continue
        trainer = _Trainer(c, phase, reporter, group, history)
        first = start_epoch if phase == start_phase else 0
        if state is not None and phase == state["phase"]:
            trainer.load(state)
        trainer.run(first)
        if phase == "binary":
            final_state = trainer.state(trainer.epochs) if dist_utils.rank() == 0 else None
    set_binary(c.model, True)
    c.model.eval()
    summary = summarize_history(history)
    reporter.on_end(summary)
    return FitResult(history, summary, c.model, c, final_state)

"""``TrainSpec``: everything a training run needs, validated at construction (unknown fields rejected).

The same model is the JSON of ``fsg train``, the body the service wraps in its ``JobSpec``, and the
source of Ray Tune's search paths (``estimator.o_end``, ``optimizer.lr``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from fsg_core import models
from fsg_core.estimators import AnyEstimatorParams, ClosedFormParams, get
from fsg_core.strict import StrictNumbers

__all__ = [
    "BinarizeSpec",
    "DataSpec",
    "InitSpec",
    "ModelSpec",
    "OptimSpec",
    "ScheduleSpec",
    "TrainSpec",
]


class _Spec(StrictNumbers):
    model_config = ConfigDict(extra="forbid")


# What the file systems fsg runs on accept (Linux NAME_MAX and PATH_MAX): a longer name makes every
# open() raise, so it is refused here, as the field's error, before a job is queued.
NAME_MAX_BYTES, PATH_MAX_BYTES = 255, 4095


def _file_path(value: str | None) -> str | None:
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    if len(value.encode()) > PATH_MAX_BYTES:
        raise ValueError(f"is longer than {PATH_MAX_BYTES} bytes")
    longest = max(value.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > NAME_MAX_BYTES:
        raise ValueError(f"has a component of {len(longest.encode())} bytes; file names stop at {NAME_MAX_BYTES}")
    return value


class ModelSpec(_Spec):
    arch: str = Field("resnet20", description="registered architecture, see `fsg_core.models.names()`")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="output classes; None takes the dataset's")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in models.names():
            raise ValueError(f"unknown architecture {v!r}; choose one of: {', '.join(models.names())}")
        return v


class DataSpec(_Spec):
    dataset: Literal["cifar10", "cifar100", "digits", "synthetic"] = "digits"
    root: str | None = Field(
        None, max_length=4096, description="directory holding the CIFAR python archive (tar.gz or extracted)"
    )
    val_fraction: float = Field(0.1, ge=0.0, le=0.5, description="share of the training set held out for validation")
    test_fraction: float = Field(
        0.2, gt=0.0, le=0.5, description="share held out as test set where the dataset has none (digits, synthetic)"
    )
    augment: bool = Field(True, description="random crop (with padding) and horizontal flip on training batches")
    crop_padding: int = Field(4, ge=0, le=32, description="pixels of zero padding before the random crop")
    flip: bool = Field(True, description="random horizontal flip")
    image_size: int | None = Field(
        None, ge=4, le=512, description="pad/resize images to this side; None keeps the dataset's"
    )
    max_train_samples: int | None = Field(
        None, ge=1, le=100_000_000, description="cap on training samples (quick runs)"
    )
    synthetic_samples: int = Field(512, ge=16, le=1_000_000, description="synthetic: number of samples")
    synthetic_classes: int = Field(10, ge=2, le=1000, description="synthetic: number of classes")
    synthetic_shape: tuple[
        Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=512)], Annotated[int, Field(ge=1, le=512)]
    ] = Field((3, 8, 8), description="synthetic: (channels <= 64, height <= 512, width <= 512)")

    @field_validator("root")
    @classmethod
    def _root_is_a_path(cls, value: str | None) -> str | None:
        return _file_path(value)

    @model_validator(mode="after")
    def _root_for_cifar(self) -> DataSpec:
        if self.dataset in ("cifar10", "cifar100") and not self.root:
            raise ValueError(f"data.root is required for {self.dataset}: the directory holding its python archive")
        return self


class BinarizeSpec(_Spec):
    weights: bool = Field(True, description="binary weights in every binarizable layer")
    activations: bool = Field(False, description="binary activations (the W1A1 protocol)")
    forward: Literal["dorefa", "bwn"] = Field("dorefa", description="forward binarizer of weights (FSG_SPEC §2)")
    per_channel: bool = Field(False, description="bwn: one scale per output channel instead of per layer")
    keep_first_last_fp: bool = Field(
        False, description="keep the first conv and last linear full precision (W1A1 protocol: true)"
    )
    activation_estimator: ClosedFormParams | None = Field(
        None,
        description="estimator of the activations' sign; None: the weight estimator if closed-form, else clipped_ste",
    )


class OptimSpec(_Spec):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only; 0 gives plain SGD")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, le=1)
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam/adamw")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must lie in [0, 1)")
        return v


class ScheduleSpec(_Spec):
    kind: Literal["constant", "step", "cosine"] = "step"
    milestones: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [30, 60, 90], max_length=64, description="step: epochs where lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0, le=1000)
    min_lr: float = Field(0.0, ge=0, le=10, description="cosine: the lr it ends at")


class InitSpec(_Spec):
    pretrain_epochs: int = Field(
        0, ge=0, le=10_000, description="full-precision epochs before binarized training (W1A32 protocol)"
    )
    pretrain_optimizer: OptimSpec = Field(default_factory=OptimSpec)
    pretrain_schedule: ScheduleSpec = Field(default_factory=lambda: ScheduleSpec(kind="cosine", milestones=[]))
    checkpoint: str | None = Field(
        None,
        max_length=4096,
        description="start from this file: a training checkpoint or a full-precision state dict of the same model",
    )

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_is_a_path(cls, value: str | None) -> str | None:
        return _file_path(value)


class TrainSpec(_Spec):
    """A complete training run: model, data, binarization, estimator, optimization and seed."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    binarize: BinarizeSpec = Field(default_factory=BinarizeSpec)
    estimator: AnyEstimatorParams = Field(
        default_factory=lambda: get("fsg").Params.model_validate({"name": "fsg"}),
        description="gradient estimator of sign and its hyperparameters",
    )
    optimizer: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: int = Field(100, ge=1, le=10_000, description="binarized training epochs")
    batch_size: int = Field(128, ge=1, le=65_536, description="global batch (split over data-parallel workers)")
    eval_batch_size: int = Field(512, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    init: InitSpec = Field(default_factory=InitSpec)
    max_steps_per_epoch: int | None = Field(
        None, ge=1, le=10_000_000, description="cap on steps per epoch (quick runs, benchmarks)"
    )
    checkpoint_every: int = Field(1, ge=1, le=10_000, description="epochs between training checkpoints")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision of the forward")
    deterministic: bool = Field(True, description="deterministic kernels (bit-identical reruns)")

    @model_validator(mode="after")
    def _compatible(self) -> TrainSpec:
        if self.precision == "fp16" and get(self.estimator.name).learned:
            # The loss scaler would scale the captured g that learned estimators read.
            raise ValueError(
                f"precision='fp16' is not supported with the learned estimator {self.estimator.name!r}; use bf16"
            )
        if self.binarize.activations and not self.binarize.weights and get(self.estimator.name).learned:
            raise ValueError(
                "learned estimators act on weights: set binarize.weights=true or pick a closed-form estimator"
            )
        return self

"""The job spec a client submits (``JobSpec``), and what the API returns about jobs.

``JobSpec`` is fsg_core's ``TrainSpec`` plus what the service adds: a name, the kind (``train`` or
``search``), Ray resources, a search space, priority, retries and a timeout. Unknown fields are
refused at every level; every number has a bound.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fsg_core.spec import TrainSpec
from fsg_core.strict import StrictNumbers
from service.schemas.base import ReadModel, UtcDatetime

__all__ = [
    "Choice",
    "DryRunRead",
    "JobPage",
    "JobRead",
    "JobSpec",
    "LogUniform",
    "NAME_PATTERN",
    "RandInt",
    "ResourcesSpec",
    "SearchDimension",
    "SearchSpec",
    "StudySpec",
    "StudyVariant",
    "Uniform",
    "pretraining_spec",
    "set_path",
    "study_trial_spec",
    "variant_spec",
]


class _Spec(StrictNumbers):
    model_config = ConfigDict(extra="forbid")


RAY_RESOURCE_UNIT = 0.0001  # ray_constants.MIN_RESOURCE_GRANULARITY: the smallest quantity Ray schedules


class ResourcesSpec(_Spec):
    num_workers: int = Field(1, ge=1, le=256, description="data-parallel Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; gloo on CPU")
    cpus_per_worker: float = Field(
        1.0,
        ge=RAY_RESOURCE_UNIT,
        le=256,
        description="CPUs each worker holds; Ray counts in units of 0.0001, so the value is rounded to one",
    )
    placement: Literal["pack", "spread"] = Field("pack", description="Ray placement strategy of the workers")
    executor: Literal["ray_train", "ray_task"] = Field(
        "ray_train",
        description=(
            "ray_train: a Ray Train worker group (TorchTrainer; data parallel, worker restarts); "
            "ray_task: one Ray task runs the loop (a search's or study's trial: the Tune trial itself), "
            "without the worker group's 10-20 s of start-up (small runs; one worker)"
        ),
    )

    @field_validator("cpus_per_worker")
    @classmethod
    def _in_ray_units(cls, value: float) -> float:
        # Ray refuses a quantity below its unit and keeps 4 decimals: store what Ray will hold.
        return round(value, 4)  # RAY_RESOURCE_UNIT is 1e-4

    @model_validator(mode="after")
    def _task_is_one_worker(self) -> ResourcesSpec:
        if self.executor == "ray_task" and self.num_workers != 1:
            raise ValueError("executor 'ray_task' runs one worker: set num_workers to 1 or use 'ray_train'")
        return self

    @property
    def cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return float(self.num_workers) if self.use_gpu else 0.0


class Uniform(_Spec):
    type: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError("needs finite low < high")
        return self


class LogUniform(_Spec):
    type: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        if not (math.isfinite(self.high) and self.low < self.high):
            raise ValueError("needs 0 < low < high")
        return self


class RandInt(_Spec):
    type: Literal["randint"] = "randint"
    low: int
    high: int = Field(description="exclusive")

    @model_validator(mode="after")
    def _ordered(self) -> RandInt:
        if self.low >= self.high:
            raise ValueError("needs low < high (high is exclusive)")
        return self


class Choice(_Spec):
    type: Literal["choice", "grid"] = "choice"
    values: list[Any] = Field(min_length=1, max_length=256)


SearchDimension = Annotated[Uniform | LogUniform | RandInt | Choice, Field(discriminator="type")]


class SearchSpec(_Spec):
    space: dict[str, SearchDimension] = Field(
        min_length=1,
        max_length=32,
        description="dotted paths into the training spec (e.g. 'estimator.alpha', 'optimizer.lr') to sample",
    )
    num_samples: int = Field(4, ge=1, le=10_000, description="trials (times each grid point)")
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: Literal["val_acc", "val_loss", "train_loss", "test_acc"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = Field(2, ge=1, le=256)
    grace_period: int = Field(1, ge=1, le=10_000, description="asha: epochs before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1, le=100, description="asha: halving rate")


VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# What a study's seeds share: the data, the model and its full-precision pre-training. A variant that
# changed these would not be compared on the same footing (nor could it share the pre-training).
SHARED_SECTIONS = ("model", "data", "init", "seed", "name", "kind")


class StudyVariant(_Spec):
    """One arm of a study: an estimator section and/or dotted overrides of the base spec."""

    name: str = Field(min_length=1, max_length=64, pattern=VARIANT_PATTERN)
    estimator: dict[str, Any] | None = Field(None, description="the estimator section of this variant (name, params)")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        max_length=32,
        description="dotted paths into the training spec (e.g. 'estimator.alpha', 'optimizer.name') and their values",
    )

    @field_validator("overrides")
    @classmethod
    def _training_only(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        for path in overrides:
            if path.split(".")[0] in SHARED_SECTIONS:
                raise ValueError(f"{path!r}: a study's variants share {', '.join(SHARED_SECTIONS)}; vary training only")
        return overrides


class StudySpec(_Spec):
    """Variants x seeds on Ray Tune; per seed one full-precision pre-training shared by its variants."""

    variants: list[StudyVariant] = Field(min_length=2, max_length=32)
    seeds: int = Field(5, ge=2, le=64, description="seeds 0..seeds-1: each its own split and pre-training")
    baseline: str | None = Field(None, description="the variant the others are compared with (default: the first)")
    max_concurrent_trials: int = Field(2, ge=1, le=256)

    @model_validator(mode="after")
    def _names(self) -> StudySpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a variant ({', '.join(names)})")
        return self

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.variants[0].name


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with ``path`` (dotted) set to ``value``."""
    head, _, rest = path.partition(".")
    out = dict(data)
    if rest:
        inner = out.get(head)
        out[head] = set_path(inner if isinstance(inner, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def _probe_values(dim: Uniform | LogUniform | RandInt | Choice) -> list[Any]:
    if isinstance(dim, Choice):
        return list(dim.values)
    if isinstance(dim, RandInt):
        return [dim.low, dim.high - 1]
    return [dim.low, dim.high]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$"  # a job's name; also what GET /v1/jobs?name= accepts


class JobSpec(TrainSpec):
    """A training run or a hyperparameter search, as submitted to ``POST /v1/jobs``."""

    name: str = Field("job", min_length=1, max_length=128, pattern=NAME_PATTERN)
    kind: Literal["train", "search", "study"] = "train"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    search: SearchSpec | None = None
    study: StudySpec | None = None
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first; ties by age")
    max_retries: int = Field(1, ge=0, le=100, description="attempts after the first, each resuming from its checkpoint")
    timeout_s: float | None = Field(None, gt=0, le=30 * 86400, description="wall-clock limit of one attempt")

    @model_validator(mode="after")
    def _search_matches_kind(self) -> JobSpec:
        if self.kind == "search" and self.search is None:
            raise ValueError("kind='search' needs a 'search' section")
        if self.kind != "search" and self.search is not None:
            raise ValueError("'search' is only allowed with kind='search'")
        if self.kind == "study" and self.study is None:
            raise ValueError("kind='study' needs a 'study' section")
        if self.kind != "study" and self.study is not None:
            raise ValueError("'study' is only allowed with kind='study'")
        if self.study is not None:
            for variant in self.study.variants:
                try:
                    variant_spec(self.train_spec().model_dump(mode="json"), variant)
                except ValueError as exc:
                    raise ValueError(f"study variant {variant.name!r} is not valid: {exc}") from None
        if self.search is not None:
            base = self.train_spec().model_dump(mode="json")
            for path, dim in self.search.space.items():
                for value in _probe_values(dim):
                    try:
                        TrainSpec.model_validate(set_path(base, path, value))
                    except ValueError as exc:
                        raise ValueError(f"search.space[{path!r}] value {value!r} is not valid: {exc}") from None
        return self

    def concurrent_runs(self) -> int:
        """How many training runs the job holds resources for at once: one, or a search's or a study's
        concurrent trials. Admission and the claim count all of them: a study's second trial waiting for
        CPUs its own first trial holds would time out in Ray Train's worker-group start-up."""
        if self.search is not None:
            grid = math.prod(
                len(d.values) for d in self.search.space.values() if isinstance(d, Choice) and d.type == "grid"
            )
            return min(self.search.max_concurrent_trials, self.search.num_samples * grid)
        if self.study is not None:
            return min(self.study.max_concurrent_trials, len(self.study.variants) * self.study.seeds)
        return 1

    @property
    def attempt_holds_resources(self) -> bool:
        """Whether the attempt's own Ray task holds the job's CPUs (or GPU): a ``ray_task`` train job trains
        in it. A search's or study's attempt only drives Tune; its trials (or their workers) hold them."""
        return self.kind == "train" and self.resources.executor == "ray_task"

    @property
    def cpus(self) -> float:
        """CPUs the job needs from Ray at once (every concurrent run's workers)."""
        return self.resources.cpus * self.concurrent_runs()

    @property
    def gpus(self) -> float:
        """GPUs the job needs from Ray at once."""
        return self.resources.gpus * self.concurrent_runs()

    def train_spec(self) -> TrainSpec:
        """The fsg_core part of the spec."""
        return TrainSpec.model_validate(self.model_dump(include=set(TrainSpec.model_fields)))


class JobRead(ReadModel):
    """A job as the API shows it: state, attempts, timestamps, the resolved spec, summary and error."""

    id: str
    name: str
    kind: str
    state: str = Field(description="queued, dispatching, running, cancelling, retrying, succeeded, failed, cancelled")
    priority: int
    attempts: int = Field(description="attempts started so far (a retry resumes from the latest checkpoint)")
    max_retries: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    spec: dict[str, Any] = Field(description="the resolved spec: every default filled in, paths resolved")
    summary: dict[str, Any] | None = Field(description="best / last-k metrics and sizes, once reported")
    error: str | None = Field(description="the last attempt's error, if any")
    cancel_requested: bool
    ray_dashboard_url: str | None = Field(description="the Ray dashboard, where the job's Ray run is shown")


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobRead]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class DryRunRead(BaseModel):
    """What ``POST /v1/jobs?dry_run=true`` answers: the spec as it would be queued; nothing is written."""

    valid: bool = True
    spec: dict[str, Any] = Field(description="the resolved spec (defaults filled in, paths resolved)")
    cpus: float = Field(description="CPUs the job needs from Ray at once")
    gpus: float = Field(description="GPUs the job needs from Ray at once")


def variant_spec(base: dict[str, Any], variant: StudyVariant) -> TrainSpec:
    """The training spec of ``variant``: the base with its estimator section and overrides applied."""
    spec = dict(base)
    if variant.estimator is not None:
        spec["estimator"] = variant.estimator
    for path, value in variant.overrides.items():
        spec = set_path(spec, path, value)
    return TrainSpec.model_validate(spec)


def pretraining_spec(base: TrainSpec, seed: int) -> TrainSpec | None:
    """The full-precision pre-training a study's variants of ``seed`` share: the base's data, model and
    ``init`` pre-training recipe, with ``seed``'s own split (so none of its validation images is trained
    on). None when the base pre-trains nothing."""
    if base.init.pretrain_epochs == 0:
        return None
    spec = base.model_dump(mode="json")
    spec.update(
        binarize={**spec["binarize"], "weights": False, "activations": False},
        estimator={"name": "ste"},
        optimizer=spec["init"]["pretrain_optimizer"],
        schedule=spec["init"]["pretrain_schedule"],
        epochs=base.init.pretrain_epochs,
        seed=seed,
        init={**spec["init"], "pretrain_epochs": 0},
    )
    return TrainSpec.model_validate(spec)


def study_trial_spec(base: TrainSpec, variant: StudyVariant, seed: int, pretrained: str | None) -> TrainSpec:
    """One trial of a study: ``variant`` with ``seed``, starting from its seed's pre-training (a checkpoint
    path) when there is one."""
    spec = variant_spec(base.model_dump(mode="json"), variant).model_dump(mode="json")
    spec["seed"] = seed
    if pretrained is not None:
        spec["init"] = {**spec["init"], "pretrain_epochs": 0, "checkpoint": pretrained}
    return TrainSpec.model_validate(spec)

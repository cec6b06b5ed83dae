"""The estimator contract: what every gradient estimator of ``sign`` must provide, and its registry.

An estimator decides what ``∂sign/∂x`` is. Closed-form ones give a formula (``ClosedFormEstimator``);
learned ones (MetaQuant, FSG) generate the whole weight gradient with a hypernetwork
(``LearnedEstimator``). Estimators are looked up by name, so the spec, the CLI listing, the API's
schema and Ray Tune's search paths all come from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from pydantic import ConfigDict
from torch import Tensor

from fsg_core.errors import NonRetryableError
from fsg_core.strict import StrictNumbers

if TYPE_CHECKING:
    from fsg_core.binary import BinaryLayer

__all__ = [
    "ClosedFormEstimator",
    "Estimator",
    "EstimatorParams",
    "LearnedEstimator",
    "UnknownEstimatorError",
    "get",
    "names",
    "register",
    "sign",
]


def sign(x: Tensor) -> Tensor:
    """Return +1 where ``x >= 0`` and -1 elsewhere, in ``x``'s dtype.

    ``torch.sign(0) == 0`` would leave zero weights out of the binary network entirely; the
    rule here (sign(0) = +1) is the one the packed format stores as bit 1.
    """
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class EstimatorParams(StrictNumbers):
    """Hyperparameters of one estimator; subclasses add ``name: Literal[...]`` and typed fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


class Estimator:
    """One gradient estimator, instantiated once per training run from its ``Params``.

    The training loop sets ``progress`` (the fraction e/E of binarized training done, in [0, 1])
    before every step; schedules are pure functions of it.
    """

    Params: ClassVar[type[EstimatorParams]]
    name: ClassVar[str]
    learned: ClassVar[bool] = False
    # Whether the forward value is sign(x) (True for all but BiPer): the flip rate then reads W's signs.
    forward_is_sign: ClassVar[bool] = True
    # A short citation; the CLI listing shows it.
    reference: ClassVar[str] = ""

    def __init__(self, params: EstimatorParams | None = None) -> None:
        self.params = params if params is not None else self.Params(name=self.name)
        self.progress = 0.0

    def binarize(self, x: Tensor) -> Tensor:
        """Forward ±1 values of ``x`` with this estimator's backward."""
        raise NotImplementedError

    def statistics(self) -> dict[str, float]:
        """Scalars worth logging each epoch (estimator state, scales, norms)."""
        return {}


class _ClosedFormSign(torch.autograd.Function):
    """The one custom-gradient op shared by every closed-form estimator."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, estimator: ClosedFormEstimator) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.estimator = estimator
        ctx.progress = estimator.progress
        return estimator.forward_value(x, estimator.progress)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * ctx.estimator.grad(x, ctx.progress), None


class ClosedFormEstimator(Estimator):
    """An estimator whose backward is a formula ``∂sign/∂x ≈ grad(x, progress)``."""

    def forward_value(self, x: Tensor, progress: float) -> Tensor:
        """The forward value; ``sign(x)`` unless the method changes it (BiPer)."""
        return sign(x)

    def grad(self, x: Tensor, progress: float) -> Tensor:
        """The surrogate derivative ``∂sign/∂x`` at ``x`` for this point of the schedule."""
        raise NotImplementedError

    def binarize(self, x: Tensor) -> Tensor:
        return _ClosedFormSign.apply(x, self)


class _StraightThroughSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        return grad_output


class LearnedEstimator(Estimator):
    """An estimator that generates each binary layer's weight gradient with a hypernetwork.

    Lifecycle, called by the training loop around every step (names follow Ray's callbacks):

    * ``setup(layers)`` once, with the model's binary layers in a fixed order;
    * ``before_forward(lr)`` sets each layer's look-ahead weight ``W' = W - lr * update``
      (kept in the graph so the loss's backward reaches the hypernetworks);
    * the loop runs forward and backward; each layer captures ``g = ∂L/∂Ŵ``;
    * ``after_backward(group)`` averages ``g`` and the meta-gradients over data-parallel workers,
      steps the meta-optimizers, writes ``W.grad`` and returns whether the base optimizer steps.

    ``binarize`` is a plain straight-through sign: in the look-ahead forward the meta-gradients
    pass the sign unchanged (FSG_SPEC §4 step 4).
    """

    learned = True

    def binarize(self, x: Tensor) -> Tensor:
        return _StraightThroughSign.apply(x)

    def setup(self, layers: Sequence[tuple[str, BinaryLayer]]) -> None:
        raise NotImplementedError

    def before_forward(self, lr: float) -> None:
        raise NotImplementedError

    def after_backward(self, group: Any = None) -> bool:
        raise NotImplementedError

    def meta_modules(self) -> list[torch.nn.Module]:
        """The hypernetworks, for device placement and counting."""
        return []

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def to(self, device: torch.device) -> LearnedEstimator:
        for module in self.meta_modules():
            module.to(device)
        return self


class UnknownEstimatorError(NonRetryableError, KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown estimator {self.name!r}; choose one of: {', '.join(names())}"


_REGISTRY: dict[str, type[Estimator]] = {}
E = TypeVar("E", bound=type[Estimator])


def register(name: str) -> Callable[[E], E]:
    """Class decorator that registers an estimator under ``name`` (snake_case, FSG_SPEC §3)."""

    def decorate(cls: E) -> E:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is registered twice")
        params_name = cls.Params.model_fields["name"].default
        if params_name != name:
            raise TypeError(f"{cls.__name__}.Params.name defaults to {params_name!r}, expected {name!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def names() -> list[str]:
    """Registered estimator names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> type[Estimator]:
    """The estimator class registered as ``name``.

    Raises:
        UnknownEstimatorError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEstimatorError(name) from None

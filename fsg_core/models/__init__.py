"""Architectures, registered by name like estimators: ``build_model("resnet20", ...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fsg_core.errors import NonRetryableError
from fsg_core.models.factory import LayerFactory

__all__ = ["LayerFactory", "UnknownModelError", "build_model", "names", "register"]

Builder = Callable[[LayerFactory, int, int], nn.Module]
B = TypeVar("B", bound=Builder)
_REGISTRY: dict[str, Builder] = {}


class UnknownModelError(NonRetryableError, KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown architecture {self.name!r}; choose one of: {', '.join(names())}"


def register(name: str) -> Callable[[B], B]:
    """Register ``builder(factory, num_classes, in_channels) -> nn.Module`` under ``name``."""

    def decorate(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def names() -> list[str]:
    return list(_REGISTRY)


def build_model(arch: str, *, num_classes: int, in_channels: int = 3, factory: LayerFactory | None = None) -> nn.Module:
    """Build ``arch`` with layers from ``factory`` (full precision when None).

    Raises:
        UnknownModelError: ``arch`` is not registered.
    """
    try:
        builder = _REGISTRY[arch]
    except KeyError:
        raise UnknownModelError(arch) from None
    return builder(factory or LayerFactory(), num_classes, in_channels)


# Registration happens on import; keep these last.
from fsg_core.models import resnet_cifar, vgg_small  # noqa: E402,F401

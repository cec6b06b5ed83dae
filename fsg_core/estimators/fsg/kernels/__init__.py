"""Fused kernels of FSG's temporal slow net: C++ on the CPU, Triton on CUDA (FSG_SPEC §8).

``kernel`` in the FSG params chooses: ``torch`` runs the pure-PyTorch slow net (the reference, and the
fallback); ``fused`` requires a kernel for the tensors' device and fails with the reason otherwise;
``auto`` (default) takes the kernel when it builds here and falls back to PyTorch with one warning.

Accuracy of the float32 C++ kernel: exp, sigmoid and softplus are polynomial approximations, at most
``FAST_MATH_MAX_REL_ERROR`` relative error each (measured by ``tests/.../test_kernels.py`` over their
whole range against float64); the slow gradient and every parameter gradient match the PyTorch path
within 1e-5 relative (max-norm) in the tests. Reductions run in a fixed order: bit-identical results
for any thread count.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Literal

import torch

from fsg_core.estimators.fsg.kernels.cpu import KernelUnavailableError
from fsg_core.estimators.fsg.kernels.temporal import Backend, kernel_weights, position_zero, temporal_ssm

__all__ = [
    "FAST_MATH_MAX_REL_ERROR",
    "Backend",
    "KernelChoice",
    "KernelUnavailableError",
    "cpu_backend",
    "kernel_weights",
    "position_zero",
    "resolve",
    "temporal_ssm",
    "triton_backend",
]

KernelChoice = Literal["auto", "fused", "torch"]
FAST_MATH_MAX_REL_ERROR = 5e-7


@functools.cache
def cpu_backend() -> Backend:
    """The C++ kernel (built on first call). Raises ``KernelUnavailableError`` when it cannot be built."""
    from fsg_core.estimators.fsg.kernels import cpu

    cpu.load()
    ops = torch.ops.fsg_ssm
    return Backend("cpp", ops.forward, ops.backward)


@functools.cache
def triton_backend() -> Backend:
    """The Triton kernels (CUDA, or Triton's interpreter). Raises ``KernelUnavailableError`` without triton."""
    try:
        triton_ssm = importlib.import_module("fsg_core.estimators.fsg.kernels.triton_ssm")
    except ImportError as exc:
        raise KernelUnavailableError(f"triton is not installed ({exc})") from None
    return Backend("triton", triton_ssm.forward, triton_ssm.backward)


_warned: set[str] = set()


def resolve(choice: KernelChoice, device: torch.device) -> Backend | None:
    """The backend for ``choice`` on ``device``; None means the PyTorch path.

    Raises:
        KernelUnavailableError: ``choice`` is ``fused`` and no kernel runs on ``device`` here.
    """
    if choice == "torch":
        return None
    try:
        if device.type == "cpu":
            return cpu_backend()
        if device.type == "cuda":
            return triton_backend()
        raise KernelUnavailableError(f"no fused slow-net kernel for device type {device.type!r}")
    except KernelUnavailableError as exc:
        if choice == "fused":
            raise KernelUnavailableError(f"kernel 'fused' was asked for: {exc}") from None
        if str(exc) not in _warned:  # one warning per reason and process
            _warned.add(str(exc))
            warnings.warn(f"FSG slow net: {exc}; running the PyTorch path (kernel 'torch')", stacklevel=2)
        return None

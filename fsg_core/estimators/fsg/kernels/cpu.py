"""Build and load the C++ kernel of the temporal slow net (``ssm_temporal.cpp``), once per machine.

Compiled on first use with ``torch.utils.cpp_extension`` (g++ and ninja) and cached under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). The cache key holds the source, the
flags, the torch version and the instruction set chosen from this CPU (AVX-512, AVX2+FMA or the
baseline), so a home directory shared by different machines never runs code built for another CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from fsg_core.errors import NonRetryableError

__all__ = ["KernelUnavailableError", "build_flags", "instruction_set", "load"]

SOURCE = Path(__file__).with_name("ssm_temporal.cpp")

# Flags per instruction set. No -march=native: the same flags give the same binary on every CPU of a
# level, so two data-parallel ranks on like machines compute bit-identical slow gradients.
ISA_FLAGS: dict[str, list[str]] = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
    "avx2": ["-mavx2", "-mfma"],
    "baseline": [],
}
BASE_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]


class KernelUnavailableError(NonRetryableError, RuntimeError):
    """The C++ kernel cannot be built or loaded here (no compiler, no ninja, a failed build); a job that
    insists on it (``kernel: fused``) fails without retries."""


def instruction_set() -> str:
    """The widest instruction set of this CPU that the kernel is built for (``FSG_KERNEL_ISA`` narrows it:
    ``avx2`` or ``baseline``, to test the generic code on a wider CPU)."""
    forced = os.environ.get("FSG_KERNEL_ISA")
    if forced in ISA_FLAGS:
        return forced
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "baseline"


def build_flags() -> list[str]:
    return BASE_FLAGS + ISA_FLAGS[instruction_set()]


def _build_root() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock held while building: the kernel's own lock, released by the OS if the process dies.

    torch's build lock is a file that a killed build leaves behind, after which every later build
    waits forever; under this lock no other build can be running, so a leftover one is stale.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@functools.cache
def load() -> str:
    """Build (first time on this machine) and load the kernel; its ops are ``torch.ops.fsg_ssm.*``.

    Returns:
        The path of the loaded library.

    Raises:
        KernelUnavailableError: no compiler or ninja, or the build failed (the message says which).
    """
    from torch.utils import cpp_extension

    flags = build_flags()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + torch.__version__.encode()).hexdigest()
    name = f"fsg_ssm_{instruction_set()}_{key[:12]}"
    build_dir = _build_root() / name
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise KernelUnavailableError(f"ninja is not installed ({exc})") from None
    try:
        with _exclusive(_build_root() / f"{name}.flock"):
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "lock").unlink(missing_ok=True)
            path = cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
    except Exception as exc:  # compiler missing, compile error, loader error
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise KernelUnavailableError(f"building the C++ slow-net kernel failed: {last[0]}") from exc
    return str(path)

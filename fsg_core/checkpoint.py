"""Resumable training checkpoints: complete state, written atomically, loaded without executing code.

A checkpoint holds everything that resumes a run bit-exactly (FSG_SPEC §6): model weights and
buffers, base-optimizer state, the estimator's state (hypernetworks, meta-optimizers, gradient
history), the phase and next epoch, the metrics so far, the spec, and the global RNG state.
Batches and augmentation draw from generators seeded by (seed, phase, epoch), so no data-loader
state is needed. Files are read with ``torch.load(weights_only=True)``: tensors and plain containers
only, so a checkpoint from elsewhere cannot run code on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fsg_core.errors import NonRetryableError
from fsg_core.files import atomic_file

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_weights", "save_checkpoint"]

FORMAT = "fsg-checkpoint"
VERSION = 1


class CheckpointError(NonRetryableError, ValueError):
    """A checkpoint file is missing, unreadable, or not an fsg checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> int:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, then rename).

    Returns:
        The file size in bytes.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_file(path) as fh:  # streamed: a training state is never held twice in memory
        torch.save(payload, fh)
    return path.stat().st_size


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and unpickling-policy errors all mean "not loadable"
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt, truncated or not a torch file: {exc}") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint written by ``save_checkpoint``.

    Raises:
        CheckpointError: the file is missing, unreadable, or not an fsg training checkpoint.
    """
    path = Path(path)
    state = _read(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an fsg training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {state.get('version')}, expected {VERSION}")
    return state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a training checkpoint, a torch state dict, or a safetensors state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"weights file {str(path)!r} does not exist")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc
    state = _read(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return dict(state["model"])
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return dict(state)
    raise CheckpointError(f"{str(path)!r} holds neither an fsg checkpoint nor a state dict")

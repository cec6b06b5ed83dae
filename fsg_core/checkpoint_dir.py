"""The checkpoint directory: one epoch's checkpoint as files, the format every reporter writes and reads.

Layout::

    <dir>/checkpoint.pt              the resumable training state (``fsg_core.checkpoint``)
    <dir>/model.packed.safetensors   the 1-bit packed model (``fsg_core.packed``), binarized phase only
    <dir>/metrics.json               the epoch's metrics, one JSON object

Ray Train's checkpoints, the ``ray_task`` executor's and ``fsg train``'s output directory all follow
it; ``fsg train`` keeps the run's whole history in ``metrics.json`` (a list of those objects).
Code that writes or finds these files takes their names from here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsg_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # only for the annotation: fsg_core.train imports the reporters that name these files
    from fsg_core.train import Components

__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "PACKED_FILE",
    "CheckpointDir",
    "read_checkpoint_dir",
    "write_checkpoint_dir",
]

CHECKPOINT_FILE = "checkpoint.pt"
PACKED_FILE = "model.packed.safetensors"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class CheckpointDir:
    """A checkpoint directory on disk: where its files are and how big.

    The state and the metrics are read only when asked for: whoever records a checkpoint needs its
    paths and sizes, not a torch load of the whole state.
    """

    directory: Path
    checkpoint_bytes: int
    packed_bytes: int | None  # None: no packed model (before the binarized phase)

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    @property
    def packed_path(self) -> Path | None:
        return None if self.packed_bytes is None else self.directory / PACKED_FILE

    @property
    def metrics_path(self) -> Path:
        return self.directory / METRICS_FILE

    def load_state(self) -> dict[str, Any]:
        """The resumable training state (what ``fit(resume=...)`` takes).

        Raises:
            CheckpointError: ``checkpoint.pt`` is unreadable or not an fsg checkpoint.
        """
        return load_checkpoint(self.checkpoint_path)

    def load_metrics(self) -> dict[str, Any] | None:
        """The epoch's metrics, None when the directory holds none. Where ``metrics.json`` holds a run's
        history (``fsg train``), its last row: the epoch of the checkpoint.

        Raises:
            CheckpointError: ``metrics.json`` is not JSON, or holds neither an object nor a list of them.
        """
        try:
            data = json.loads(self.metrics_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{str(self.metrics_path)!r} is not readable JSON: {exc}") from exc
        if isinstance(data, list):
            data = data[-1] if data else None
        if data is not None and not isinstance(data, dict):
            raise CheckpointError(f"{str(self.metrics_path)!r} holds {type(data).__name__}, not an epoch's metrics")
        return data


def _describe(directory: Path) -> CheckpointDir:
    """Raises FileNotFoundError (or NotADirectoryError) when ``directory`` holds no checkpoint."""
    checkpoint_bytes = (directory / CHECKPOINT_FILE).stat().st_size
    packed = directory / PACKED_FILE
    return CheckpointDir(directory, checkpoint_bytes, packed.stat().st_size if packed.is_file() else None)


def write_checkpoint_dir(
    directory: str | os.PathLike[str],
    metrics: dict[str, Any],
    checkpoint: dict[str, Any],
    components: Components | None,
) -> CheckpointDir:
    """Write one epoch's checkpoint directory (created if needed).

    Args:
        directory: where to write it.
        metrics: the epoch's metrics (JSON-able; ``phase`` says whether a packed model belongs).
        checkpoint: the resumable state, as ``Reporter.report`` receives it.
        components: the run's components (``Reporter.on_setup``); the packed model is exported from
            their model as it is now. None: no packed model.

    Returns:
        The directory as written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, directory / CHECKPOINT_FILE)
    # The full-precision pre-training phase has no 1-bit model worth deploying.
    if metrics.get("phase") == "binary" and components is not None:
        components.save_packed(directory / PACKED_FILE)
    (directory / METRICS_FILE).write_text(json.dumps(metrics))
    return _describe(directory)


def read_checkpoint_dir(directory: str | os.PathLike[str] | None) -> CheckpointDir | None:
    """The checkpoint directory at ``directory``; None when there is none (no path given, no such
    directory, or no ``checkpoint.pt`` in it: without the resumable state it is not a checkpoint)."""
    if directory is None or not os.fspath(directory):
        return None
    try:
        return _describe(Path(directory))
    except (FileNotFoundError, NotADirectoryError):
        return None

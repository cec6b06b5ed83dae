"""Where a training run's progress goes: the ``Reporter`` protocol and the reporters of ``fsg train``.

The loop talks only to a reporter, so the CLI, the tests and Ray workers share ``fit`` unchanged: a Ray
worker's reporter forwards metrics and checkpoints to ``ray.train.report``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from fsg_core.checkpoint import save_checkpoint
from fsg_core.checkpoint_dir import CHECKPOINT_FILE, METRICS_FILE

__all__ = ["FileReporter", "MultiReporter", "Reporter", "TqdmReporter"]


class Reporter:
    """Receives a run's events; every method is optional (the base class ignores them).

    ``report`` is called on every rank after every epoch (Ray requires all ranks to report);
    ``checkpoint`` is the complete training state on rank 0 when a checkpoint is due, else None.
    """

    def on_setup(self, components: Any) -> None:
        """The run's data, model and estimators are built (``fsg_core.train.Components``)."""

    def on_phase(self, phase: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """A phase (``pretrain`` or ``binary``) starts."""

    def on_step(self, phase: str, epoch: int, step: int, loss: Tensor) -> None:
        """One optimisation step finished. ``loss`` is this rank's batch loss, a 0-dim tensor on the
        training device: reading it (``float(loss)``) waits for a GPU to finish the step, so do it
        only as often as it is shown."""

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        """An epoch finished with ``metrics``; ``checkpoint`` is the state to persist, or None."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """The run finished; ``summary`` holds best and last-k figures."""


class MultiReporter(Reporter):
    """Fans every event out to several reporters, in order."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def on_setup(self, components: Any) -> None:
        for r in self.reporters:
            r.on_setup(components)

    def on_phase(self, phase: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        for r in self.reporters:
            r.on_phase(phase, epochs, steps_per_epoch, start_epoch)

    def on_step(self, phase: str, epoch: int, step: int, loss: Tensor) -> None:
        for r in self.reporters:
            r.on_step(phase, epoch, step, loss)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        for r in self.reporters:
            r.report(metrics, checkpoint)

    def on_end(self, summary: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_end(summary)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class FileReporter(Reporter):
    """Writes ``metrics.json``, ``metrics.csv``, ``summary.json`` and ``checkpoint.pt`` under ``out_dir``.

    Files are rewritten atomically after every epoch, so a reader never sees half a file. ``out_dir`` is
    a checkpoint directory (``fsg_core.checkpoint_dir``) whose ``metrics.json`` holds the whole history.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    def _write_text(self, name: str, text: str) -> None:
        tmp = self.out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.out_dir / name)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self.rows.append({k: _json_safe(v) for k, v in metrics.items()})
        self._write_text(METRICS_FILE, json.dumps(self.rows, indent=1))
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        tmp = self.out_dir / ".metrics.csv.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.out_dir / "metrics.csv")
        if checkpoint is not None:
            save_checkpoint(checkpoint, self.checkpoint_path)

    def on_end(self, summary: dict[str, Any]) -> None:
        self._write_text("summary.json", json.dumps({k: _json_safe(v) for k, v in summary.items()}, indent=1))


class TqdmReporter(Reporter):
    """A progress bar per phase over all its steps, with the running loss and last accuracies."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Any = None
        self.last: dict[str, Any] = {}

    def on_phase(self, phase: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.last = {}  # the previous phase's accuracies would be misread as this one's
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            desc=phase,
            unit="step",
            disable=self.disable,
            dynamic_ncols=True,
        )

    def on_step(self, phase: str, epoch: int, step: int, loss: Tensor) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if step % 10 == 0:
            post = {"epoch": f"{epoch + 1}/{self.epochs}", "loss": f"{float(loss):.3f}"}
            post.update({k: f"{v:.3f}" for k, v in self.last.items()})
            self.bar.set_postfix(post, refresh=False)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self.last = {k: metrics[k] for k in ("val_acc", "test_acc") if isinstance(metrics.get(k), float)}

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

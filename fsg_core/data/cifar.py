"""CIFAR-10/100 from their standard python archives, read in place: the tar.gz or its extracted folder.

The batches are pickles, so they are read with a restricted unpickler that rebuilds numpy arrays
and nothing else: a tampered download fails with ``DatasetError`` instead of running code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fsg_core.data.errors import DatasetError

try:  # numpy >= 2 moved the array-pickling helpers to numpy._core; 1.x pickles still name numpy.core.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

__all__ = ["load_cifar"]

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE  # 3072 bytes per image, channel-major (R plane, G plane, B plane)
_Batch = tuple[Tensor, Tensor]  # images uint8 (N, 3, 32, 32), labels int64 (N,)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its batches."""

    title: str
    archive: str  # the download, e.g. cifar-10-python.tar.gz
    folder: str  # what the archive extracts to; members are f"{folder}/{batch}"
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes

    def expected(self) -> str:
        return ", ".join(self.train + self.test)


_LAYOUTS: dict[int, _Layout] = {
    10: _Layout(
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key=b"labels",
    ),
    100: _Layout(
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key=b"fine_labels",
    ),
}

# Everything the real batches (Python 2 cPickle, numpy 1.x) and re-pickled copies (Python 3, numpy 2,
# protocols 2-5) need, mapped straight to the objects so no module is ever imported by name.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol 2 stores bytes as encode(str, "latin1")
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def load_cifar(root: str | Path, num_classes: Literal[10, 100]) -> tuple[_Batch, _Batch]:
    """Read CIFAR-10 or CIFAR-100 (fine labels) from ``root``.

    ``root`` holds the extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``), which is
    preferred because it needs no decompression, or the archive as downloaded
    (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``), whose members are read in memory
    without extracting anything to disk.

    Args:
        root: directory holding the archive or the folder.
        num_classes: 10 or 100.

    Returns:
        ``((train_images, train_labels), (test_images, test_labels))``: images uint8
        (N, 3, 32, 32), labels int64 (N,) in ``[0, num_classes)``.

    Raises:
        DatasetError: ``root`` or the data is missing, corrupt or truncated, holds a forbidden
            pickle global, or has the wrong shapes or labels.
    """
    layout = _LAYOUTS[num_classes]
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DatasetError(f"data.root '{root}' {what}; point it at the directory holding {layout.archive}")
    folder, archive = root / layout.folder, root / layout.archive
    if folder.is_dir():
        batches = _read_folder(folder, layout, num_classes)
    elif archive.is_file():
        batches = _read_archive(archive, layout, num_classes)
    else:
        raise DatasetError(
            f"no {layout.title} data under '{root}': expected the archive '{archive}' or the extracted folder "
            f"'{folder}/' holding {layout.expected()} (download the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    return _concat([batches[name] for name in layout.train]), _concat([batches[name] for name in layout.test])


def _read_folder(folder: Path, layout: _Layout, num_classes: int) -> dict[str, _Batch]:
    paths = {name: folder / name for name in layout.train + layout.test}
    for path in paths.values():
        if not path.is_file():
            raise DatasetError(f"'{path}' is missing: the folder '{folder}/' must hold {layout.expected()}")
    return {name: _decode(path.read_bytes(), f"'{path}'", layout, num_classes) for name, path in paths.items()}


def _read_archive(archive: Path, layout: _Layout, num_classes: int) -> dict[str, _Batch]:
    wanted = {f"{layout.folder}/{name}": name for name in layout.train + layout.test}
    batches: dict[str, _Batch] = {}
    with archive.open("rb") as fileobj:
        try:
            # Stream mode: one sequential pass over the gzip stream. Each member is decoded as it passes,
            # so only one batch's pickle bytes (30 MB for CIFAR-10) are held at a time.
            with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
                for member in tar:
                    name = wanted.get(member.name.removeprefix("./"))
                    if name is None or not member.isfile():
                        continue
                    data = tar.extractfile(member)
                    assert data is not None  # isfile() members always have data
                    where = f"'{archive}' member '{member.name}'"
                    batches[name] = _decode(data.read(), where, layout, num_classes)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"'{archive}' is corrupt or truncated: {exc or type(exc).__name__}") from exc
    missing = [member for member, name in wanted.items() if name not in batches]
    if missing:
        raise DatasetError(
            f"'{archive}' has no member {', '.join(repr(m) for m in missing)}; a {layout.title} archive holds "
            f"{layout.folder}/ with {layout.expected()}"
        )
    return batches


def _decode(payload: bytes, where: str, layout: _Layout, num_classes: int) -> _Batch:
    """Unpickle one batch and check it: uint8 (N, 3072) data and N labels in range."""
    try:
        # encoding="bytes": the real batches are Python 2 pickles whose str keys and array buffers must stay bytes.
        batch = _ArrayUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DatasetError(
            f"{where} asks to load the Python global '{exc}', which a {layout.title} batch never holds; refusing "
            "to unpickle it (only numpy arrays are allowed). Re-download the archive from a trusted source"
        ) from None
    except Exception as exc:  # a damaged pickle can fail with almost any error type
        raise DatasetError(f"{where} is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{where} is not a {layout.title} batch: it holds a {type(batch).__name__}, not a dict")
    data = _field(batch, b"data", where)
    labels = _field(batch, layout.label_key, where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{where}: b'data' must be a uint8 array of shape (N, {_PIXELS}), got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {layout.label_key!r} must be a list of ints: {exc}") from exc
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{where}: {layout.label_key!r} has shape {labels.shape}, expected ({data.shape[0]},)")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{where}: {layout.label_key!r} range [{labels.min()}, {labels.max()}] is outside [0, {num_classes})"
        )
    # Copy: the unpickled array borrows the pickle's immutable bytes object as its buffer.
    images = torch.from_numpy(np.array(data, copy=True)).view(-1, 3, _SIDE, _SIDE)  # (N, 3, 32, 32)
    return images, torch.from_numpy(labels)


def _field(batch: dict[Any, Any], key: bytes, where: str) -> Any:
    # Python 2 pickles give bytes keys under encoding="bytes"; a Python 3 re-pickle may use str keys.
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(repr(k) for k in batch)
    raise DatasetError(f"{where} has no {key!r} entry (found: {found or 'nothing'})")


def _concat(parts: list[_Batch]) -> _Batch:
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])

"""CIFAR reading from tiny archives of the real format, built here: folder and tar.gz, errors, safety."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fsg_core.data import DatasetError, build_splits
from fsg_core.data.cifar import load_cifar
from fsg_core.spec import DataSpec

PER_BATCH = 20  # images per batch file: 5 train batches + 1 test batch for CIFAR-10

LAYOUT = {
    10: ("cifar-10-python.tar.gz", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    100: ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"]),
}


def make_batch(num_classes: int, n: int, seed: int) -> dict[bytes, object]:
    """A batch dict as in the real files (CIFAR-100 batches carry both label kinds)."""
    rng = np.random.default_rng(seed)
    batch: dict[bytes, object] = {
        b"batch_label": b"training batch %d" % seed,
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    labels = rng.integers(0, num_classes, size=n).tolist()
    if num_classes == 10:
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    return batch


def make_batches(num_classes: int) -> dict[str, dict[bytes, object]]:
    _, _, train, test = LAYOUT[num_classes]
    per_file = PER_BATCH if num_classes == 10 else 5 * PER_BATCH  # CIFAR-100 keeps all train images in one file
    return {name: make_batch(num_classes, per_file, seed) for seed, name in enumerate(train + test)}


def write_folder(root: Path, num_classes: int, payloads: dict[str, bytes]) -> Path:
    folder = root / LAYOUT[num_classes][1]
    folder.mkdir(parents=True)
    for name, payload in payloads.items():
        (folder / name).write_bytes(payload)
    return folder


def write_archive(root: Path, num_classes: int, payloads: dict[str, bytes]) -> Path:
    archive_name, folder, _, _ = LAYOUT[num_classes]
    root.mkdir(parents=True, exist_ok=True)
    archive = root / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in payloads.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


def pickled(batches: dict[str, dict[bytes, object]], protocol: int = pickle.DEFAULT_PROTOCOL) -> dict[str, bytes]:
    return {name: pickle.dumps(batch, protocol=protocol) for name, batch in batches.items()}


def expected(batches: dict[str, dict[bytes, object]], names: list[str], label_key: bytes):
    images = np.concatenate([batches[name][b"data"] for name in names]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batches[name][label_key] for name in names])
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def py2_pickle(batch: dict[bytes, object]) -> bytes:
    """Pickle ``batch`` with the opcodes Python 2's cPickle (protocol 2) and numpy 1.x wrote for the real files.

    Python 3 cannot produce these: Python 2 ``str`` is SHORT_BINSTRING/BINSTRING (decoded by the
    reader's ``encoding``), and arrays go through ``numpy.core.multiarray._reconstruct``.
    """

    def string(value: bytes) -> bytes:
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def integer(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    def array(data: np.ndarray) -> bytes:
        dtype = b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
        dtype += b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        out = (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b") + b"\x87R"
        )
        shape = b"(" + b"".join(integer(d) for d in data.shape) + b"t"
        return out + b"(" + integer(1) + shape + dtype + b"\x89" + string(data.tobytes()) + b"tb"

    body = b""
    for key, value in batch.items():
        body += string(key)
        if isinstance(value, np.ndarray):
            body += array(value)
        elif isinstance(value, bytes):
            body += string(value)
        else:  # a list of ints or of bytes
            body += b"](" + b"".join(integer(v) if isinstance(v, int) else string(v) for v in value) + b"e"
    return b"\x80\x02}(" + body + b"u."


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("form", ["folder", "archive"])
def test_load_shapes_labels_and_pixels(tmp_path: Path, num_classes: int, form: str) -> None:
    batches = make_batches(num_classes)
    (write_folder if form == "folder" else write_archive)(tmp_path, num_classes, pickled(batches))
    (train_x, train_y), (test_x, test_y) = load_cifar(tmp_path, num_classes)

    _, _, train_names, test_names = LAYOUT[num_classes]
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    want_train, want_train_y = expected(batches, train_names, label_key)
    want_test, want_test_y = expected(batches, test_names, label_key)
    assert train_x.shape == (5 * PER_BATCH, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape[1:] == (3, 32, 32) and len(test_x) == len(test_y) > 0
    assert train_y.dtype == torch.int64 and int(train_y.min()) >= 0 and int(train_y.max()) < num_classes
    assert torch.equal(train_x, want_train) and torch.equal(train_y, want_train_y)
    assert torch.equal(test_x, want_test) and torch.equal(test_y, want_test_y)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_folder_and_archive_give_identical_tensors(tmp_path: Path, num_classes: int) -> None:
    payloads = pickled(make_batches(num_classes))
    write_folder(tmp_path / "a", num_classes, payloads)
    write_archive(tmp_path / "b", num_classes, payloads)
    from_folder = load_cifar(tmp_path / "a", num_classes)
    from_archive = load_cifar(tmp_path / "b", num_classes)
    for (x1, y1), (x2, y2) in zip(from_folder, from_archive, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_any_pickle_protocol_loads(tmp_path: Path, protocol: int) -> None:
    batches = make_batches(10)
    write_archive(tmp_path, 10, pickled(batches, protocol))
    (train_x, train_y), _ = load_cifar(tmp_path, 10)
    assert torch.equal(train_x, expected(batches, LAYOUT[10][2], b"labels")[0])


def test_python2_pickles_of_the_real_files_load(tmp_path: Path) -> None:
    batches = make_batches(10)
    write_folder(tmp_path, 10, {name: py2_pickle(batch) for name, batch in batches.items()})
    (train_x, train_y), (test_x, test_y) = load_cifar(tmp_path, 10)
    want_x, want_y = expected(batches, LAYOUT[10][2], b"labels")
    assert torch.equal(train_x, want_x) and torch.equal(train_y, want_y)


def test_build_splits_keeps_pixels_and_uses_the_official_test_set(tmp_path: Path) -> None:
    batches = make_batches(10)
    write_archive(tmp_path, 10, pickled(batches))
    splits = build_splits(DataSpec(dataset="cifar10", root=str(tmp_path), val_fraction=0.0), seed=0)

    assert (splits.name, splits.num_classes, splits.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert len(splits.val) == 0 and splits.val.images.shape == (0, 3, 32, 32)
    mean = torch.tensor(splits.mean).view(1, 3, 1, 1)
    std = torch.tensor(splits.std).view(1, 3, 1, 1)
    for split, names in ((splits.train, LAYOUT[10][2]), (splits.test, LAYOUT[10][3])):
        want_x, want_y = expected(batches, names, b"labels")
        # With no validation split, both splits keep the files' order.
        restored = ((split.images * std + mean) * 255).round().to(torch.uint8)
        assert torch.equal(restored, want_x) and torch.equal(split.labels, want_y)


# ----- errors: each names the file and what was expected -----


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=f"data.root '{missing}' does not exist"):
        load_cifar(missing, 10)


def test_nothing_under_root_names_both_expected_forms(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_cifar(tmp_path, 100)
    message = str(info.value)
    assert "cifar-100-python.tar.gz" in message and "cifar-100-python/" in message and str(tmp_path) in message


def test_folder_missing_a_batch(tmp_path: Path) -> None:
    payloads = pickled(make_batches(10))
    del payloads["data_batch_3"]
    folder = write_folder(tmp_path, 10, payloads)
    with pytest.raises(DatasetError, match=f"'{folder / 'data_batch_3'}' is missing"):
        load_cifar(tmp_path, 10)


def test_archive_missing_a_member(tmp_path: Path) -> None:
    payloads = pickled(make_batches(10))
    del payloads["test_batch"]
    archive = write_archive(tmp_path, 10, payloads)
    with pytest.raises(DatasetError, match="cifar-10-batches-py/test_batch") as info:
        load_cifar(tmp_path, 10)
    assert str(archive) in str(info.value)


def test_truncated_archive(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, 10, pickled(make_batches(10)))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="is corrupt or truncated") as info:
        load_cifar(tmp_path, 10)
    assert str(archive) in str(info.value)


def test_archive_that_is_not_gzip(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz' is corrupt or truncated"):
        load_cifar(tmp_path, 10)


def test_archive_truncated_inside_the_tar(tmp_path: Path) -> None:
    # A valid gzip stream around a cut tar: the tar layer, not gzip, notices.
    archive = write_archive(tmp_path, 10, pickled(make_batches(10)))
    tar_bytes = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(tar_bytes[: len(tar_bytes) // 2]))
    with pytest.raises(DatasetError, match="is corrupt or truncated"):
        load_cifar(tmp_path, 10)


def test_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    payloads = pickled(make_batches(10))
    payloads["data_batch_2"] = payloads["data_batch_2"][:1000]
    folder = write_folder(tmp_path, 10, payloads)
    with pytest.raises(DatasetError, match=f"'{folder / 'data_batch_2'}' is corrupt or truncated"):
        load_cifar(tmp_path, 10)


class _RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_pickle_with_a_forbidden_global_is_refused_without_running_it(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    batches = make_batches(10)
    payloads = pickled(batches)
    payloads["data_batch_4"] = pickle.dumps({b"data": _RunsAShellCommand(f"touch {marker}"), b"labels": []})
    (write_folder if form == "folder" else write_archive)(tmp_path / "root", 10, payloads)
    with pytest.raises(DatasetError, match=r"data_batch_4.*global '(posix|os|nt)\.system'"):
        load_cifar(tmp_path / "root", 10)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (b"data", np.zeros((PER_BATCH, 100), dtype=np.uint8), r"shape \(N, 3072\)"),
        (b"data", np.zeros((PER_BATCH, 3072), dtype=np.float32), "uint8"),
        (b"labels", [0] * (PER_BATCH - 1), "labels"),
        (b"labels", [10] * PER_BATCH, r"outside \[0, 10\)"),
    ],
)
def test_wrong_contents_name_the_file(tmp_path: Path, field: bytes, value: object, match: str) -> None:
    batches = make_batches(10)
    batches["data_batch_1"][field] = value
    folder = write_folder(tmp_path, 10, pickled(batches))
    with pytest.raises(DatasetError, match=match) as info:
        load_cifar(tmp_path, 10)
    assert str(folder / "data_batch_1") in str(info.value)


def test_missing_label_key(tmp_path: Path) -> None:
    batches = make_batches(100)
    del batches["test"][b"fine_labels"]
    write_archive(tmp_path, 100, pickled(batches))
    with pytest.raises(DatasetError, match="member 'cifar-100-python/test' has no b'fine_labels' entry"):
        load_cifar(tmp_path, 100)

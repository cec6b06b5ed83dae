"""Storage: layout, confinement of user paths, atomic writes, what may be served."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.storage import ArtifactNotFound, Storage, confine, write_text_atomic


def test_layout(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "art")
    storage.ensure()
    assert storage.job_dir("abc123") == tmp_path / "art" / "jobs" / "abc123"
    assert storage.log_path("abc123") == tmp_path / "art" / "jobs" / "abc123" / "log.txt"
    assert storage.ray_storage_path() == tmp_path / "art" / "ray" and storage.ray_storage_path().is_dir()
    assert storage.roots == [tmp_path / "art"]
    elsewhere = Storage(tmp_path / "art", ray_storage=tmp_path / "shared")
    assert elsewhere.roots == [tmp_path / "art", tmp_path / "shared"]
    for bad in ["", "../x", "a/b", "x" * 65, "a b"]:
        with pytest.raises(ValueError):
            storage.job_dir(bad)


def test_confine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cifar").mkdir(parents=True)
    assert confine(root / "cifar", [root]) == root / "cifar"
    assert confine("cifar", [root]) == root / "cifar"  # relative to the first root
    assert confine(root, [root]) == root
    assert confine(root / "not-yet", [tmp_path / "other", root]) == root / "not-yet"
    for bad in ["/etc", str(root / ".." / "data" / "cifar"), "../data", "", "a\x00b", str(tmp_path / "data2")]:
        with pytest.raises(ValueError):
            confine(bad, [root])
    with pytest.raises(ValueError):
        confine("x", [])


def test_confine_resolves_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "escape")
    os.symlink(root / "real", root / "inner")
    with pytest.raises(ValueError, match="outside"):
        confine(root / "escape" / "file", [root])
    assert confine(root / "inner", [root]) == root / "real"
    linked_root = tmp_path / "linked"
    os.symlink(root, linked_root)
    assert confine(linked_root / "x", [root]) == root / "x"  # a root reached through a link is still inside


def test_atomic_text_writes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]  # no temporary left behind
    storage = Storage(tmp_path / "art")
    assert storage.write_text("jobs/j1/note.txt", "hi").read_text() == "hi"
    with pytest.raises(ValueError):
        storage.write_text(tmp_path / "elsewhere.txt", "no")


def test_servable_files(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "art")
    inside = storage.job_dir("j1") / "f.bin"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"x" * 1000)
    assert storage.servable(inside, "file") == inside
    assert b"".join(storage.iter_bytes(inside, chunk_bytes=64)) == b"x" * 1000
    assert b"".join(storage.iter_bytes(inside, start=990)) == b"x" * 10
    outside = tmp_path / "secret"
    outside.write_bytes(b"s")
    os.symlink(outside, storage.job_dir("j1") / "link")
    for bad in [None, "", outside, storage.job_dir("j1") / "link", storage.job_dir("j1"), storage.job_dir("j1") / "no"]:
        with pytest.raises(ArtifactNotFound) as info:
            storage.servable(bad, "checkpoint file")
        assert str(tmp_path) not in str(info.value)
    assert storage.read_from(storage.job_dir("j2") / "log.txt", 0) == b""
    assert storage.read_from(inside, 998) == b"xx"


def test_owner_and_ray_record(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "art")
    assert storage.owner_job_id(storage.ray_storage_path() / "job1" / "checkpoint_000001" / "c.pt") == "job1"
    assert storage.owner_job_id(storage.job_dir("job2") / "x") == "job2"
    assert storage.owner_job_id(storage.root / "ray.json") is None
    assert storage.owner_job_id(tmp_path / "elsewhere") is None
    assert storage.read_ray_record() is None
    storage.write_ray_record({"address": "127.0.0.1:1234", "dashboard_url": "http://127.0.0.1:8300"})
    assert storage.read_ray_record() == {"address": "127.0.0.1:1234", "dashboard_url": "http://127.0.0.1:8300"}
    assert storage.dashboard_url(None) == "http://127.0.0.1:8300"
    assert storage.dashboard_url("http://dash:1/") == "http://dash:1"
    storage.clear_ray_record()
    assert storage.dashboard_url(None, 9000) == "http://127.0.0.1:9000"

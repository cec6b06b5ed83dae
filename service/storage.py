"""Artifact files under one root (``FSG_HOME/artifacts`` by default): job logs, Ray Train's run
directories with their checkpoints, and the note the dispatcher leaves about the Ray it started.

Layout::

    <root>/jobs/<job id>/log.txt   the job's log (workers append; the API reads and follows it)
    <root>/jobs/<job id>/checkpoints/<name>/   checkpoint directories of ``ray_task`` attempts
    <root>/jobs/<job id>/...       anything else a job keeps (packed exports)
    <root>/ray/<job id>/...        Ray Train / Tune ``storage_path``: run directories, checkpoints
    <root>/ray.json                the local Ray the dispatcher started (address, dashboard URL)

Every path that comes from a request or from the database goes through ``confine`` before it is
opened, so a path can never reach outside the allowed roots (symlinks resolved, ``..`` refused).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fsg_core.files import write_atomic

__all__ = ["ArtifactNotFound", "Storage", "confine", "write_text_atomic"]

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHUNK_BYTES = 256 * 1024


class ArtifactNotFound(FileNotFoundError):
    """A file the API was asked for does not exist (or is not one it may serve); the API answers 404.

    The message names the artifact, never its location on the server.
    """


def confine(path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]], *, base: Path | None = None) -> Path:
    """Resolve ``path`` and return it if it lies inside one of ``roots``.

    Symlinks are resolved on both sides before the comparison, so a link inside a root that points
    outside it is refused. A relative ``path`` is taken relative to ``base`` (default: the first root).

    Raises:
        ValueError: ``path`` is empty, contains ``..`` or a NUL byte, or resolves outside every root.
    """
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise ValueError("path must be a non-empty string without NUL bytes")
    candidate = Path(text).expanduser()
    if ".." in candidate.parts:
        raise ValueError(f"path {text!r} must not contain '..'")
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    if not resolved_roots:
        raise ValueError("no allowed roots are configured")
    if not candidate.is_absolute():
        candidate = (base or resolved_roots[0]) / candidate
    resolved = candidate.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in resolved_roots):
        allowed = ", ".join(str(r) for r in resolved_roots)
        raise ValueError(f"path {text!r} is outside the allowed directories ({allowed})")
    return resolved


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``fsg_core.files.write_atomic``): readers see old or new, never half."""
    write_atomic(path, text)


class Storage:
    """The artifact store of one deployment.

    Args:
        root: the directory that holds everything (created on first use).
        ray_storage: where Ray Train writes run directories; default ``<root>/ray``. It may lie
            elsewhere (a shared mount); files under it are served like those under ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], *, ray_storage: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self._ray_storage = Path(ray_storage).expanduser().resolve() if ray_storage else self.root / "ray"
        # The Ray record, keyed by the file's (mtime, size): every job response names the dashboard,
        # and a stat costs far less than reading and parsing the note on each request.
        self._ray_record_cache: tuple[tuple[int, int], dict[str, Any] | None] | None = None

    @property
    def roots(self) -> list[Path]:
        """The directories whose files the API may serve."""
        return [self.root] if self._ray_storage.is_relative_to(self.root) else [self.root, self._ray_storage]

    def ensure(self) -> None:
        """Create the root and the Ray storage directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._ray_storage.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        """``<root>/jobs/<job id>`` (not created). Refuses ids that could name another directory."""
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / "jobs" / job_id

    def log_path(self, job_id: str) -> Path:
        """The job's log file, appended to by its workers."""
        return self.job_dir(job_id) / "log.txt"

    def checkpoints_dir(self, job_id: str) -> Path:
        """Where attempts that run outside Ray Train (``ray_task``) write their checkpoint directories
        (``fsg_core.checkpoint_dir``); Ray Train keeps its own under ``ray_storage_path()``."""
        return self.job_dir(job_id) / "checkpoints"

    def ray_storage_path(self) -> Path:
        """``RunConfig(storage_path=...)`` of every job: Ray writes ``<this>/<job id>/...``."""
        return self._ray_storage

    def ray_record_path(self) -> Path:
        """Where the dispatcher records the local Ray it started (``write_ray_record``)."""
        return self.root / "ray.json"

    def write_ray_record(self, record: dict[str, Any]) -> None:
        """Record the running local Ray: ``{"address": "host:port", "dashboard_url": "http://..."}``."""
        write_text_atomic(self.ray_record_path(), json.dumps(record))

    def read_ray_record(self) -> dict[str, Any] | None:
        """The recorded local Ray, or None when none is recorded (or the note is unreadable)."""
        try:
            record = json.loads(self.ray_record_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _cached_ray_record(self) -> dict[str, Any] | None:
        try:
            stat = self.ray_record_path().stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        if self._ray_record_cache is None or self._ray_record_cache[0] != key:
            self._ray_record_cache = (key, self.read_ray_record())
        return self._ray_record_cache[1]

    def clear_ray_record(self) -> None:
        self.ray_record_path().unlink(missing_ok=True)

    def dashboard_url(self, configured: str | None, default_port: int = 8265) -> str:
        """The Ray dashboard: ``configured`` (``FSG_RAY_DASHBOARD_URL``), else the recorded local Ray's,
        else the local default port."""
        record = self._cached_ray_record() or {}
        url = configured or record.get("dashboard_url") or f"http://127.0.0.1:{default_port}"
        return str(url).rstrip("/")

    def write_text(self, path: str | os.PathLike[str], text: str) -> Path:
        """Atomically write ``text`` to ``path``, which must lie inside the store."""
        target = confine(path, self.roots)
        write_text_atomic(target, text)
        return target

    def owner_job_id(self, path: str | os.PathLike[str]) -> str | None:
        """The job whose directory holds ``path`` (``jobs/<id>/...`` or the Ray run ``<id>/...``), if any."""
        try:
            resolved = confine(path, self.roots)
        except ValueError:
            return None
        for base in (self.root / "jobs", self._ray_storage):
            if resolved.is_relative_to(base):
                parts = resolved.relative_to(base).parts
                if parts and _JOB_ID.match(parts[0]):
                    return parts[0]
        return None

    def servable(self, path: str | os.PathLike[str] | None, what: str) -> Path:
        """The regular file at ``path`` if the API may serve it.

        Raises:
            ArtifactNotFound: no path, the path is outside the store, or no regular file is there.
        """
        if not path:
            raise ArtifactNotFound(f"{what} not found")
        try:
            resolved = confine(path, self.roots)
        except ValueError:
            raise ArtifactNotFound(f"{what} not found") from None
        if not resolved.is_file():
            raise ArtifactNotFound(f"{what} not found")
        return resolved

    def iter_bytes(self, path: Path, *, start: int = 0, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[bytes]:
        """The bytes of a servable file from ``start`` on, in chunks (constant memory)."""
        with self.servable(path, "file").open("rb") as fh:
            fh.seek(start)
            while chunk := fh.read(chunk_bytes):
                yield chunk

    def read_from(self, path: Path, offset: int, max_bytes: int = 4 * _CHUNK_BYTES) -> bytes:
        """At most ``max_bytes`` of ``path`` from ``offset`` (b"" when the file does not exist yet)."""
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(max_bytes)
        except FileNotFoundError:
            return b""

"""The API under test: ``create_app(Settings(...))`` on a fresh FSG_HOME and a fresh migrated database
(the shared ``db_url``: SQLite and PostgreSQL), tokens for two tenants, and a fake worker that writes
what the real ones write (through queue and records, no Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.db import queue, records
from service.db.engine import Database
from service.db.models import Checkpoint, Job, JobEvent, utcnow
from service.db.states import JobState
from service.security import create_token
from service.settings import Settings


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, db_url: str, data_root: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, data_roots=[data_root], max_page_size=20)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:  # runs the lifespan: migrations, Database
        yield c


@pytest.fixture
def database(client: TestClient) -> Database:
    """The app's own database handle (open while ``client`` is)."""
    db = client.app.state.db  # type: ignore[attr-defined]
    assert db is not None
    return db


def _headers(database: Database, tenant: str, ttl_days: int | None = 30) -> dict[str, str]:
    with database.write() as session:
        secret = create_token(session, tenant, "test", ttl_days)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def auth(database: Database) -> dict[str, str]:
    """Headers of tenant ``alice``."""
    return _headers(database, "alice")


@pytest.fixture
def other_auth(database: Database) -> dict[str, str]:
    """Headers of tenant ``bob``."""
    return _headers(database, "bob")


class Counts:
    """Rows that a rejected request must not have written."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __call__(self) -> tuple[int, int]:
        with self.database.read() as session:
            jobs = session.scalar(select(func.count()).select_from(Job))
            events = session.scalar(select(func.count()).select_from(JobEvent))
        return int(jobs or 0), int(events or 0)


@pytest.fixture
def counts(database: Database) -> Counts:
    return Counts(database)


class FakeWorker:
    """Moves jobs and writes their rows the way the dispatcher and the Ray callbacks do."""

    def __init__(self, database: Database, artifacts: Path) -> None:
        self.database, self.artifacts = database, artifacts

    def _job(self, session: Any, job_id: str) -> Job:
        job = session.get(Job, job_id)
        assert job is not None
        return job

    def start(self, job_id: str) -> None:
        """queued -> dispatching -> running, one attempt counted."""
        with self.database.write() as session:
            job = self._job(session, job_id)
            job.attempts += 1
            job.lease_owner, job.lease_until = "fake-worker", utcnow()
            queue.transition(session, job, JobState.dispatching, message="claimed by fake-worker")
            queue.transition(session, job, JobState.running, message="attempt started")

    def finish(self, job_id: str, state: JobState = JobState.succeeded, **kwargs: Any) -> None:
        with self.database.write() as session:
            queue.transition(session, self._job(session, job_id), state, **kwargs)

    def report(self, job_id: str, rows: list[dict[str, Any]], *, attempt: int = 1, trial_key: str = "") -> None:
        with self.database.write() as session:
            records.record_metrics(session, job_id, rows, attempt=attempt, trial_key=trial_key)

    def checkpoint(
        self, job_id: str, *, epoch: int, packed: Path | None = None, full: Path | None = None, phase: str = "binary"
    ) -> int:
        with self.database.write() as session:
            row: Checkpoint = records.record_checkpoint(
                session,
                job_id,
                epoch=epoch,
                phase=phase,
                full_path=str(full) if full else None,
                packed_path=str(packed) if packed else None,
                full_bytes=full.stat().st_size if full else None,
                packed_bytes=packed.stat().st_size if packed else None,
                metrics={"val_acc": 0.5},
            )
            return row.id

    def trial(self, job_id: str, key: str, config: dict[str, Any], state: str, metric: float | None = None) -> None:
        with self.database.write() as session:
            records.upsert_trial(session, job_id, trial_key=key, config=config, state=state, metric=metric, epochs=1)


@pytest.fixture
def worker(database: Database, settings: Settings) -> FakeWorker:
    return FakeWorker(database, settings.resolved_artifacts_dir)


@pytest.fixture
def submit(client: TestClient, auth: dict[str, str], tiny_spec: Any) -> Any:
    """``submit(**overrides) -> job JSON``: POST a tiny spec as ``alice`` and expect 201."""

    def _submit(headers: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
        response = client.post("/v1/jobs", json=tiny_spec(**overrides), headers=headers or auth)
        assert response.status_code == 201, response.text
        return response.json()

    return _submit


@pytest.fixture(scope="session")
def packed_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real packed file of an untrained binary ResNet-20 (1 input channel, 8x8, 10 classes)."""
    from fsg_core.binary import Binarizer
    from fsg_core.estimators import get
    from fsg_core.models import LayerFactory, build_model
    from fsg_core.packed import save_packed
    from fsg_core.spec import BinarizeSpec

    factory = LayerFactory(binarizer=Binarizer("dorefa"), estimator=get("ste")())
    model = build_model("resnet20", num_classes=10, in_channels=1, factory=factory)
    path = tmp_path_factory.mktemp("packed") / "model.packed.safetensors"
    save_packed(
        model,
        path,
        arch="resnet20",
        num_classes=10,
        in_channels=1,
        input_shape=(1, 8, 8),
        mean=[0.5],
        std=[0.25],
        binarize=BinarizeSpec().model_dump(mode="json"),
        act_estimator=None,
    )
    return path.read_bytes()


@pytest.fixture
def artifacts(settings: Settings, packed_bytes: bytes) -> Any:
    """``artifacts(job_id, epoch) -> (packed, full)``: files where Ray Train would write a checkpoint."""

    def _write(job_id: str, epoch: int) -> tuple[Path, Path]:
        directory = settings.resolved_artifacts_dir / "ray" / job_id / f"checkpoint_{epoch:06d}"
        directory.mkdir(parents=True)
        packed, full = directory / "model.packed.safetensors", directory / "checkpoint.pt"
        packed.write_bytes(packed_bytes)
        full.write_bytes(bytes(range(256)) * (40 + epoch))  # any bytes: the API streams, never parses, these
        return packed, full

    return _write

"""Service settings, read once from the environment (``FSG_*``, plus ``RAY_ADDRESS``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Everything the API, the dispatcher and the CLI need to find each other.

    Defaults give the embedded set-up: SQLite and artifacts under ``FSG_HOME`` and a local Ray
    started by the dispatcher. ``FSG_DATABASE_URL`` (PostgreSQL) and ``RAY_ADDRESS`` scale it out.
    """

    model_config = SettingsConfigDict(env_prefix="FSG_", extra="ignore")

    home: Path = Field(Path(".fsg"), description="state directory: SQLite file, artifacts, logs")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/fsg.db")
    artifacts_dir: Path | None = Field(None, description="checkpoints and logs; default <home>/artifacts")
    data_roots: list[Path] = Field(
        default_factory=list,
        description="directories a job's data.root may point into (default: <home>/data)",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("RAY_ADDRESS", "FSG_RAY_ADDRESS"),
        description="an existing Ray cluster; unset starts a local one",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: all)")
    ray_num_gpus: int | None = Field(None, ge=0, description="GPUs of the local Ray (default: detected)")
    ray_dashboard_port: int = Field(8265, ge=1, le=65535, description="dashboard port of the local Ray")
    ray_object_store_mb: int = Field(256, ge=64, description="object store of the local Ray (jobs pass little data)")
    ray_dashboard_url: str | None = Field(None, description="base URL of the Ray dashboard; default from Ray")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_url: str | None = Field(None, description="where clients reach the API; default http://host:port")
    lease_s: float = Field(30.0, gt=1, le=3600, description="a claimed job's lease; renewed while it runs")
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="dispatcher loop period")
    db_outage_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="how long a run's metrics writer keeps retrying while the database is unreachable",
    )
    heartbeat_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="how often a dispatcher writes its heartbeat row; /metrics calls it dead after 3 missed beats",
    )
    dispatcher_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the dispatcher's own Prometheus endpoint, on api_host (unset: off; 0: any free port)",
    )
    instance_id: str | None = Field(
        None, max_length=64, description="set by fsg up for its API: /healthz echoes it (X-FSG-Instance)"
    )
    verbose: bool = Field(
        False, description="library chatter too (Alembic's migration lines, Ray's start-up); off: what a person needs"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object per line (with job_id, attempt, dispatcher)"
    )
    # Quotas every tenant gets unless `fsg tenant set` overrides them (unset: no limit).
    tenant_max_running: int | None = Field(None, ge=1, description="jobs a tenant may have on Ray at once")
    tenant_max_cpus: float | None = Field(None, gt=0, description="CPUs a tenant's running jobs may hold")
    tenant_max_gpus: float | None = Field(None, ge=0, description="GPUs a tenant's running jobs may hold")
    tenant_max_queued: int | None = Field(None, ge=0, description="jobs a tenant may have waiting; more is 429")
    tenant_max_priority: int | None = Field(None, description="the highest priority a tenant may ask for")
    reserve_after_s: float = Field(
        600.0,
        ge=0,
        le=7 * 24 * 3600,
        description="a job that waited this long and does not fit reserves what it needs: jobs behind it no "
        "longer run ahead of it (backfill without starvation)",
    )
    retry_after_s: int = Field(30, ge=1, le=3600, description="Retry-After of a 429 for a full queue quota")
    token_ttl_days: int = Field(90, ge=1, le=3650)
    max_page_size: int = Field(200, ge=1, le=10_000)
    max_streams_per_tenant: int = Field(
        16, ge=1, le=10_000, description="followed logs and event streams a tenant may hold open at once; more is 429"
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=1 << 30,
        description="largest request body; more is 413, refused while it streams in and before the token is read",
    )

    @field_validator("home", "artifacts_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'fsg.db'}"

    @property
    def database_url_for_display(self) -> str:
        """The database URL with its password masked (``***``): what output and logs may show."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(self.resolved_database_url).render_as_string(hide_password=True)
        except ArgumentError:
            return "(unparseable database URL)"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir or self.home / "artifacts"

    @property
    def resolved_data_roots(self) -> list[Path]:
        return [p.expanduser().resolve() for p in self.data_roots] or [self.home / "data"]

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

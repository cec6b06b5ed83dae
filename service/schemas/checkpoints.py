"""Checkpoints and the packed model summary as the API shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.schemas.base import ReadModel, UtcDatetime

__all__ = ["CheckpointRead", "SummaryRead"]


class CheckpointRead(ReadModel):
    """One checkpoint: ``full`` is the resumable training state, ``packed`` the 1-bit deployment file."""

    id: int
    epoch: int
    phase: str
    trial_key: str
    full_bytes: int | None
    packed_bytes: int | None
    metrics: dict[str, Any] | None
    created_at: UtcDatetime
    full_url: str | None = Field(None, description="download of the training state; null if none was written")
    packed_url: str | None = Field(None, description="download of the packed model; null if none was written")
    onnx_url: str | None = Field(
        None, description="download of the packed model as ONNX (made on first request); null without a packed model"
    )

    @classmethod
    def from_row(cls, row: Any, job_id: str) -> CheckpointRead:
        base = f"/v1/jobs/{job_id}/checkpoints/{row.id}"
        out = cls.model_validate(row)
        out.full_url = f"{base}?format=full" if row.full_path else None
        out.packed_url = f"{base}?format=packed" if row.packed_path else None
        out.onnx_url = f"{base}?format=onnx" if row.packed_path else None
        return out


class SummaryRead(BaseModel):
    """The packed model of the latest packed checkpoint, described (``fsg_core.summary.describe_packed``)."""

    checkpoint_id: int
    epoch: int
    phase: str
    summary: dict[str, Any] = Field(description="per-layer rows and totals: 1-bit vs fp parameters, bytes, MACs")
    file_bytes: int
    fp32_state_dict_bytes: int
    compression_ratio: float
    header: dict[str, Any] = Field(description="the packed file's metadata")

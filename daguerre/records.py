"""Small typed records passed between tasks and written to the catalog.

They carry references (URIs) and hashes, never pixels, so Prefect can persist and ship them
between workers cheaply. Every field is JSON-serialisable.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

# The pixel stages in the order they run. Detection comes before them, store and record after.
PIXEL_STAGES: tuple[str, ...] = ("denoise", "inpaint", "tone", "upscale", "colorize")
ALL_STAGES: tuple[str, ...] = ("detect", *PIXEL_STAGES, "store")


class StepStatus(StrEnum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    FAILED = "failed"


class RestorationStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # already restored with the same configuration


class AssetFacts(BaseModel):
    """What we know about one master file. Width etc. are None when it could not be decoded."""

    source_uri: str
    relative_path: str
    sha256: str
    bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    bands: int | None = None
    bit_depth: int | None = None
    colour_space: str | None = None
    has_alpha: bool | None = None
    icc_profile_sha256: str | None = None
    ppi: float | None = None
    error: str | None = None  # why the master cannot be restored (decode failure, not an image)


class StepFacts(BaseModel):
    """One stage applied to (or skipped for) one image, with everything an audit needs."""

    stage: str
    order: int
    status: StepStatus
    reason: str | None = None  # why it was skipped, or the error when it failed
    operator: str | None = None  # algorithm or model id, e.g. "opencv.nlm" or "daguerre-denoise-s"
    operator_version: str | None = None
    weights_sha256: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None
    duration_s: float | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime | None = None


class DerivativeFacts(BaseModel):
    uri: str
    kind: str  # "preservation", "access", "damage-mask"
    sha256: str
    format: str
    bytes: int
    width: int | None = None
    height: int | None = None


class ImageRef(BaseModel):
    """A reference to pixels between stages: where they are stored and their hash."""

    uri: str
    sha256: str
    width: int
    height: int

"""Read models returned by the catalog's audit queries (``daguerre audit``).

Plain pydantic models: ``model_dump(mode="json")`` gives JSON-ready dicts, datetimes as ISO 8601
strings in UTC.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from daguerre.records import AssetFacts, DerivativeFacts, RestorationStatus, StepFacts


class MatchKind(StrEnum):
    """How an item given to ``Catalog.history`` matched an asset."""

    SOURCE_URI = "source_uri"  # the master's URI
    SHA256 = "sha256"  # the master's hash
    DERIVATIVE_URI = "derivative_uri"
    DERIVATIVE_SHA256 = "derivative_sha256"
    STEP_INPUT_SHA256 = "step_input_sha256"  # an intermediate image fed to a stage
    STEP_OUTPUT_SHA256 = "step_output_sha256"  # an intermediate image a stage produced


class RunInfo(BaseModel):
    """One execution of the restoration flow."""

    run_id: int
    flow_run_id: str | None
    collection: str
    code_version: str
    config_hash: str
    started_at: datetime
    finished_at: datetime | None
    status: str


class RestorationHistory(BaseModel):
    """What one run did to one asset: its steps in order and the derivatives it produced
    (or reused, for a skipped restoration)."""

    restoration_id: int
    run: RunInfo
    config_hash: str
    status: RestorationStatus
    plan: dict[str, Any] | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    steps: list[StepFacts] = Field(default_factory=list)
    derivatives: list[DerivativeFacts] = Field(default_factory=list)


class AssetHistory(BaseModel):
    """One master and every restoration of it, in run order."""

    asset_id: int
    collection_id: int
    collection: str
    facts: AssetFacts
    registered_at: datetime
    updated_at: datetime
    matched_by: list[MatchKind]
    restorations: list[RestorationHistory] = Field(default_factory=list)


class TouchedStep(BaseModel):
    """One application of an operator (or of a weights file) to one asset in one run."""

    asset_id: int
    collection: str
    source_uri: str
    page: int = 0  # the page of a multi-page master
    asset_sha256: str
    run: RunInfo
    restoration_id: int
    restoration_status: RestorationStatus
    step: StepFacts
    derivatives: list[DerivativeFacts] = Field(default_factory=list)

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
PIXEL_STAGES: tuple[str, ...] = ("denoise", "inpaint", "face", "tone", "upscale", "colorize")
# What `restore` runs unless told otherwise. Colorization is an interpretation: opt-in. Face
# restoration runs only where faces were found and the user configured a face model.
DEFAULT_STEPS: tuple[str, ...] = ("denoise", "inpaint", "face", "tone", "upscale")
ALL_STAGES: tuple[str, ...] = ("detect", *PIXEL_STAGES, "store")
# A page of a multi-page master is addressed as `KEY#page=N` (N > 0; page 0 is the plain key).
PAGE_MARK = "#page="


def split_page(relative_path: str) -> tuple[str, int]:
    """`scan.tif#page=2` -> ("scan.tif", 2); a plain key is page 0.

    Only a mark followed by digits at the end counts, so an odd file name that merely contains
    the mark is its own key.
    """
    key, mark, page = relative_path.rpartition(PAGE_MARK)
    if mark and page.isascii() and page.isdigit():
        return key, int(page)
    return relative_path, 0


def page_path(key: str, page: int) -> str:
    """The inverse of `split_page`: `("scan.tif", 2)` -> `scan.tif#page=2`, page 0 -> the key."""
    return f"{key}{PAGE_MARK}{page}" if page else key


class StepStatus(StrEnum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    FAILED = "failed"


class RestorationStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # already restored with the same configuration


class AssetFacts(BaseModel):
    """What we know about one master: a file, or one page of a multi-page file (a TIFF whose
    pages are separate scans). Width etc. are None when it could not be decoded.

    `source_uri`, `sha256` and `bytes` are the file's, shared by all its pages; `page` is the
    page index in the file (0 for a single-page file) and `relative_path` is `KEY#page=N` for
    a page N > 0. An asset is identified by (source_uri, sha256, page).
    """

    source_uri: str
    relative_path: str
    sha256: str
    bytes: int
    page: int = 0
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

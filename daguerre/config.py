"""Configuration of a restore job: one typed object, hashed to decide what "already done" means."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from daguerre import __version__
from daguerre.records import DEFAULT_STEPS, PIXEL_STAGES

CATALOG_ENV = "DAGUERRE_CATALOG_URL"
DEFAULT_CATALOG_FILE = "daguerre-catalog.sqlite"


def default_catalog_url() -> str:
    """`DAGUERRE_CATALOG_URL`, else a SQLite file in the current directory."""
    url = os.environ.get(CATALOG_ENV)
    if url:
        return url
    return f"sqlite:///{Path(DEFAULT_CATALOG_FILE).resolve()}"


def parse_steps(text: str | None) -> tuple[str, ...]:
    """Parse `--steps denoise,inpaint` ("all", "default"); ValueError on unknown names."""
    if text is None or text.strip() in ("", "default"):
        return DEFAULT_STEPS
    if text.strip() == "all":
        return PIXEL_STAGES
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in PIXEL_STAGES]
    if unknown:
        raise ValueError(
            f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(PIXEL_STAGES)}"
        )
    # Keep the pipeline order whatever order the user typed.
    return tuple(s for s in PIXEL_STAGES if s in names)


class RestoreConfig(BaseModel):
    """Everything `restore_collection` needs. Only `output_fields` decide the outputs' content."""

    source: str
    dest: str
    catalog_url: str = Field(default_factory=default_catalog_url)
    collection: str | None = None
    steps: tuple[str, ...] = DEFAULT_STEPS
    scale: int | None = None  # None: automatic, from the detected resolution
    device: Literal["auto", "cpu", "cuda"] = "auto"
    upscale_below_long_edge: int = 512
    # Learned denoise, upscale and inpaint models averaged over this many flips/quarter turns
    # (1, 2, 4, 8): that many times slower, a little better (archival quality).
    ensemble: int = 1
    preservation_format: Literal["tiff"] = "tiff"
    pyramid: bool = False  # pyramidal preservation TIFF, for IIIF image servers
    access_format: Literal["jpeg", "webp", "none"] = "jpeg"
    access_long_edge: int = 2048
    max_pixels: int = 500_000_000
    models: dict[str, str] = Field(default_factory=dict)  # task -> "PATH_OR_S3_URI[#sha256=HEX]"
    # The collection policy applied (its URI and sha256), recorded with the run; its settings
    # are already in the fields above.
    policy: dict[str, str] | None = None
    max_parallel_images: int = 4

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in v if s not in PIXEL_STAGES]
        if unknown:
            raise ValueError(f"unknown steps: {unknown}")
        return tuple(s for s in PIXEL_STAGES if s in v)

    @field_validator("scale")
    @classmethod
    def _valid_scale(cls, v: int | None) -> int | None:
        if v is not None and v not in (1, 2, 4):
            raise ValueError("scale must be 1, 2 or 4")
        return v

    @field_validator("ensemble")
    @classmethod
    def _valid_ensemble(cls, v: int) -> int:
        if v not in (1, 2, 4, 8):
            raise ValueError("ensemble must be 1, 2, 4 or 8")
        return v

    @property
    def collection_name(self) -> str:
        if self.collection:
            return self.collection
        stripped = self.source.rstrip("/")
        return stripped.rsplit("/", 1)[-1] or stripped

    def output_fields(self, operators: dict[str, str]) -> dict[str, object]:
        """The settings that change what is written, plus the operators' identities."""
        return {
            "daguerre": __version__,
            "steps": list(self.steps),
            "scale": self.scale,
            "upscale_below_long_edge": self.upscale_below_long_edge,
            "preservation_format": self.preservation_format,
            "pyramid": self.pyramid,
            "access_format": self.access_format,
            "access_long_edge": self.access_long_edge,
            "operators": dict(sorted(operators.items())),
        }

    def config_hash(self, operators: dict[str, str]) -> str:
        """Stable hash of `output_fields`: equal hashes mean a rerun would write the same."""
        canonical = json.dumps(self.output_fields(operators), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

"""A collection's restoration policy: a `daguerre.toml` kept with the masters.

Curators decide per collection what may be done to it (colorize this one, never upscale that
one, which face model to trust) and write it down once, next to the scans; every run on the
collection, manual or scheduled, then applies it. Options given on the command line override
the policy's, and the policy overrides the built-in defaults. The run records the policy's URI
and sha256 in the catalog.

    # daguerre.toml at the root of SOURCE
    collection = "Glass negatives 1890-1910"

    [restore]
    steps = ["denoise", "inpaint", "tone", "colorize"]   # or "all" / "default"
    scale = 1
    ensemble = 8          # learned stages averaged over 8 flips/turns: slower, a little better
    access_format = "webp"
    access_long_edge = 3000
    pyramid = true

    [models]
    colorize = "s3://models/ddcolor.pth#sha256=..."
"""

from __future__ import annotations

import hashlib
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from daguerre.config import parse_steps
from daguerre.records import PIXEL_STAGES
from daguerre.storage import StorageError, open_storage, read_uri

POLICY_FILE = "daguerre.toml"
# `policy=` values: look for POLICY_FILE at SOURCE's root / apply none.
AUTO, NONE = "auto", "none"
# Tasks a model can be chosen for: every pixel stage, and the damage detector.
MODEL_TASKS: tuple[str, ...] = (*PIXEL_STAGES, "damage")


class PolicyError(ValueError):
    """A policy file that cannot be used, with a one-line message naming the file."""


class RestoreSettings(BaseModel):
    """The `[restore]` table: every field optional (absent = the built-in default)."""

    model_config = ConfigDict(extra="forbid")

    steps: tuple[str, ...] | None = None
    scale: Literal[1, 2, 4] | None = None
    upscale_below_long_edge: int | None = None
    ensemble: Literal[1, 2, 4, 8] | None = None
    access_format: Literal["jpeg", "webp", "none"] | None = None
    access_long_edge: int | None = None
    pyramid: bool | None = None

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> tuple[str, ...] | None:
        if v is None:
            return None
        text = v if isinstance(v, str) else ",".join(str(s) for s in v)
        return parse_steps(text)


class CollectionPolicy(BaseModel):
    """A parsed policy file and where it came from."""

    model_config = ConfigDict(extra="forbid")

    uri: str
    sha256: str
    collection: str | None = None
    restore: RestoreSettings = RestoreSettings()
    models: dict[str, str] = {}  # task -> PATH_OR_S3_URI[#sha256=HEX], or "classical"

    @field_validator("models")
    @classmethod
    def _model_tasks(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(MODEL_TASKS))
        if unknown:
            raise ValueError(
                f"unknown model task(s) {unknown}; choose from {', '.join(MODEL_TASKS)}"
            )
        return v

    def reference(self) -> dict[str, str]:
        """What a run records about the policy it applied."""
        return {"uri": self.uri, "sha256": self.sha256}


def parse_policy(data: bytes, uri: str) -> CollectionPolicy:
    """Parse policy TOML; PolicyError (naming `uri`) on bad TOML, unknown keys or values."""
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{uri}: not valid TOML: {exc}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        return CollectionPolicy(uri=uri, sha256=sha, **table)
    except (ValidationError, TypeError) as exc:
        raise PolicyError(f"{uri}: {_first_problem(exc)}") from None


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(exc)


def merged_options(
    policy: CollectionPolicy | None, given: dict[str, Any], models: dict[str, str]
) -> dict[str, Any]:
    """Run options: those `given` on the command line (None = not given) over the policy's.

    Options neither gives are left out (the flow's defaults apply). `models` from the command
    line override the policy's per task.
    """
    out = {k: v for k, v in given.items() if v is not None}
    if policy is not None:
        settings = policy.restore.model_dump(exclude_none=True)
        if policy.collection is not None:
            settings["collection"] = policy.collection
        for key, value in settings.items():
            out.setdefault(key, list(value) if key == "steps" else value)
        models = {**policy.models, **models}
    out["models"] = models
    return out


def find_policy(option: str | None, source: str) -> CollectionPolicy | None:
    """The policy a run applies: `option` names a file (path or s3:// URI), AUTO (or None)
    looks for POLICY_FILE at the root of `source`, NONE applies none.

    Raises PolicyError when the named file cannot be read or any policy is invalid.
    """
    if option is not None and option.strip().lower() == NONE:
        return None
    try:
        if option is not None and option.strip().lower() != AUTO:
            return parse_policy(read_uri(option), option)
        storage = open_storage(source, read_only=True)
        if not storage.exists(POLICY_FILE):
            return None
        return parse_policy(storage.read_bytes(POLICY_FILE), f"{storage.uri}/{POLICY_FILE}")
    except StorageError as exc:
        raise PolicyError(f"cannot read the policy: {exc}") from None

"""The stage interface: one operator per pixel stage, classical or learned, chosen in one place.

An operator is pure computation (numpy in, numpy out) plus the identity an audit needs:
operator id, version, weights sha256, device. The Prefect tasks look operators up here and
never special-case an algorithm or an architecture.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from daguerre import __version__
from daguerre.imaging import classical


@dataclass
class StageContext:
    """What an operator may need beyond the pixels."""

    bit_depth: int = 8
    damage_mask: np.ndarray | None = None
    noise_sigma: float | None = None


@dataclass
class OperatorResult:
    pixels: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class Operator(Protocol):
    stage: str
    id: str
    version: str
    weights_sha256: str | None
    device: str

    def apply(
        self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext
    ) -> OperatorResult: ...


def identity(op: Operator) -> str:
    """Compact identity used in the configuration hash."""
    return f"{op.id}@{op.version}" + (f"#{op.weights_sha256}" if op.weights_sha256 else "")


@dataclass
class NlmDenoise:
    stage: str = "denoise"
    id: str = "opencv.fastNlMeans"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def apply(self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext):
        sigma = float(params.get("sigma", ctx.noise_sigma or 0.0))
        used = classical.nlm_parameters(sigma, ctx.bit_depth, channels=pixels.shape[2])
        out = classical.nlm_denoise(pixels, sigma, bit_depth=ctx.bit_depth)
        return OperatorResult(out, {"sigma": round(sigma, 3), **used})


@dataclass
class TeleaInpaint:
    stage: str = "inpaint"
    id: str = "opencv.inpaint-telea"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"
    radius: int = 3

    def apply(self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext):
        if ctx.damage_mask is None:
            raise ValueError("inpainting needs a damage mask")
        radius = int(params.get("radius", self.radius))
        out = classical.telea_inpaint(pixels, ctx.damage_mask, radius=radius)
        return OperatorResult(
            out,
            {"radius": radius},
            {"masked_pixels": int(ctx.damage_mask.sum())},
        )


@dataclass
class AutoTone:
    stage: str = "tone"
    id: str = "daguerre.auto-tone"
    version: str = __version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def apply(self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext):
        used = classical.auto_tone_parameters(pixels)
        out = classical.auto_tone(pixels)
        return OperatorResult(out, used)


@dataclass
class LanczosUpscale:
    stage: str = "upscale"
    id: str = "opencv.resize-lanczos4"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def apply(self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext):
        scale = int(params["scale"])
        return OperatorResult(classical.lanczos_upscale(pixels, scale), {"scale": scale})


@dataclass
class LearnedOperator:
    """A model from the registry or brought by the user, behind the same interface."""

    stage: str
    model: Any  # daguerre.models.loading.LoadedModel
    id: str = ""
    version: str = ""
    weights_sha256: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.id = self.model.model_id
        self.version = getattr(self.model, "version", "") or "user"
        self.weights_sha256 = self.model.weights_sha256
        self.device = str(self.model.device)

    def apply(self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext):
        from daguerre.models.inference import run_tiled

        used: dict[str, Any] = {"architecture": self.model.architecture}
        sigma = None
        if self.model.takes_noise_level:
            # None lets the model estimate the level itself; 0 would mean "no noise".
            level = params.get("sigma", ctx.noise_sigma)
            sigma = float(level) if level is not None else None
            used["sigma"] = round(sigma, 3) if sigma is not None else "estimated"
        if self.stage == "upscale":
            used["scale"] = self.model.scale
        mask = ctx.damage_mask if self.stage == "inpaint" else None
        out = run_tiled(self.model, pixels, noise_sigma=sigma, mask=mask)
        if self.stage == "inpaint" and ctx.damage_mask is not None:
            # Only masked pixels may change.
            out = np.where(ctx.damage_mask[..., None], out, pixels).astype(np.float32)
        return OperatorResult(out, used)


CLASSICAL: dict[str, type] = {
    "denoise": NlmDenoise,
    "inpaint": TeleaInpaint,
    "tone": AutoTone,
    "upscale": LanczosUpscale,
}

_cache: dict[tuple, Operator | None] = {}
_cache_lock = threading.Lock()


def resolve_operators(
    steps: tuple[str, ...], models: Mapping[str, str], device: str = "auto"
) -> dict[str, Operator | None]:
    """Pick the operator of every pixel stage: user's model, else shipped default, else classical.

    `None` means the stage has no operator here (colorize with no colorizer model). Loaded models
    are cached per process so a worker loads each weights file once.
    """
    from daguerre.records import PIXEL_STAGES

    out: dict[str, Operator | None] = {}
    for stage in PIXEL_STAGES:
        key = (stage, models.get(stage), device)
        with _cache_lock:
            if key not in _cache:
                _cache[key] = _make_operator(stage, models.get(stage), device)
            out[stage] = _cache[key]
    return out


def _make_operator(stage: str, user_spec: str | None, device: str) -> Operator | None:
    task_name = stage
    if user_spec is not None:
        from daguerre.models.loading import load_user_model, parse_model_spec

        spec = parse_model_spec(f"{task_name}={user_spec}")
        return LearnedOperator(stage, load_user_model(spec.task, spec.source, spec.sha256, device))
    from daguerre.models.loading import load_model
    from daguerre.models.registry import TASKS, default_for

    default = default_for(task_name) if task_name in TASKS else None
    if default is not None:
        return LearnedOperator(stage, load_model(default, device=device))
    cls = CLASSICAL.get(stage)
    return cls() if cls is not None else None

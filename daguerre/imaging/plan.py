"""Turn a Detection into a restoration plan: for every pixel stage, run or skip, and why.

The reasons are sentences meant for the catalog and for people reviewing it; params carry
what the operator needs (sigma, scale, ...). Nothing here touches pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daguerre.imaging.detect import Detection
from daguerre.records import DEFAULT_STEPS, PIXEL_STAGES


@dataclass(frozen=True)
class PlanOptions:
    """What the operator asked for, and the thresholds that decide each stage."""

    steps: frozenset[str] = frozenset(DEFAULT_STEPS)  # enabled stages, a subset of PIXEL_STAGES
    scale: int | None = None  # upscale factor; None = automatic from the long edge
    upscale_below_long_edge: int = 512  # automatic x2 below it, x4 below half of it
    denoise_min_sigma: float = 2.0  # 8-bit units
    inpaint_min_coverage: float = 1e-5
    inpaint_max_coverage: float = 0.05  # above it the mask is distrusted
    tone_max_contrast: float = 0.8  # stretch only when luminance p99 - p1 is below it
    colorizer_available: bool = False
    face_model_available: bool = False
    inpaint_radius: int = 3
    tone_low_pct: float = 0.5
    tone_high_pct: float = 99.5

    def __post_init__(self) -> None:
        steps = frozenset(self.steps)
        unknown = steps - set(PIXEL_STAGES)
        if unknown:
            raise ValueError(
                f"unknown stages {sorted(unknown)}; choose from {', '.join(PIXEL_STAGES)}"
            )
        object.__setattr__(self, "steps", steps)
        if self.scale is not None and (int(self.scale) != self.scale or self.scale < 1):
            raise ValueError(f"scale must be a positive integer or None, got {self.scale}")
        if self.upscale_below_long_edge < 0:
            raise ValueError("upscale_below_long_edge must be >= 0")
        if not 0 <= self.inpaint_min_coverage <= self.inpaint_max_coverage <= 1:
            raise ValueError("need 0 <= inpaint_min_coverage <= inpaint_max_coverage <= 1")


@dataclass(frozen=True)
class StageDecision:
    stage: str
    run: bool
    reason: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "run": self.run, "reason": self.reason, "params": self.params}


def _num(value: float) -> str:
    """Short human number: 11.2, 0.8, 2, 512."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _pct(fraction: float) -> str:
    """A fraction as a short percentage: 0.0042 -> '0.42%', 0.05 -> '5%'."""
    return f"{fraction * 100:.2g}%" if fraction < 0.01 else f"{fraction * 100:.3g}%"


def _denoise(det: Detection, opts: PlanOptions) -> StageDecision:
    sigma, limit = float(det.noise_sigma), float(opts.denoise_min_sigma)
    digits = 1 if f"{sigma:.1f}" != f"{limit:.1f}" else 2  # never "2.0 below 2.0"
    shown = f"estimated noise sigma {sigma:.{digits}f}"
    if sigma >= limit:
        params = {"sigma": round(sigma, 4), "bit_depth": det.bit_depth or 8}
        if det.bands is not None:
            # The bands the denoiser works on: a grey model, where one ships, serves one-band
            # masters and grey images stored as RGB.
            params["bands"] = 1 if det.colour_kind == "grayscale" else int(det.bands)
        reason = f"{shown} >= {limit:.{digits}f}"
        return StageDecision("denoise", True, reason, params)
    reason = f"{shown} below {limit:.{digits}f}"
    return StageDecision("denoise", False, reason, {"sigma": round(sigma, 4)})


def _inpaint(det: Detection, opts: PlanOptions) -> StageDecision:
    coverage = float(det.damage_coverage)
    params = {"coverage": coverage}
    if coverage <= 0:
        return StageDecision("inpaint", False, "no damage found", params)
    if coverage < opts.inpaint_min_coverage:
        reason = (
            f"damage mask covers {_pct(coverage)} (< {_pct(opts.inpaint_min_coverage)}): "
            "too little to inpaint"
        )
        return StageDecision("inpaint", False, reason, params)
    if coverage > opts.inpaint_max_coverage:
        reason = (
            f"damage mask covers {_pct(coverage)} (> {_pct(opts.inpaint_max_coverage)}): "
            "needs review"
        )
        return StageDecision("inpaint", False, reason, params)
    params["radius"] = opts.inpaint_radius
    return StageDecision("inpaint", True, f"damage mask covers {_pct(coverage)}", params)


def _face(det: Detection, opts: PlanOptions) -> StageDecision:
    n = len(det.faces)
    if n == 0:
        return StageDecision("face", False, "no faces detected")
    found = f"{n} face{'s' if n > 1 else ''} detected"
    if not opts.face_model_available:
        return StageDecision(
            "face", False, f"{found}: no face model configured (--model face=WEIGHTS)"
        )
    return StageDecision("face", True, found, {"faces": [[int(v) for v in b] for b in det.faces]})


def _tone(det: Detection, opts: PlanOptions) -> StageDecision:
    spread = float(det.contrast)
    if spread < opts.tone_max_contrast:
        params = {
            "contrast": round(spread, 4),
            "low_pct": opts.tone_low_pct,
            "high_pct": opts.tone_high_pct,
        }
        reason = f"luminance contrast {spread:.2f} below {_num(opts.tone_max_contrast)}: faded"
        return StageDecision("tone", True, reason, params)
    reason = f"luminance contrast {spread:.2f} >= {_num(opts.tone_max_contrast)}: already full"
    return StageDecision("tone", False, reason, {"contrast": round(spread, 4)})


def _upscale(det: Detection, opts: PlanOptions) -> StageDecision:
    long_edge = max(det.width, det.height)
    if opts.scale is not None:
        scale = int(opts.scale)
        if scale == 1:
            return StageDecision("upscale", False, "scale x1 requested", {"scale": 1})
        reason = f"scale x{scale} requested"
    else:
        limit = opts.upscale_below_long_edge
        if long_edge < limit / 2:
            scale = 4
            reason = f"long edge {long_edge} px below {_num(limit / 2)}: x4"
        elif long_edge < limit:
            scale = 2
            reason = f"long edge {long_edge} px below {limit}: x2"
        else:
            reason = f"long edge {long_edge} px >= {limit}: no upscale needed"
            return StageDecision("upscale", False, reason, {"long_edge": long_edge})
    params = {
        "scale": scale,
        "long_edge": long_edge,
        "width": det.width * scale,
        "height": det.height * scale,
    }
    return StageDecision("upscale", True, reason, params)


def _colorize(det: Detection, opts: PlanOptions) -> StageDecision:
    kind = det.colour_kind
    label = "grayscale" if kind == "grayscale" else "monochrome-tinted"
    if "colorize" not in opts.steps:
        if kind == "colour":
            return StageDecision("colorize", False, "stage not enabled")
        if not opts.colorizer_available:
            return StageDecision(
                "colorize", False, f"{label} image: no colorizer model installed (not enabled)"
            )
        return StageDecision("colorize", False, f"{label} image, colorization not enabled")
    if kind == "colour":
        return StageDecision("colorize", False, "image is in colour")
    if not opts.colorizer_available:
        return StageDecision("colorize", False, "no colorizer model installed")
    params: dict[str, Any] = {"colour_kind": kind}
    reason = f"{label} image"
    if det.hue_deg is not None:
        params["hue_deg"] = det.hue_deg
        reason += f" (tint hue {det.hue_deg:.0f} deg)"
    return StageDecision("colorize", True, reason, params)


_DECIDERS: dict[str, Callable[[Detection, PlanOptions], StageDecision]] = {
    "denoise": _denoise,
    "inpaint": _inpaint,
    "face": _face,
    "tone": _tone,
    "upscale": _upscale,
    "colorize": _colorize,
}


def plan_restoration(det: Detection, opts: PlanOptions | None = None) -> dict[str, StageDecision]:
    """A decision for every stage of PIXEL_STAGES, in that order."""
    opts = opts or PlanOptions()
    plan: dict[str, StageDecision] = {}
    for stage in PIXEL_STAGES:
        # colorize explains itself even when disabled (grayscale vs colour)
        if stage not in opts.steps and stage != "colorize":
            plan[stage] = StageDecision(stage, False, "stage not enabled")
        else:
            plan[stage] = _DECIDERS[stage](det, opts)
    return plan


def plan_to_json(plan: dict[str, StageDecision]) -> dict[str, Any]:
    """JSON-serialisable form: {stage: {"run", "reason", "params"}} in stage order."""
    return {
        stage: {"run": d.run, "reason": d.reason, "params": dict(d.params)}
        for stage, d in plan.items()
    }


def stages_to_run(plan: dict[str, StageDecision]) -> list[str]:
    """The stages the plan runs, in order."""
    return [stage for stage, decision in plan.items() if decision.run]

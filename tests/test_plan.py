"""Restoration planning (daguerre.imaging.plan)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from daguerre.imaging.detect import Detection
from daguerre.imaging.plan import (
    PlanOptions,
    StageDecision,
    plan_restoration,
    plan_to_json,
    stages_to_run,
)
from daguerre.records import PIXEL_STAGES

ALL = frozenset(PIXEL_STAGES)


def _det(**changes) -> Detection:
    base = Detection(
        colour_kind="grayscale",
        mean_chroma=0.0,
        hue_deg=None,
        noise_sigma=11.2,
        sharpness=300.0,
        contrast=0.95,
        width=3000,
        height=2000,
        ppi=600.0,
        damage_coverage=0.004,
        faces=[],
        bit_depth=16,
    )
    return replace(base, **changes)


def test_plan_covers_every_pixel_stage_in_order():
    plan = plan_restoration(_det(), PlanOptions())
    assert list(plan) == list(PIXEL_STAGES)
    assert all(isinstance(d, StageDecision) and d.stage == s for s, d in plan.items())


def test_default_options_leave_colorize_out():
    assert "colorize" not in PlanOptions().steps
    assert PlanOptions().steps <= ALL


def test_unknown_stage_and_bad_scale_are_refused():
    with pytest.raises(ValueError, match="unknown stages"):
        PlanOptions(steps=frozenset({"denoise", "sharpen"}))
    with pytest.raises(ValueError, match="scale"):
        PlanOptions(scale=0)


def test_disabled_stages_say_so():
    plan = plan_restoration(_det(colour_kind="colour"), PlanOptions(steps=frozenset()))
    for stage in PIXEL_STAGES:
        assert not plan[stage].run
        assert plan[stage].reason == "stage not enabled"


# ----------------------------------------------------------------------------- denoise


def test_denoise_runs_above_the_sigma_threshold():
    decision = plan_restoration(_det(noise_sigma=11.2), PlanOptions())["denoise"]
    assert decision.run
    assert decision.reason == "estimated noise sigma 11.2 >= 2.0"
    assert decision.params == {"sigma": 11.2, "bit_depth": 16}


def test_denoise_skips_below_the_sigma_threshold():
    decision = plan_restoration(_det(noise_sigma=0.8), PlanOptions())["denoise"]
    assert not decision.run
    assert decision.reason == "estimated noise sigma 0.8 below 2.0"


def test_denoise_reason_never_reads_equal_numbers():
    decision = plan_restoration(_det(noise_sigma=1.97), PlanOptions())["denoise"]
    assert decision.reason == "estimated noise sigma 1.97 below 2.00"


def test_denoise_defaults_to_8_bit_without_header():
    decision = plan_restoration(_det(bit_depth=None), PlanOptions())["denoise"]
    assert decision.params["bit_depth"] == 8


def test_denoise_passes_the_band_count_on():
    def bands(**changes):
        return plan_restoration(_det(**changes), PlanOptions())["denoise"].params.get("bands")

    assert bands(bands=1) == 1
    assert bands() is None  # not known: the colour model, as before bands were recorded
    assert bands(bands=3, colour_kind="colour") == 3
    assert bands(bands=3, colour_kind="monochrome-tinted") == 3
    assert bands(bands=3, colour_kind="grayscale") == 1  # a grey print scanned as RGB


# ----------------------------------------------------------------------------- inpaint


def test_inpaint_runs_on_moderate_damage():
    decision = plan_restoration(_det(damage_coverage=0.0042), PlanOptions())["inpaint"]
    assert decision.run
    assert decision.reason == "damage mask covers 0.42%"
    assert decision.params == {"coverage": 0.0042, "radius": 3}


def test_inpaint_skips_without_damage():
    decision = plan_restoration(_det(damage_coverage=0.0), PlanOptions())["inpaint"]
    assert not decision.run and decision.reason == "no damage found"


def test_inpaint_skips_negligible_damage():
    decision = plan_restoration(_det(damage_coverage=2e-6), PlanOptions())["inpaint"]
    assert not decision.run
    assert decision.reason == "damage mask covers 0.0002% (< 0.001%): too little to inpaint"


def test_inpaint_distrusts_a_huge_mask():
    decision = plan_restoration(_det(damage_coverage=0.072), PlanOptions())["inpaint"]
    assert not decision.run
    assert decision.reason == "damage mask covers 7.2% (> 5%): needs review"


# ----------------------------------------------------------------------------- tone


def test_tone_runs_on_faded_images():
    decision = plan_restoration(_det(contrast=0.54), PlanOptions())["tone"]
    assert decision.run
    assert decision.reason == "luminance contrast 0.54 below 0.8: faded"
    assert decision.params == {"contrast": 0.54, "low_pct": 0.5, "high_pct": 99.5}


def test_tone_skips_full_contrast():
    decision = plan_restoration(_det(contrast=0.97), PlanOptions())["tone"]
    assert not decision.run
    assert decision.reason == "luminance contrast 0.97 >= 0.8: already full"


# ----------------------------------------------------------------------------- upscale


def test_upscale_x2_below_the_long_edge_limit():
    decision = plan_restoration(_det(width=300, height=200), PlanOptions())["upscale"]
    assert decision.run
    assert decision.reason == "long edge 300 px below 512: x2"
    assert decision.params == {"scale": 2, "long_edge": 300, "width": 600, "height": 400}


def test_upscale_x4_below_half_the_limit():
    decision = plan_restoration(_det(width=150, height=200), PlanOptions())["upscale"]
    assert decision.run and decision.params["scale"] == 4
    assert decision.reason == "long edge 200 px below 256: x4"


def test_upscale_skips_big_images():
    decision = plan_restoration(_det(), PlanOptions())["upscale"]
    assert not decision.run
    assert decision.reason == "long edge 3000 px >= 512: no upscale needed"


def test_upscale_explicit_scale_wins():
    decision = plan_restoration(_det(), PlanOptions(scale=4))["upscale"]
    assert decision.run and decision.params["scale"] == 4
    assert decision.reason == "scale x4 requested"
    decision = plan_restoration(_det(width=100, height=80), PlanOptions(scale=1))["upscale"]
    assert not decision.run and decision.reason == "scale x1 requested"


# ----------------------------------------------------------------------------- colorize


def test_colorize_not_enabled_on_grayscale():
    decision = plan_restoration(_det(), PlanOptions())["colorize"]
    assert not decision.run
    assert decision.reason == "grayscale image: no colorizer model installed (not enabled)"
    with_model = plan_restoration(_det(), PlanOptions(colorizer_available=True))["colorize"]
    assert with_model.reason == "grayscale image, colorization not enabled"


def test_colorize_not_enabled_on_colour():
    decision = plan_restoration(_det(colour_kind="colour"), PlanOptions())["colorize"]
    assert not decision.run and decision.reason == "stage not enabled"


def test_colorize_skips_colour_images():
    decision = plan_restoration(_det(colour_kind="colour"), PlanOptions(steps=ALL))["colorize"]
    assert not decision.run and decision.reason == "image is in colour"


def test_colorize_needs_a_model():
    decision = plan_restoration(_det(), PlanOptions(steps=ALL))["colorize"]
    assert not decision.run and decision.reason == "no colorizer model installed"


def test_colorize_runs_on_grayscale_with_a_model():
    opts = PlanOptions(steps=ALL, colorizer_available=True)
    decision = plan_restoration(_det(), opts)["colorize"]
    assert decision.run and decision.reason == "grayscale image"
    tinted = _det(colour_kind="monochrome-tinted", hue_deg=62.0, mean_chroma=14.0)
    decision = plan_restoration(tinted, opts)["colorize"]
    assert decision.run
    assert decision.reason == "monochrome-tinted image (tint hue 62 deg)"
    assert decision.params == {"colour_kind": "monochrome-tinted", "hue_deg": 62.0}


# ----------------------------------------------------------------------------- output


def test_plan_to_json_and_stages_to_run():
    plan = plan_restoration(_det(width=300, height=200, contrast=0.5), PlanOptions())
    as_json = plan_to_json(plan)
    assert list(as_json) == list(PIXEL_STAGES)
    assert json.loads(json.dumps(as_json)) == as_json
    assert as_json["upscale"] == {
        "run": True,
        "reason": "long edge 300 px below 512: x2",
        "params": {"scale": 2, "long_edge": 300, "width": 600, "height": 400},
    }
    assert stages_to_run(plan) == ["denoise", "inpaint", "tone", "upscale"]

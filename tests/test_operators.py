"""Operator resolution: user's choice, shipped default, classical fallback."""

from __future__ import annotations

import pytest

from daguerre.operators import CLASSICAL, identity, resolve_operators
from daguerre.records import PIXEL_STAGES


def test_every_stage_resolves_and_colorize_needs_a_model() -> None:
    operators = resolve_operators(("denoise", "inpaint"), {}, "cpu")
    assert set(operators) == set(PIXEL_STAGES)
    assert operators["colorize"] is None
    for stage in ("inpaint", "tone", "upscale"):
        assert operators[stage] is not None and operators[stage].stage == stage


def test_classical_can_be_forced() -> None:
    operators = resolve_operators(("denoise",), {"denoise": "classical"}, "cpu")
    assert isinstance(operators["denoise"], CLASSICAL["denoise"])
    assert identity(operators["denoise"]).startswith("opencv.fastNlMeans@")


def test_classical_colorizer_does_not_exist() -> None:
    with pytest.raises(ValueError, match="no classical operator"):
        resolve_operators(("colorize",), {"colorize": "classical"}, "cpu")


def test_upscale_choice_picks_the_model_of_each_factor() -> None:
    import numpy as np

    from daguerre.operators import LanczosUpscale, StageContext, UpscaleChoice, operator_for

    x2 = LanczosUpscale(id="x2-model")
    choice = UpscaleChoice({2: x2})
    assert operator_for(choice, {"scale": 2}) is x2
    assert isinstance(operator_for(choice, {"scale": 4}), LanczosUpscale)
    assert operator_for(choice, {"scale": 4}) is not x2
    assert identity(choice).startswith("x2=x2-model@") and ";else=opencv.resize-lanczos4@" in (
        identity(choice)
    )
    out = choice.apply(np.zeros((5, 6, 3), np.float32), {"scale": 4}, StageContext())
    assert out.pixels.shape == (20, 24, 3)

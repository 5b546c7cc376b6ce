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

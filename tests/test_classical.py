"""Classical operators (daguerre.imaging.classical)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data

from daguerre.imaging.classical import (
    auto_tone,
    auto_tone_parameters,
    lanczos_upscale,
    nlm_denoise,
    nlm_parameters,
    resize_alpha,
    telea_inpaint,
    telea_parameters,
)
from daguerre.imaging.detect import contrast


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()[128:256, 160:288].astype(np.float32) / 255  # her face, 128 x 128


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return (data.camera()[64:192, 192:320].astype(np.float32) / 255)[:, :, None]


# ----------------------------------------------------------------------------- NLM


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("which", ["astronaut", "camera"])
def test_nlm_lowers_the_error_of_a_noisy_image(which, bit_depth, request):
    clean = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 15 / 255, clean.shape).astype(np.float32), 0, 1)
    if bit_depth == 8:
        noisy = (np.rint(noisy * 255) / 255).astype(np.float32)
    out = nlm_denoise(noisy, 15.0, bit_depth=bit_depth)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert _rmse(out, clean) < 0.7 * _rmse(noisy, clean)


def test_nlm_keeps_16_bit_precision():
    ramp = np.linspace(0.4, 0.41, 64, dtype=np.float32)
    pixels = np.tile(ramp, (64, 1))[:, :, None]  # 655 distinct 16-bit levels, 3 8-bit ones
    out = nlm_denoise(pixels, 3.0, bit_depth=16)
    assert len(np.unique(np.rint(out * 65535))) > 50


def test_nlm_zero_sigma_is_a_copy(camera):
    out = nlm_denoise(camera, 0.0)
    assert out is not camera
    np.testing.assert_array_equal(out, camera)


def test_nlm_parameters_are_recordable():
    params = nlm_parameters(10.0, 16, channels=3)
    assert json.loads(json.dumps(params)) == params
    assert params["norm"] == "L1" and params["working_dtype"] == "uint16"
    assert params["h"] == pytest.approx(params["h_8bit"] * 3**0.5 * 257, rel=1e-4)
    grey = nlm_parameters(10.0, 8, channels=1)
    assert grey["h_8bit"] == params["h_8bit"] and grey["h"] < params["h"]
    # without channels: everything but the OpenCV value, which depends on them
    assert "h" not in nlm_parameters(10.0, 16) and nlm_parameters(10.0, 16)["h_8bit"] == 8.0
    assert nlm_parameters(20.0, 8, 3)["h"] == pytest.approx(2 * params["h"], rel=1e-4)
    with pytest.raises(ValueError):
        nlm_parameters(-1.0, 8)


# ----------------------------------------------------------------------------- Telea


def test_telea_fills_a_line_and_leaves_the_rest_bit_identical(astronaut):
    damaged = astronaut.copy()
    mask = np.zeros(astronaut.shape[:2], bool)
    mask[60:62, 10:118] = True
    damaged[mask] = 1.0  # white scratch
    out = telea_inpaint(damaged, mask, radius=3)
    assert out.shape == damaged.shape and out.dtype == np.float32
    assert np.array_equal(out[~mask], damaged[~mask])  # bit-identical outside the mask
    # the fill is close to the original content, far closer than the scratch was
    assert _rmse(out[mask], astronaut[mask]) < 0.25 * _rmse(damaged[mask], astronaut[mask])


def test_telea_keeps_float_precision_and_handles_empty_masks():
    ramp = np.tile(np.linspace(0.5, 0.501, 32, dtype=np.float32), (32, 1))[:, :, None]
    mask = np.zeros((32, 32), bool)
    mask[16, 4:28] = True
    out = telea_inpaint(ramp, mask)
    assert np.abs(out[mask] - ramp[mask]).max() < 1e-4  # no 8-bit rounding
    empty = telea_inpaint(ramp, np.zeros((32, 32), bool))
    np.testing.assert_array_equal(empty, ramp)
    assert telea_parameters(5)["radius"] == 5


def test_telea_rejects_mismatched_mask(camera):
    with pytest.raises(ValueError, match="mask shape"):
        telea_inpaint(camera, np.zeros((3, 3), bool))


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize(("channels", "scale"), [(1, 2), (3, 4), (3, 1)])
def test_lanczos_upscale_shape(channels, scale):
    pixels = np.random.default_rng(0).random((10, 7, channels), dtype=np.float32)
    out = lanczos_upscale(pixels, scale)
    assert out.shape == (10 * scale, 7 * scale, channels) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1  # Lanczos overshoot is clipped


@pytest.mark.parametrize(("channels", "scale"), [(1, 2), (3, 4), (3, 1)])
def test_lanczos_upscale_writes_into_a_strided_view(channels, scale):
    pixels = np.random.default_rng(0).random((10, 7, channels), dtype=np.float32)
    big = np.full((50, 40, channels), 7.0, np.float32)
    view = big[3 : 3 + 10 * scale, 5 : 5 + 7 * scale]  # a rectangle of a larger image
    got = lanczos_upscale(pixels, scale, out=view)
    assert got is view
    np.testing.assert_array_equal(view, lanczos_upscale(pixels, scale))
    big[3 : 3 + 10 * scale, 5 : 5 + 7 * scale] = 7.0
    assert (big == 7.0).all()  # nothing written outside the view
    with pytest.raises(ValueError, match="out must be"):
        lanczos_upscale(pixels, scale, out=big[:2, :2])


def test_lanczos_upscale_can_leave_the_clipping_to_the_caller():
    step = np.zeros((8, 8, 1), np.float32)
    step[:, 4:] = 1.0  # a hard edge: Lanczos rings past 0 and 1
    raw = lanczos_upscale(step, 2, clip=False)
    assert raw.min() < 0 and raw.max() > 1
    np.testing.assert_array_equal(np.clip(raw, 0, 1), lanczos_upscale(step, 2))


def test_lanczos_upscale_rejects_bad_scale():
    with pytest.raises(ValueError):
        lanczos_upscale(np.zeros((4, 4, 1), np.float32), 0)


def test_resize_alpha():
    alpha = np.random.default_rng(0).random((10, 7), dtype=np.float32)
    assert resize_alpha(None, (20, 14)) is None
    up = resize_alpha(alpha, (20, 14))
    assert up.shape == (20, 14) and up.min() >= 0 and up.max() <= 1
    assert resize_alpha(alpha, (5, 4)).shape == (5, 4)


# ----------------------------------------------------------------------------- tone


def test_auto_tone_widens_a_faded_image(camera):
    faded = 0.3 + 0.4 * camera  # lifted blacks, dull whites
    params = auto_tone_parameters(faded)
    assert params["applied"] and params["gain"] > 2
    out = auto_tone(faded)
    assert out.shape == faded.shape
    assert contrast(out) > 0.9 > contrast(faded) + 0.4
    low, high = np.percentile(out, [0.5, 99.5])
    assert low == pytest.approx(0, abs=0.01) and high == pytest.approx(1, abs=0.01)
    # one affine map for every pixel: the order of grey levels is kept
    assert np.corrcoef(out.ravel(), faded.ravel())[0, 1] > 0.999


def test_auto_tone_keeps_a_sepia_hue(camera):
    tint = np.array([1.0, 0.85, 0.65], np.float32)
    faded = (0.3 + 0.5 * camera) * tint
    out = auto_tone(faded)
    mid = (out.mean(axis=2) > 0.3) & (out.mean(axis=2) < 0.6)
    ratios = out[mid] / out[mid][:, :1]
    assert np.all(ratios[:, 1] < 0.98) and np.all(ratios[:, 2] < 0.9)  # still warm


def test_auto_tone_leaves_a_full_range_image_unchanged():
    full = np.repeat(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))[:, :, None], 3, 2)
    assert not auto_tone_parameters(full)["applied"]
    np.testing.assert_array_equal(auto_tone(full), full)
    flat = np.full((16, 16, 3), 0.5, np.float32)
    np.testing.assert_array_equal(auto_tone(flat), flat)  # nothing to stretch


def test_auto_tone_parameters_are_recordable(camera):
    params = auto_tone_parameters(0.2 + 0.5 * camera, 1.0, 99.0)
    assert json.loads(json.dumps(params)) == params
    assert params["low_pct"] == 1.0 and params["high_pct"] == 99.0
    with pytest.raises(ValueError):
        auto_tone_parameters(camera, 60, 40)

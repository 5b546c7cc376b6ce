"""Detection on pixels (daguerre.imaging.detect)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import pyvips
from skimage import data

from daguerre.imaging.detect import (
    Detection,
    analyse_colour,
    contrast,
    damage_mask,
    detect,
    detect_faces,
    estimate_noise_sigma,
    is_grayscale,
    luminance,
    sharpness,
)
from daguerre.imaging.io import ImageInfo, decode

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # as detect.luminance


def _unit(array: np.ndarray) -> np.ndarray:
    out = array.astype(np.float32) / 255.0
    return out[:, :, None] if out.ndim == 2 else out


def _jpeg(pixels: np.ndarray, quality: int = 75) -> np.ndarray:
    """Round trip through an 8-bit JPEG, as archives usually hold them."""
    image = pyvips.Image.new_from_array(np.rint(pixels * 255).astype(np.uint8))
    return decode(image.copy(interpretation="srgb").jpegsave_buffer(Q=quality)).pixels


def _smooth(height: int = 256, width: int = 256) -> np.ndarray:
    """A smooth (H, W) field in [0.2, 0.8]: no texture, no edges."""
    yy, xx = np.mgrid[0:height, 0:width] / 256.0
    return (0.5 + 0.2 * np.sin(4 * xx) * np.cos(3 * yy) + 0.1 * yy).astype(np.float32)


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return _unit(data.camera())


# ----------------------------------------------------------------------------- colour


def test_single_band_is_grayscale(camera):
    result = analyse_colour(camera)
    assert result.kind == "grayscale" and result.hue_deg is None
    assert is_grayscale(camera)


def test_grey_rgb_through_jpeg_and_noise_is_grayscale(camera):
    rng = np.random.default_rng(0)
    grey = np.repeat(camera, 3, axis=2)
    assert analyse_colour(_jpeg(grey, 40)).kind == "grayscale"
    # independent sensor noise per channel gives speckles of chroma: still grey
    noisy = np.clip(grey + rng.normal(0, 6 / 255, grey.shape).astype(np.float32), 0, 1)
    assert analyse_colour(_jpeg(noisy, 60)).kind == "grayscale"


def test_sepia_is_monochrome_tinted(camera):
    sepia = np.clip(camera * np.array([1.0, 0.85, 0.62], np.float32) + [0.06, 0.03, 0.0], 0, 1)
    result = analyse_colour(_jpeg(sepia.astype(np.float32)))
    assert result.kind == "monochrome-tinted"
    assert 40 < result.hue_deg < 100  # yellow-orange in Lab
    assert result.mean_chroma > 5


def test_cyanotype_is_monochrome_tinted(camera):
    dark = np.array([0.05, 0.15, 0.35], np.float32)
    cyan = dark + camera * (1 - dark)
    result = analyse_colour(_jpeg(cyan.astype(np.float32)))
    assert result.kind == "monochrome-tinted"
    assert 240 < result.hue_deg < 320  # blue in Lab


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_colour_photographs_are_colour(name):
    result = analyse_colour(_jpeg(_unit(getattr(data, name)())))
    assert result.kind == "colour" and result.hue_deg is None
    assert not is_grayscale(_unit(getattr(data, name)()))


# ----------------------------------------------------------------------------- measures


@pytest.mark.parametrize("sigma", [5.0, 15.0, 25.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_noise_sigma_on_known_noise(sigma, channels):
    rng = np.random.default_rng(int(sigma) * channels)
    clean = np.repeat(_smooth()[:, :, None], channels, axis=2)
    noisy = np.clip(clean + rng.normal(0, sigma / 255, clean.shape).astype(np.float32), 0, 1)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.2)


def test_noise_sigma_of_heavy_noise_clipped_to_8_bits():
    # A dark sky and a bright wall: at sigma 50 a plain wavelet estimate sees truncated noise
    # near black and white (it read 45 on clipped training photos) and underestimates.
    rng = np.random.default_rng(3)
    clean = np.concatenate([0.3 * _smooth() - 0.03, 0.3 * _smooth() + 0.72, _smooth()], axis=1)
    noisy = np.clip(clean[:, :, None] + rng.normal(0, 50 / 255, (256, 768, 1)), 0, 1)
    noisy = (np.round(noisy * 255) / 255).astype(np.float32)
    assert estimate_noise_sigma(noisy) == pytest.approx(50, rel=0.06)


@pytest.mark.parametrize("shape", [(37, 50), (64, 64), (321, 481)])
def test_noise_band_is_pywavelets_db2_diagonal(shape):
    # The estimator computes the band itself (a bare GPU image has no PyWavelets); it must be
    # the band Donoho's estimate (and scikit-image's estimate_sigma) is defined on.
    import pywt

    from daguerre.imaging.noise import diagonal_detail

    x = np.random.default_rng(0).random(shape) * 255
    expected = pywt.dwt2(x, "db2")[1][2]
    np.testing.assert_allclose(diagonal_detail(x), expected, atol=1e-9)


def test_noise_sigma_ignores_a_flat_border():
    # A flat grey margin (padding around a scan) gives tiny, not zero, wavelet coefficients in
    # floating point: counted, they would pull the median towards zero.
    rng = np.random.default_rng(4)
    noisy = _smooth()[:, :, None] + rng.normal(0, 10 / 255, (256, 256, 1)).astype(np.float32)
    framed = np.full((256, 768, 1), 0.5, np.float32)
    framed[:, 512:] = np.clip(noisy, 0, 1)
    assert estimate_noise_sigma(framed) == pytest.approx(10, rel=0.1)


def test_noise_sigma_is_on_the_8_bit_scale_for_16_bit_data():
    rng = np.random.default_rng(1)
    noisy = _smooth()[:, :, None] + rng.normal(0, 10 / 255, (256, 256, 1)).astype(np.float32)
    as_16 = np.rint(np.clip(noisy, 0, 1) * 65535) / np.float32(65535)
    assert estimate_noise_sigma(as_16.astype(np.float32)) == pytest.approx(10, rel=0.2)


def test_noise_sigma_of_clean_image_is_small():
    assert estimate_noise_sigma(_smooth()[:, :, None]) < 0.5


def test_sharpness_and_contrast(camera):
    blurred = np.asarray(
        pyvips.Image.new_from_array(camera[:, :, 0]).gaussblur(2.0).numpy(), np.float32
    )[:, :, None]
    assert sharpness(camera) > 5 * sharpness(blurred)
    assert contrast(camera) > 0.8
    faded = 0.35 + 0.3 * camera
    assert contrast(faded) == pytest.approx(0.3 * contrast(camera), rel=1e-3)


# ----------------------------------------------------------------------------- damage


def _segment(shape, p0, p1, width):
    """Pixels within width/2 of the segment p0-p1 (x, y)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= width / 2


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    """mask grown by radius px (square)."""
    size = 2 * radius + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)


# Scratches (x0, y0, x1, y1, width, value) across a 256 px print, none running alongside
# another of the opposite polarity, and specks on a grid between them.
_SCRATCHES = [
    (0, 40, 255, 90, 1, 1.0),
    (20, 255, 120, 0, 2, 0.0),
    (0, 200, 255, 150, 3, 0.0),
    (170, 0, 230, 255, 2, 1.0),
]


def _damaged(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(damaged, truth mask, clean): a smooth colour print with 1-3 px white and black
    scratches and 2-5 px specks, plus grain of `noise` (8-bit sigma)."""
    rng = np.random.default_rng(seed)
    base = _smooth()
    clean = np.stack([base, base * 0.9, base * 0.8], axis=-1)
    white = np.zeros(base.shape, bool)
    black = np.zeros(base.shape, bool)
    for x0, y0, x1, y1, width, value in _SCRATCHES:
        (white if value else black)[_segment(base.shape, (x0, y0), (x1, y1), width)] = True
    marks = _near(white | black, 8)
    for i, (y, x) in enumerate(np.mgrid[24:256:46, 20:256:46].reshape(2, -1).T):
        if not marks[y, x]:
            speck = _segment(base.shape, (x, y), (x, y), 2 + i % 4)
            (white if i % 2 else black)[speck] = True
    damaged = clean.copy()
    damaged[white] = 1.0
    damaged[black] = 0.0
    grain = rng.normal(0, noise / 255, clean.shape).astype(np.float32)
    return np.clip(damaged + grain, 0, 1), white | black, np.clip(clean + grain, 0, 1)


@pytest.mark.parametrize("noise", [0.5, 2.0, 4.0])
def test_damage_mask_catches_drawn_scratches_and_dust(noise):
    damaged, truth, clean = _damaged(noise)
    mask = damage_mask(damaged)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert (mask & truth).sum() / truth.sum() > 0.9
    # marks grow by at most 3 px over their residual, then 1 px: nothing else is marked
    assert (mask & ~_near(truth, 4)).mean() < 0.001
    assert damage_mask(clean).mean() == 0.0


def _blob(shape, centre, axes, angle) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, centre, axes, angle, 0, 360, 1, -1, cv2.LINE_8)
    return canvas.astype(bool)


def test_damage_mask_catches_dark_blobs_and_a_coloured_scratch():
    """Dust 3-9 px across at partial opacity, and a curved scratch whose colour differs from
    the print only in hue (same luminance): it must be found in the colour channels. Through a
    good JPEG (at q92 and below the ringing around a chroma-only scratch hides it)."""
    rng = np.random.default_rng(7)
    base = _smooth()
    clean = np.stack([base, base * 0.92, base * 0.8], axis=-1)
    damaged = clean.copy()
    blobs = []
    for i, (y, x) in enumerate(np.mgrid[24:240:52, 24:240:52].reshape(2, -1).T):
        blob = _blob(base.shape, (int(x), int(y)), (1 + i % 4, 1 + (i * 3) % 4), 30 * i)
        opacity = 0.75 + 0.25 * (i % 2)
        damaged[blob] = (1 - opacity) * damaged[blob] + opacity * 0.08
        blobs.append(blob)
    # A pinkish scratch with the luminance of the print under it: invisible in grey.
    t = np.linspace(0, 1, 200)
    curve = np.stack([20 + 215 * t, 228 - 60 * np.sin(np.pi * t)], axis=1)
    scratch = np.zeros(base.shape, np.uint8)
    cv2.polylines(scratch, [np.rint(curve).astype(np.int32)], False, 1, 2, cv2.LINE_8)
    scratch = scratch.astype(bool) & ~_near(np.any(blobs, axis=0), 3)
    under = damaged[scratch]
    pink = np.array([1.0, 0.55, 0.95], np.float32)
    pink_luma = float(pink @ _LUMA)
    damaged[scratch] = np.clip(pink * (under @ _LUMA)[:, None] / pink_luma, 0, 1)
    assert np.abs(luminance(damaged) - luminance(clean))[scratch].mean() < 0.02
    grain = rng.normal(0, 1.5 / 255, clean.shape).astype(np.float32)
    damaged = _jpeg(np.clip(damaged + grain, 0, 1), 95)

    mask = damage_mask(damaged)
    found = [(mask & blob).sum() / blob.sum() for blob in blobs]
    assert min(found) > 0.8, found
    assert (mask & scratch).sum() / scratch.sum() > 0.8
    truth = scratch | np.any(blobs, axis=0)
    assert (mask & ~_near(truth, 4)).mean() < 0.001


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "chelsea", "rocket"])
def test_damage_mask_leaves_clean_photographs_alone(name):
    """Whatever is marked gets inpainted: clean photographs keep under ~0.3% marked (measured
    0-0.3%; the bound leaves a margin), JPEG artefacts included."""
    pixels = _unit(getattr(data, name)())
    assert damage_mask(pixels).mean() < 0.004
    rgb = pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)
    assert damage_mask(_jpeg(rgb, 75)).mean() < 0.004  # JPEG artefacts are not damage
    assert damage_mask(_jpeg(rgb, 40)).mean() < 0.005


def test_damage_mask_leaves_text_and_thin_structure_alone():
    assert damage_mask(_unit(data.text())).mean() < 0.001  # printed letters
    camera = damage_mask(_unit(data.camera()))
    assert camera[300:512, 220:420].mean() < 0.002  # the tripod's legs


def test_damage_mask_leaves_a_small_soft_portrait_alone():
    """At 160 x 180 px an eye is a dark speck of dust's size: it must not be inpainted away."""
    from daguerre.imaging.samples import render_sample

    portrait = render_sample("album-1/astronaut_small.jpg").image
    assert damage_mask(portrait).mean() < 0.001


def test_damage_mask_is_dilated_by_one_pixel():
    pixels = np.full((64, 64, 1), 0.5, np.float32)
    pixels[32, 10:50] = 1.0  # a 1-px bright scratch
    mask = damage_mask(pixels)
    assert mask[31:34, 12:48].all()
    assert not mask[:29].any() and not mask[36:].any()


def test_damage_mask_handles_tiny_and_grey_inputs():
    for shape in [(1, 1, 1), (3, 5, 3), (7, 200, 1), (16, 16)]:
        mask = damage_mask(np.full(shape, 0.5, np.float32))
        assert mask.shape == shape[:2] and not mask.any()


def test_threshold_damage_grows_confident_regions_only():
    from daguerre.imaging.masks import probability_regions, threshold_damage

    p = np.zeros((20, 30), np.float32)
    p[5, 2:20] = 0.7  # a scratch, faint along most of its length...
    p[5, 10] = 0.99  # ...and sure in one place
    p[6, 20] = 0.7  # diagonal neighbour: the same 8-connected region
    p[15, 2:20] = 0.8  # a streak never sure enough: left alone
    plain = threshold_damage(p, 0.95)
    assert plain.sum() == 1 and plain[5, 10]
    grown = threshold_damage(p, 0.95, 0.6)
    assert grown[5, 2:20].all() and grown[6, 20] and not grown[15].any()
    assert grown.sum() == 19
    assert np.array_equal(threshold_damage(p, 0.95, 0.95), plain)  # no lower level: plain
    labels, peak, size = probability_regions(p, 0.6)
    assert labels.dtype == np.int32 and peak[0] == 0 and size[0] == 0
    assert sorted(size[1:].tolist()) == [18, 19]
    assert np.isclose(peak[labels[5, 2]], 0.99)


# ----------------------------------------------------------------------------- faces


def test_detect_faces_finds_the_astronaut():
    faces = detect_faces(_unit(data.astronaut()))
    assert len(faces) == 1
    x, y, w, h = faces[0]
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 170  # her face
    assert detect_faces(_smooth()[:, :, None]) == []


def test_proposed_faces_must_be_confirmed():
    from daguerre.imaging.detect import _confirmed

    grey = cv2.equalizeHist(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY))
    assert _confirmed(grey, (177, 67, 93, 93))  # her face
    assert not _confirmed(grey, (300, 300, 93, 93))  # her suit
    rocks = cv2.equalizeHist(data.coins())  # round, shaded shapes: no eyes, no face
    assert not _confirmed(rocks, (20, 20, 80, 80))


# ----------------------------------------------------------------------------- together


def test_detect_collects_everything_and_serialises():
    pixels = _unit(data.astronaut())
    info = ImageInfo(
        format="tiff",
        width=512,
        height=512,
        bands=3,
        bit_depth=16,
        colour_space="rgb16",
        has_alpha=False,
        icc_profile=None,
        ppi=600.0,
    )
    det = detect(pixels, info)
    assert isinstance(det, Detection)
    assert (det.width, det.height, det.ppi, det.bit_depth) == (512, 512, 600.0, 16)
    assert det.colour_kind == "colour"
    assert det.damage_mask.shape == (512, 512)
    assert det.damage_coverage == pytest.approx(det.damage_mask.mean())
    assert len(det.faces) == 1
    metrics = det.to_metrics()
    assert "damage_mask" not in metrics
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["faces"] == [list(det.faces[0])]


def test_detect_downscales_big_images_for_global_measures_only():
    rng = np.random.default_rng(5)
    big = np.kron(_smooth(256, 112), np.ones((9, 9), np.float32))[:, :, None]
    big = np.clip(big + rng.normal(0, 8 / 255, big.shape).astype(np.float32), 0, 1)
    det = detect(big)  # 2304 x 1008: above the 2048 px analysis view
    assert (det.width, det.height) == (1008, 2304)
    assert det.damage_mask.shape == (2304, 1008)
    assert det.noise_sigma == pytest.approx(8, rel=0.2)  # measured at full resolution

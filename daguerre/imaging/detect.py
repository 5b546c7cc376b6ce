"""Measure an image before restoring it: colour kind, noise, sharpness, contrast, damage, faces.

Pure functions on the pixel convention: float32 (H, W, C), C in {1, 3}, values in [0, 1].
Sigmas and sharpness are reported on the 8-bit scale (0-255) whatever the source bit depth,
so thresholds mean the same for 8- and 16-bit masters.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from skimage.color import rgb2lab

from daguerre.imaging.io import ImageInfo
from daguerre.imaging.noise import estimate_noise_sigma

ColourKind = Literal["grayscale", "monochrome-tinted", "colour"]

# Long edge of the view the global analyses run on: they are statistics, not per-pixel work.
ANALYSIS_LONG_EDGE = 2048
# Rec. 709 luma weights on the encoded (gamma) values.
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def _check(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got {pixels.shape}")
    return pixels


def luminance(pixels: np.ndarray) -> np.ndarray:
    """(H, W) float32 luma in [0, 1] of (H, W, C) pixels."""
    pixels = _check(pixels)
    if pixels.shape[2] == 1:
        return np.ascontiguousarray(pixels[:, :, 0], dtype=np.float32)
    return np.ascontiguousarray(pixels.astype(np.float32, copy=False) @ _LUMA)


def analysis_view(pixels: np.ndarray, long_edge: int = ANALYSIS_LONG_EDGE) -> np.ndarray:
    """Area-downscaled copy with the long edge at most long_edge (the input when small)."""
    pixels = _check(pixels)
    height, width = pixels.shape[:2]
    if max(height, width) <= long_edge:
        return pixels
    scale = long_edge / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    out = cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    return out[:, :, None] if out.ndim == 2 else out


# --------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class ColourAnalysis:
    """kind: 'grayscale' | 'monochrome-tinted' | 'colour'; chroma in CIELAB units (0-~130)."""

    kind: ColourKind
    mean_chroma: float
    hue_deg: float | None  # the tint's hue angle in Lab (a*, b*), for monochrome-tinted only


# Chroma (CIELAB units) a grey image can show from JPEG chroma noise and scanner casts.
_GREY_P95_CHROMA = 5.0
# A toned print's hues cluster around one angle: mean resultant length of the hue vectors ...
_TINT_HUE_CONCENTRATION = 0.95
# ... its (a*, b*) is a function of L*: what L* does not explain stays small ...
_TINT_RESIDUAL_RATIO = 0.2
# ... and toning never reaches the saturation of dyes and paints.
_TINT_MAX_P95_CHROMA = 45.0


def analyse_colour(pixels: np.ndarray) -> ColourAnalysis:
    """Classify pixels as grayscale, monochrome-tinted (sepia, cyanotype...) or colour.

    Works in CIELAB on a view of at most 512 px, with a* and b* box-filtered so sensor and
    JPEG chroma noise averages out: grey when nearly every pixel is neutral; tinted when the
    chroma shares one hue, stays moderate and (a*, b*) follows L* (toning depends on density
    only); colour otherwise.
    """
    pixels = _check(pixels)
    if pixels.shape[2] == 1:
        return ColourAnalysis("grayscale", 0.0, None)
    lab = rgb2lab(np.clip(analysis_view(pixels, 512), 0.0, 1.0)).astype(np.float32)
    light = lab[:, :, 0].ravel()
    a = cv2.blur(lab[:, :, 1], (5, 5)).ravel()
    b = cv2.blur(lab[:, :, 2], (5, 5)).ravel()
    chroma = np.hypot(a, b)
    mean_chroma = float(chroma.mean())
    p95 = float(np.percentile(chroma, 95))
    if p95 < _GREY_P95_CHROMA:
        return ColourAnalysis("grayscale", mean_chroma, None)

    # Hue concentration, weighted by chroma so near-neutral pixels (noisy hue) count little.
    total = float(chroma.sum())
    mean_a, mean_b = float(a.sum()) / total, float(b.sum()) / total
    concentration = math.hypot(mean_a, mean_b)  # |sum(chroma * unit hue)| / sum(chroma)

    # How much of (a*, b*) a function of L* explains: median (a*, b*) per L* bin.
    bins = np.clip((light / 100.0 * 32).astype(np.int64), 0, 31)
    residual = np.empty_like(chroma)
    for index in np.unique(bins):
        members = bins == index
        residual[members] = np.hypot(
            a[members] - np.median(a[members]), b[members] - np.median(b[members])
        )
    residual_ratio = float(np.sqrt(np.mean(residual**2)) / max(np.sqrt(np.mean(chroma**2)), 1e-6))

    if (
        concentration >= _TINT_HUE_CONCENTRATION
        and residual_ratio <= _TINT_RESIDUAL_RATIO
        and p95 <= _TINT_MAX_P95_CHROMA
    ):
        hue = math.degrees(math.atan2(mean_b, mean_a)) % 360.0
        return ColourAnalysis("monochrome-tinted", mean_chroma, round(hue, 1))
    return ColourAnalysis("colour", mean_chroma, None)


def is_grayscale(pixels: np.ndarray) -> bool:
    """True when the image carries no colour (one band, or three with negligible chroma)."""
    return analyse_colour(pixels).kind == "grayscale"


# --------------------------------------------------------------------------- noise etc.


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the Laplacian of the luminance on the 8-bit scale (higher is sharper)."""
    lum = luminance(pixels) * np.float32(255.0)
    return float(cv2.Laplacian(lum, cv2.CV_32F, ksize=1).var())


def contrast(pixels: np.ndarray) -> float:
    """Luminance spread p99 - p1, in [0, 1]."""
    low, high = np.percentile(luminance(pixels), [1.0, 99.0])
    return float(high - low)


# --------------------------------------------------------------------------- damage

# The detector looks for two shapes that damage takes and photographs rarely do, in every colour
# channel (a tinted scratch can be invisible in luminance), on 8-bit copies of the channels (the
# contrasts it needs are tens of levels, and 8-bit morphology is several times faster):
#   specks: a small area brighter (darker) than every pixel of a ring around it;
#   scratches: a line brighter (darker) than both its flanks over a long path.
# Whatever passes is grown over the rest of the mark and dilated, so inpainting covers the fringe.
# Real thin structure (rims, wires, hair, text) looks the same locally: the thresholds are set so
# that clean photographs (scikit-image's, also through JPEG q75) keep under ~0.3% of pixels
# marked; see bench/eval_damage_classical.py.

# Specks (dust): centre (3x3 mean) against rings of these radii, px: specks up to ~10 px across.
# (A ring of 8 px finds bigger dust too, but also the eyes of small, soft portraits.)
_SPECK_RADII = (2, 4, 6)
_SPECK_MIN_CONTRAST = 0.21  # clears every ring pixel by this much (in one channel) ...
_SPECK_K_NOISE = 14.0  # ... and by this many noise sigmas of that channel
_SPECK_MAX_EXTENT = 14  # px: bounding box of a speck's passing pixels
# More specks than this (counting half-contrast ones) in a window around one are texture
# (kernels of corn, glitter on water, foliage), not dust.
_SPECK_FIELD_WINDOW = 41
_SPECK_FIELD_MAX = 4

# Scratches: centre (mean over 5 px along the line) against both flanks (9 px long, at these
# perpendicular offsets) in 4 orientations (the far flank covers the angles between): lines up
# to ~8 px wide.
_LINE_ANGLES = 4
_LINE_OFFSETS = (2, 5)
_LINE_FLANK = 9
_LINE_CENTRE = 5
_LINE_MIN_CONTRAST = 0.375
_LINE_K_NOISE = 10.0
# A line with an opposite-polarity line of the same channel beside it (3-8 px away, at least
# this share of its contrast) is an object: a tube with its shading, a rim with its shadow.
# (Opposite polarities in different channels are just a coloured line.)
_LINE_COMPANION_RADII = (3, 8)
_LINE_COMPANION_SHARE = 1.0 / 3.0
# Path length (px) through passing pixels a line needs: long, or short but very strong, or
# short on a smooth neighbourhood (where no real line hides among texture).
_LINE_MIN_PATH = 150
_LINE_SHORT_PATH = 20
_LINE_SHORT_STRENGTH = 2.5  # x the line threshold
# A neighbourhood is smooth when under a quarter of it has a residual above 1.5 x the floor
# (below): nothing hides there, so marks need less: lines half the contrast, specks 3/4.
_SMOOTH_WINDOW = 31
_SMOOTH_SHARE = 0.25
_SMOOTH_RESIDUAL = 1.5
_SMOOTH_LINE_FACTOR = 0.5
_SMOOTH_SPECK_FACTOR = 0.75

# Extent: residual of a top-hat / black-hat with this square element, per channel, over a floor
# of max(K_NOISE sigma, MIN) ...
_RESIDUAL_SIZE = 13
_RESIDUAL_K_NOISE = 4.0
_RESIDUAL_MIN = 0.04
# ... marks grow within this radius over pixels with at least this share of the residual at
# their seed, and at least half the floor; then the mask is dilated by one pixel so Telea
# covers the anti-aliased fringe.
_GROW_RADIUS = 3
_GROW_SHARE = 0.5
_GROW_FLOOR = 0.5

# Reach of the detector beyond a pixel (px), long paths aside: tiles need this much context.
DAMAGE_CONTEXT = 64


def _noise_sigma(channel: np.ndarray) -> float:
    """Robust noise sigma (units of the channel): MAD of a second-difference filter (Immerkaer),
    the median taken on a sample of at most ~250k responses."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(channel, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT)
    step = max(1, math.isqrt(response.size // 250_000))
    return float(np.median(np.abs(response[::step, ::step])) / (0.6745 * 6.0))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _annulus(inner: int, outer: int) -> np.ndarray:
    """uint8 disk of radius outer without the disk of radius inner - 1."""
    kernel = _disk(outer)
    kernel[outer - inner + 1 : outer + inner, outer - inner + 1 : outer + inner] &= 1 - _disk(
        inner - 1
    )
    return kernel


def _ring(radius: int) -> np.ndarray:
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.uint8)
    cv2.circle(kernel, (radius, radius), radius, 1, 1)
    return kernel


def _segments(theta: float, offsets: tuple[float, ...], length: int) -> np.ndarray:
    """uint8 kernel: segments of `length` px along theta, at these perpendicular offsets."""
    half = length // 2
    reach = math.ceil(max(abs(o) for o in offsets) + half) + 1
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1), np.uint8)
    ux, uy = math.cos(theta), math.sin(theta)
    t = np.linspace(-half, half, 4 * length)
    for offset in offsets:
        xs = np.rint(reach - offset * uy + t * ux).astype(int)
        ys = np.rint(reach + offset * ux + t * uy).astype(int)
        kernel[ys, xs] = 1
    return kernel


_RINGS = [_ring(r) for r in _SPECK_RADII]
_THETAS = [math.pi * i / _LINE_ANGLES for i in range(_LINE_ANGLES)]
_CENTRES = [_segments(t, (0.0,), _LINE_CENTRE).astype(np.float32) for t in _THETAS]
_CENTRES = [k / k.sum() for k in _CENTRES]
_FLANKS = [_segments(t, (0.0,), _LINE_FLANK) for t in _THETAS]
# Perpendicular (dy, dx) of each flank offset, per orientation.
_SHIFTS = [
    [(round(d * math.cos(t)), round(-d * math.sin(t))) for d in _LINE_OFFSETS] for t in _THETAS
]
_REFLECT = cv2.BORDER_REFLECT


def _speck_contrast(u8: np.ndarray) -> np.ndarray:
    """uint8: how far the 3x3 mean exceeds (falls below) every pixel of the best ring."""
    centre = cv2.blur(u8, (3, 3), borderType=_REFLECT)
    best = np.zeros_like(u8)
    for ring in _RINGS:
        high = cv2.dilate(u8, ring, borderType=_REFLECT)
        low = cv2.erode(u8, ring, borderType=_REFLECT)
        best = cv2.max(best, cv2.max(cv2.subtract(centre, high), cv2.subtract(low, centre)))
    return best


def _line_contrast(u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (bright, dark): how far a short run along the best orientation exceeds (falls
    below) every pixel of both flanks. A flank is the line's own segment max (min) shifted
    sideways; saturating uint8 arithmetic keeps it cheap."""
    height, width = u8.shape
    pad = max(_LINE_OFFSETS) + 1
    bright = np.zeros_like(u8)
    dark = np.zeros_like(u8)

    def flank(padded: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]

    for centre_kernel, segment, shifts in zip(_CENTRES, _FLANKS, _SHIFTS, strict=True):
        centre = cv2.filter2D(u8, -1, centre_kernel, borderType=_REFLECT)
        high = cv2.copyMakeBorder(
            cv2.dilate(u8, segment, borderType=_REFLECT), pad, pad, pad, pad, _REFLECT
        )
        low = cv2.copyMakeBorder(
            cv2.erode(u8, segment, borderType=_REFLECT), pad, pad, pad, pad, _REFLECT
        )
        for dy, dx in shifts:
            high_sides = cv2.max(flank(high, dy, dx), flank(high, -dy, -dx))
            low_sides = cv2.min(flank(low, dy, dx), flank(low, -dy, -dx))
            bright = cv2.max(bright, cv2.subtract(centre, high_sides))
            dark = cv2.max(dark, cv2.subtract(low_sides, centre))
    return bright, dark


def _lone_lines(bright: np.ndarray, dark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The line contrasts without lines that have an opposite one of the same channel beside
    them: those are objects (a tube and its shading, a rim and its shadow), not scratches."""
    near = _annulus(*_LINE_COMPANION_RADII)
    dark_near = cv2.dilate(dark, near, borderType=_REFLECT).astype(np.float32)
    bright_near = cv2.dilate(bright, near, borderType=_REFLECT).astype(np.float32)
    share = np.float32(_LINE_COMPANION_SHARE)
    bright = np.where(bright * share > dark_near, bright, np.uint8(0))
    dark = np.where(dark * share > bright_near, dark, np.uint8(0))
    return bright, dark


def _residual(u8: np.ndarray) -> np.ndarray:
    """uint8 top-hat or black-hat, whichever is larger."""
    element = np.ones((_RESIDUAL_SIZE, _RESIDUAL_SIZE), np.uint8)
    opened = cv2.morphologyEx(u8, cv2.MORPH_OPEN, element, borderType=_REFLECT)
    closed = cv2.morphologyEx(u8, cv2.MORPH_CLOSE, element, borderType=_REFLECT)
    return cv2.max(cv2.subtract(u8, opened), cv2.subtract(closed, u8))


def _path_length(mask: np.ndarray) -> np.ndarray:
    """int32: longest path through each pixel of mask, in steps, moving one row (column) at a
    time and at most one pixel sideways: a binary path opening with the two cones that between
    them follow lines of any orientation (curves within 45 degrees of one axis)."""

    def cone(m: np.ndarray) -> np.ndarray:
        rows, cols = m.shape
        on = m.astype(np.int32)
        down = np.zeros((rows, cols), np.int32)
        up = np.zeros((rows, cols), np.int32)
        for out, order in ((down, range(rows)), (up, range(rows - 1, -1, -1))):
            prev = np.zeros(cols + 2, np.int32)
            for y in order:
                cur = on[y] * (np.maximum(np.maximum(prev[:-2], prev[1:-1]), prev[2:]) + 1)
                out[y] = cur
                prev[1:-1] = cur
        return np.where(m, down + up - 1, 0)

    return np.maximum(cone(mask), cone(np.ascontiguousarray(mask.T)).T)


def _long_lines(score: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """Passing line pixels (score > 1) on a path long enough for their strength and setting."""
    passing = score > 1.0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        passing.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return passing
    # A path never outgrows its component's bounding box: only big components need the search.
    reach = stats[:, cv2.CC_STAT_WIDTH] + stats[:, cv2.CC_STAT_HEIGHT]
    may = reach >= _LINE_SHORT_PATH
    may[0] = False
    if not may.any():
        return np.zeros_like(passing)
    candidates = may[labels]
    ys, xs = np.nonzero(candidates)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    path = np.zeros(score.shape, np.int32)
    # Bridge one-pixel gaps (noise, a crossing) before measuring paths.
    bridged = cv2.dilate(candidates[y0:y1, x0:x1].astype(np.uint8), _disk(1)).astype(bool)
    path[y0:y1, x0:x1] = _path_length(bridged)
    keep = (path >= _LINE_MIN_PATH) | (
        (path >= _LINE_SHORT_PATH) & ((score >= _LINE_SHORT_STRENGTH) | smooth)
    )
    return candidates & keep


def _isolated_specks(score: np.ndarray) -> np.ndarray:
    """Passing speck pixels (score > 1) of small components not crowded by other specks."""
    passing = score > 1.0
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        passing.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return passing
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = extent <= _SPECK_MAX_EXTENT
    # Crowding: the specks (half contrast included) whose centre lies in a window around each.
    weak_count, _, _, weak_centroids = cv2.connectedComponentsWithStats(
        (score > 0.5).astype(np.uint8), connectivity=8
    )
    height, width = score.shape

    def cells(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ys = np.clip(np.rint(points[:, 1]).astype(int), 0, height - 1)
        xs = np.clip(np.rint(points[:, 0]).astype(int), 0, width - 1)
        return ys, xs

    # Count with a summed-area table of centres on a 4 px grid: a box sum around each speck.
    grid = 4
    rows, cols = -(-height // grid), -(-width // grid)
    centres = np.zeros((rows, cols), np.float32)
    ys, xs = cells(weak_centroids[1:weak_count])
    np.add.at(centres, (ys // grid, xs // grid), 1.0)
    table = cv2.integral(centres, sdepth=cv2.CV_32F)
    ys, xs = cells(centroids)
    ys, xs, half = ys // grid, xs // grid, _SPECK_FIELD_WINDOW // (2 * grid)
    top, bottom = np.clip(ys - half, 0, rows), np.clip(ys + half + 1, 0, rows)
    left, right = np.clip(xs - half, 0, cols), np.clip(xs + half + 1, 0, cols)
    crowd = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    keep &= crowd <= _SPECK_FIELD_MAX
    keep[0] = False
    return keep[labels]


def _scaled(contrast: np.ndarray, floor: float) -> np.ndarray:
    """float32 contrast / floor, in one pass."""
    return np.multiply(contrast, np.float32(1.0 / floor), dtype=np.float32)


def _grow(seeds: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Seeds plus nearby pixels whose residual is a good share of the one at their seed."""
    if not seeds.any():
        return seeds
    zone = cv2.dilate(seeds.astype(np.uint8), _disk(_GROW_RADIUS))
    count, labels = cv2.connectedComponents(zone, connectivity=8)
    peak = np.zeros(count, np.float32)
    np.maximum.at(peak, labels[seeds], residual[seeds])
    grown = (zone > 0) & (residual >= _GROW_SHARE * peak[labels]) & (residual > _GROW_FLOOR)
    return grown | seeds


def damage_mask(pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of dust specks, short hairs and scratches, bright or dark, any colour.

    pixels: float32 (H, W, C), C in {1, 3}, values in [0, 1] (or (H, W)). Per colour channel,
    on an 8-bit copy: specks are pixels whose 3x3 mean clears every pixel of a ring (radius 2,
    4 or 6 px) by a contrast over both a minimum and a multiple of the channel's noise; lines
    are short runs clearing both flanks (4 orientations) by a higher contrast, without an
    opposite line of the same channel beside them. Lines must lie on a long path (or a short one
    when very strong or in a smooth neighbourhood, where thresholds are also lower); specks must
    be small and not crowded (texture). Seeds grow over their mark's top-hat / black-hat
    residual and the mask is dilated by one pixel. Tuned to mark under ~0.3% of a clean
    photograph: whatever is marked gets inpainted. About 2 s of CPU for 12 MP.
    """
    pixels = _check(pixels)
    height, width, bands = pixels.shape
    specks = np.zeros((height, width), np.float32)
    lines = np.zeros((height, width), np.float32)
    residual = np.zeros((height, width), np.float32)
    for band in range(bands):
        channel = np.ascontiguousarray(pixels[:, :, band], dtype=np.float32)
        sigma = _noise_sigma(channel) * 255.0
        u8 = cv2.convertScaleAbs(channel, alpha=255.0)  # rounded, saturated to 0..255
        speck_floor = max(_SPECK_K_NOISE * sigma, 255.0 * _SPECK_MIN_CONTRAST)
        cv2.max(specks, _scaled(_speck_contrast(u8), speck_floor), specks)
        line_floor = max(_LINE_K_NOISE * sigma, 255.0 * _LINE_MIN_CONTRAST)
        line_bright, line_dark = _lone_lines(*_line_contrast(u8))
        cv2.max(lines, _scaled(cv2.max(line_bright, line_dark), line_floor), lines)
        floor = max(_RESIDUAL_K_NOISE * sigma, 255.0 * _RESIDUAL_MIN)
        cv2.max(residual, _scaled(_residual(u8), floor), residual)
    above = (residual > _SMOOTH_RESIDUAL).view(np.uint8) * np.uint8(255)
    busy = cv2.blur(above, (_SMOOTH_WINDOW, _SMOOTH_WINDOW), borderType=_REFLECT)
    smooth = busy < round(255 * _SMOOTH_SHARE)
    one = np.float32(1.0)
    specks *= np.where(smooth, np.float32(1.0 / _SMOOTH_SPECK_FACTOR), one)
    lines *= np.where(smooth, np.float32(1.0 / _SMOOTH_LINE_FACTOR), one)
    seeds = _isolated_specks(specks) | _long_lines(lines, smooth)
    mask = _grow(seeds, residual)
    if not mask.any():
        return mask
    return cv2.dilate(mask.astype(np.uint8), _disk(1)).astype(bool)


# --------------------------------------------------------------------------- faces


# A frontal-face Haar cascade proposes faces; each proposal must then be confirmed, because
# the face stage hands every box to a model that draws a face into it. On the historic photos
# of real/grayscale_to_colorize the cascade alone proposed 11 boxes of which 7 were rubble,
# buildings, a toy or blank sky; confirmation kept the 4 faces and all 14 of real/faces.
_CASCADES = {
    "propose": "haarcascade_frontalface_default.xml",
    "face": "haarcascade_frontalface_alt2.xml",
    "eye": "haarcascade_eye.xml",
    "eye_glasses": "haarcascade_eye_tree_eyeglasses.xml",
}
FACE_DETECTOR = (
    "opencv haar frontalface (default), each box confirmed by the alt2 face cascade or by both "
    "eye cascades (plain and eyeglasses)"
)
_cascades = threading.local()  # one classifier per thread: detectMultiScale is not reentrant


def _cascade(name: str) -> cv2.CascadeClassifier:
    cascade = getattr(_cascades, name, None)
    if cascade is None:
        path = cv2.data.haarcascades + _CASCADES[name]
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"could not load the OpenCV cascade {path}")
        setattr(_cascades, name, cascade)
    return cascade


def _confirmed(grey: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether a proposed face box holds a face: the alt2 cascade finds a face of about its
    size around it, or both eye cascades find an eye in its upper part."""
    x, y, w, h = box
    pad = w // 2
    around = grey[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad]
    f = min(1.0, 400 / around.shape[1])  # bounded cost for large faces
    if f < 1.0:
        around = cv2.resize(around, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    side = max(1, int(w * f * 0.6))
    if len(_cascade("face").detectMultiScale(around, 1.1, 3, minSize=(side, side))):
        return True
    upper = grey[max(0, y) : y + h * 6 // 10, max(0, x) : x + w]
    if upper.size == 0:
        return False
    if upper.shape[1] < 120:  # eyes of small faces are too few pixels for the eye cascades
        g = 120 / upper.shape[1]
        upper = cv2.resize(upper, None, fx=g, fy=g, interpolation=cv2.INTER_CUBIC)
    return all(
        len(_cascade(name).detectMultiScale(upper, 1.1, 3)) for name in ("eye", "eye_glasses")
    )


def detect_faces(
    pixels: np.ndarray, *, long_edge: int = 1024, confirm: bool = True
) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, w, h) boxes in the input's pixel coordinates (FACE_DETECTOR).

    Haar cascades on the equalised luminance of a view of at most long_edge pixels.
    `confirm=False` returns the unconfirmed proposals (for benchmarks).
    """
    pixels = _check(pixels)
    view = analysis_view(pixels, long_edge)
    scale = pixels.shape[1] / view.shape[1]
    grey = np.clip(np.rint(luminance(view) * 255.0), 0, 255).astype(np.uint8)
    grey = cv2.equalizeHist(grey)
    found = _cascade("propose").detectMultiScale(
        grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)
    )
    boxes = [
        (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
        for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()
        if not confirm or _confirmed(grey, (x, y, w, h))
    ]
    return sorted(boxes)


# --------------------------------------------------------------------------- all together


@dataclass
class Detection:
    """Everything detect measures about one image. damage_mask is (H, W) bool at full size."""

    colour_kind: ColourKind
    mean_chroma: float
    hue_deg: float | None
    noise_sigma: float  # 8-bit scale
    sharpness: float  # variance of the Laplacian, 8-bit scale
    contrast: float  # luminance p99 - p1
    width: int
    height: int
    ppi: float | None
    damage_coverage: float  # fraction of pixels in damage_mask
    faces: list[tuple[int, int, int, int]]
    bit_depth: int | None = None
    bands: int | None = None  # colour bands of the pixels analysed (1 grey, 3 RGB)
    damage_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def long_edge(self) -> int:
        return max(self.width, self.height)

    def to_metrics(self) -> dict[str, Any]:
        """JSON-serialisable metrics (the mask is left out)."""
        return {
            "colour_kind": self.colour_kind,
            "mean_chroma": round(float(self.mean_chroma), 4),
            "hue_deg": None if self.hue_deg is None else float(self.hue_deg),
            "noise_sigma": round(float(self.noise_sigma), 4),
            "sharpness": round(float(self.sharpness), 4),
            "contrast": round(float(self.contrast), 4),
            "width": int(self.width),
            "height": int(self.height),
            "ppi": None if self.ppi is None else float(self.ppi),
            "bit_depth": None if self.bit_depth is None else int(self.bit_depth),
            "bands": None if self.bands is None else int(self.bands),
            "damage_coverage": float(self.damage_coverage),
            "faces": [[int(v) for v in box] for box in self.faces],
        }


def detect(pixels: np.ndarray, info: ImageInfo | None = None) -> Detection:
    """Run every analysis. Global statistics use a view of at most ANALYSIS_LONG_EDGE px;
    noise is measured on full-resolution tiles and the damage mask at full resolution."""
    pixels = _check(pixels)
    view = analysis_view(pixels)
    colour = analyse_colour(view)
    mask = damage_mask(pixels)
    height, width = pixels.shape[:2]
    return Detection(
        colour_kind=colour.kind,
        mean_chroma=colour.mean_chroma,
        hue_deg=colour.hue_deg,
        noise_sigma=estimate_noise_sigma(pixels),
        sharpness=sharpness(view),
        contrast=contrast(view),
        width=width,
        height=height,
        ppi=info.ppi if info is not None else None,
        damage_coverage=float(mask.mean()) if mask.size else 0.0,
        faces=detect_faces(pixels),
        bit_depth=info.bit_depth if info is not None else None,
        bands=int(pixels.shape[2]),
        damage_mask=mask,
    )

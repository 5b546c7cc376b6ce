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
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.restoration import estimate_sigma

from daguerre.imaging.io import ImageInfo

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


def _sample_tiles(pixels: np.ndarray, tile: int = 256, grid: int = 3) -> list[np.ndarray]:
    """Up to grid x grid full-resolution tiles spread over the image (all of it when small).

    Noise must be measured at full resolution: downscaling averages it away.
    """
    height, width = pixels.shape[:2]
    if height <= tile * grid and width <= tile * grid:
        return [pixels]
    ys = np.linspace(0, max(height - tile, 0), grid).astype(int)
    xs = np.linspace(0, max(width - tile, 0), grid).astype(int)
    return [pixels[y : y + tile, x : x + tile] for y in ys for x in xs]


def estimate_noise_sigma(pixels: np.ndarray) -> float:
    """Gaussian noise standard deviation on the 8-bit scale (0-255), any bit depth.

    Wavelet (MAD) estimate per channel, averaged (skimage estimate_sigma), on full-resolution
    tiles; the median over tiles resists tiles of pure texture.
    """
    pixels = _check(pixels)
    estimates = []
    for tile in _sample_tiles(pixels):
        if min(tile.shape[:2]) < 8:
            continue
        scaled = tile.astype(np.float32) * 255.0
        if scaled.shape[2] == 1:
            estimates.append(float(estimate_sigma(scaled[:, :, 0])))
        else:
            estimates.append(float(estimate_sigma(scaled, channel_axis=-1, average_sigmas=True)))
    return float(np.median(estimates)) if estimates else 0.0


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the Laplacian of the luminance on the 8-bit scale (higher is sharper)."""
    lum = luminance(pixels) * np.float32(255.0)
    return float(cv2.Laplacian(lum, cv2.CV_32F, ksize=1).var())


def contrast(pixels: np.ndarray) -> float:
    """Luminance spread p99 - p1, in [0, 1]."""
    low, high = np.percentile(luminance(pixels), [1.0, 99.0])
    return float(high - low)


# --------------------------------------------------------------------------- damage


# Structuring element: marks narrower than this are removed by the opening/closing.
_TOPHAT_SIZE = 7
_BLOCK = 64  # block for the local level of the top-hat response
_K_LOCAL = 8.0  # response > local median + K_LOCAL * local spread (p75 - p50) ...
_K_NOISE = 6.0  # ... and > K_NOISE * noise sigma ...
_MIN_CONTRAST = 0.1  # ... and > this (25/255): faint marks are not worth inpainting ...
_K_EDGE = 4.0  # ... and > K_EDGE * edge strength of the mark-free background nearby
_EDGE_SIZE = 9  # window of that edge strength
_MIN_PASSING = 0.6  # share of a component's pixels that must pass all the tests above
_MAX_HALF_WIDTH = 2.5  # thin: pixels farther than this from the component border are deep
_MAX_DEEP_SHARE = 0.1  # ... and at most this share of a component's pixels may be deep


def _fast_noise(lum: np.ndarray) -> float:
    """Robust noise sigma (in [0, 1] units): MAD of a second-difference filter (Immerkaer)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(lum, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT)
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def _local_levels(response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (median, spread) of the top-hat response, from blockwise percentiles.

    Percentiles ignore a thin scratch crossing a block; textured blocks get a high spread
    and so a high threshold, which keeps hair, grass and fabric out of the mask.
    """
    height, width = response.shape
    rows, cols = max(1, math.ceil(height / _BLOCK)), max(1, math.ceil(width / _BLOCK))
    padded = np.pad(
        response, ((0, rows * _BLOCK - height), (0, cols * _BLOCK - width)), mode="reflect"
    )
    blocks = padded.reshape(rows, _BLOCK, cols, _BLOCK).transpose(0, 2, 1, 3)
    p50, p75 = np.percentile(blocks.reshape(rows, cols, -1), [50, 75], axis=2).astype(np.float32)
    size = (width, height)
    median = cv2.resize(p50, size, interpolation=cv2.INTER_LINEAR)
    spread = cv2.resize(np.maximum(p75 - p50, 0.0), size, interpolation=cv2.INTER_LINEAR)
    return median, spread


def _marks(response: np.ndarray, edges: np.ndarray, noise: float) -> np.ndarray:
    """Thin or small components of one polarity's top-hat response that pass the tests."""
    median, spread = _local_levels(response)
    threshold = np.maximum(median + _K_LOCAL * spread, max(_K_NOISE * noise, _MIN_CONTRAST))
    passing = (response > threshold) & (response > _K_EDGE * edges)
    # Hysteresis: the half-threshold region grown from passing pixels gives whole marks.
    count, labels = cv2.connectedComponents(
        (response > 0.5 * threshold).astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return np.zeros(response.shape, bool)
    seeded = np.zeros(count, bool)
    seeded[np.unique(labels[passing])] = True
    seeded[0] = False
    candidates = seeded[labels]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        candidates.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return candidates
    index = np.arange(count)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    share = ndimage.sum_labels(passing, labels, index) / np.maximum(areas, 1.0)
    # Thin: almost no pixel lies deep inside (lines, networks of lines, specks); a few deep
    # pixels are allowed where marks cross.
    depth = cv2.distanceTransform(candidates.astype(np.uint8), cv2.DIST_L2, 5)
    deep = ndimage.sum_labels(depth > _MAX_HALF_WIDTH, labels, index) / np.maximum(areas, 1.0)
    keep = (deep <= _MAX_DEEP_SHARE) & (share >= _MIN_PASSING)
    keep[0] = False
    return keep[labels]


def damage_mask(pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of thin scratches and dust specks, bright and dark, at full resolution.

    Morphological top-hat (bright marks) and black-hat (dark marks) of the luminance. A pixel
    counts when its response clears the local level of the response, the noise, a minimum
    contrast, and the edge strength of the mark-free background nearby (so rims and thin
    lines along real edges stay out). Components must be thin (at most ~4 px wide) and
    mostly passing; the mask is then dilated by one pixel. Tuned to mark well under 1% of a
    clean photograph: whatever is marked gets inpainted.
    """
    lum = luminance(pixels)
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (_TOPHAT_SIZE, _TOPHAT_SIZE))
    opened = cv2.morphologyEx(lum, cv2.MORPH_OPEN, element, borderType=cv2.BORDER_REFLECT)
    closed = cv2.morphologyEx(lum, cv2.MORPH_CLOSE, element, borderType=cv2.BORDER_REFLECT)
    # The background with thin marks of both polarities removed, and its edge strength.
    background = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, element, borderType=cv2.BORDER_REFLECT)
    edges = cv2.morphologyEx(
        background, cv2.MORPH_GRADIENT, np.ones((_EDGE_SIZE, _EDGE_SIZE), np.uint8)
    )
    noise = _fast_noise(lum)
    mask = _marks(lum - opened, edges, noise) | _marks(closed - lum, edges, noise)
    if not mask.any():
        return mask
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


# --------------------------------------------------------------------------- faces


_CASCADE_FILE = "haarcascade_frontalface_default.xml"
_cascades = threading.local()  # one classifier per thread: detectMultiScale is not reentrant


def _face_cascade() -> cv2.CascadeClassifier:
    cascade = getattr(_cascades, "face", None)
    if cascade is None:
        path = cv2.data.haarcascades + _CASCADE_FILE
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"could not load the OpenCV face cascade {path}")
        _cascades.face = cascade
    return cascade


def detect_faces(pixels: np.ndarray, *, long_edge: int = 1024) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, w, h) boxes in the input's pixel coordinates.

    OpenCV's Haar cascade on the luminance, run on a view of at most long_edge pixels.
    """
    pixels = _check(pixels)
    view = analysis_view(pixels, long_edge)
    scale = pixels.shape[1] / view.shape[1]
    grey = np.clip(np.rint(luminance(view) * 255.0), 0, 255).astype(np.uint8)
    grey = cv2.equalizeHist(grey)
    found = _face_cascade().detectMultiScale(
        grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)
    )
    boxes = [
        (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
        for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()
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
        damage_mask=mask,
    )

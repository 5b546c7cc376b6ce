"""Synthetic degradations that turn clean images into plausible old scans.

Used on the fly by the training of the learned models (denoise, upscale, damage detection,
inpainting, colorization) and to make the demo's sample collection. Everything here is pure and
seeded: randomness only comes from the ``numpy.random.Generator`` passed in, inputs are never
modified, and the same generator state gives the same output.

Pixel convention: float32 arrays of shape (H, W, C), C in {1, 3}, values in [0, 1], in and out
(every function clips its result to [0, 1] unless told otherwise). Damage functions return
``(image, mask)`` where ``mask`` is an (H, W) bool array of the pixels the damage changed
visibly (any channel moved by more than :data:`VISIBLE_DELTA`), so inpainting exactly those pixels
repairs the damage.

Operations are vectorised numpy/OpenCV; damage is drawn in small local windows, so a 128x128
patch goes through the whole default chain in a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any, Literal

import cv2
import numpy as np

__all__ = [
    "VISIBLE_DELTA",
    "ColourMode",
    "DegradationConfig",
    "Degraded",
    "changed_mask",
    "damage_held_out_config",
    "damage_training_config",
    "degrade",
    "downscale",
    "dust",
    "fade",
    "film_grain",
    "gaussian_blur",
    "gaussian_noise",
    "halftone",
    "inpainting_training_config",
    "jpeg_artifacts",
    "motion_blur",
    "paper_texture",
    "poisson_noise",
    "resize",
    "scratches",
    "sepia",
    "stains",
    "tears_and_folds",
    "undamaged_config",
    "to_monochrome",
    "yellowing",
]

# A pixel counts as damaged when some channel changed by more than this (about 8/255): below it
# the change is not visible on a print and a detector could not be expected to find it.
VISIBLE_DELTA = 0.03

# Or several modes joined by "|" ("bright|dark"): each item picks one of them.
ColourMode = Literal["mixed", "bright", "dark", "grey", "relative", "shifted", "tinted"] | str
ResizeMethod = Literal["bicubic", "bilinear", "lanczos", "area", "nearest"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec.601, as in cv2/PIL "L"
_SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------------------------
# helpers


def _check(img: np.ndarray) -> np.ndarray:
    """Validate (H, W, C) with C in {1, 3}; return it as float32 (no copy when already)."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W, C) image with C in {{1, 3}}, got {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _as_hwc(out: np.ndarray, channels: int) -> np.ndarray:
    """cv2 drops a trailing singleton channel; put it back."""
    return out[:, :, None] if out.ndim == 2 and channels == 1 else out


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0, out=x).astype(np.float32, copy=False)


def _luma(img: np.ndarray) -> np.ndarray:
    """(H, W) float32 luminance of an (H, W, C) image."""
    if img.shape[2] == 1:
        return img[:, :, 0]
    # Explicit sum, not a matmul: small BLAS calls can stall on a busy machine.
    return _LUMA[0] * img[:, :, 0] + _LUMA[1] * img[:, :, 1] + _LUMA[2] * img[:, :, 2]


def _rgb(img: np.ndarray) -> np.ndarray:
    """An (H, W, 3) view/copy of an image (grey is repeated)."""
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _draw(rng: np.random.Generator, ranges: Range | Sequence[Range]) -> float:
    """Uniform over one (low, high) range, or over the union of several (picked by length)."""
    if len(ranges) == 2 and all(isinstance(v, int | float) for v in ranges):
        return float(rng.uniform(*ranges))  # type: ignore[arg-type]
    spans = [r for r in ranges if isinstance(r, tuple | list)]
    lengths = np.array([hi - lo for lo, hi in spans], np.float64)
    pick = int(rng.choice(len(spans), p=lengths / lengths.sum())) if lengths.sum() > 0 else 0
    return float(rng.uniform(*spans[pick]))


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 smooth noise with unit std and features about ``scale`` px wide."""
    h, w = shape
    gh = max(2, math.ceil(h / max(scale, 1.0)) + 1)
    gw = max(2, math.ceil(w / max(scale, 1.0)) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    field_ = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(field_.std())
    return field_ / std if std > 1e-6 else field_


def _smooth01(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 smooth field in [0, 1], mean about 0.5."""
    return np.clip(0.5 + 0.3 * _smooth_noise(shape, scale, rng), 0.0, 1.0)


def changed_mask(
    before: np.ndarray, after: np.ndarray, threshold: float = VISIBLE_DELTA
) -> np.ndarray:
    """(H, W) bool: pixels where some channel of ``after`` differs from ``before`` by > threshold.

    Both images (H, W, C) float in [0, 1] with the same shape.
    """
    diff = np.abs(after - before)
    # Per-channel compares: numpy reductions over a length-3 inner axis are slow.
    mask = diff[:, :, 0] > threshold
    for ch in range(1, diff.shape[2]):
        mask |= diff[:, :, ch] > threshold
    return mask


# --------------------------------------------------------------------------------------------
# noise


def gaussian_noise(
    img: np.ndarray, sigma: float, rng: np.random.Generator, clip: bool = True
) -> np.ndarray:
    """Add independent per-pixel, per-channel Gaussian noise.

    ``sigma`` is the standard deviation in 8-bit units, [0, 255] (5 light, 15 strong, 30 very
    heavy). With ``clip=False`` the result may leave [0, 1] (useful for noise-level training).
    """
    img = _check(img)
    out = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return _clip(out) if clip else out


def poisson_noise(img: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Photon (shot) noise: ``Poisson(img * peak) / peak`` per pixel and channel.

    ``peak`` (> 0) is the photon count of white: 10 is very noisy, 100 moderate, 1000 mild. Counts
    above 30 use the normal approximation (same mean and variance), which is much faster.
    """
    img = _check(img)
    if peak <= 0:
        raise ValueError("peak must be > 0")
    lam = img * np.float32(peak)
    out = lam + np.sqrt(lam) * rng.standard_normal(img.shape, dtype=np.float32)
    low = lam < 30.0
    if low.any():
        out[low] = rng.poisson(lam[low].astype(np.float64)).astype(np.float32)
    out /= np.float32(peak)
    return _clip(out)


def film_grain(
    img: np.ndarray, strength: float, grain_size: float, rng: np.random.Generator
) -> np.ndarray:
    """Spatially correlated, luminance-dependent monochrome film grain (same on every channel).

    ``strength``: grain standard deviation at mid-grey in [0, 1] units, [0, 0.3] (0.02 fine,
    0.06 clearly grainy, 0.12 very heavy). Grain is strongest in the mid-tones and falls to 40% in
    the blacks and whites. ``grain_size``: correlation length in px, [0, 4] (0 = per-pixel).
    """
    img = _check(img)
    h, w = img.shape[:2]
    grain = rng.standard_normal((h, w), dtype=np.float32)
    if grain_size > 0.25:
        ksize = 2 * math.ceil(3 * grain_size) + 1
        k = cv2.getGaussianKernel(ksize, grain_size, cv2.CV_32F)
        grain = cv2.sepFilter2D(grain, -1, k, k, borderType=cv2.BORDER_REFLECT101)
        # Std of white noise after a separable kernel is sum(k^2): renormalise to unit std.
        grain *= np.float32(1.0 / float((k.astype(np.float64) ** 2).sum()))
    lum = _luma(img)
    envelope = 0.4 + 2.4 * lum * (1.0 - lum)
    out = img + (grain * envelope * np.float32(strength))[:, :, None]
    return _clip(out)


# --------------------------------------------------------------------------------------------
# blur and resolution


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` px, [0, ~10] (0 returns a copy)."""
    img = _check(img)
    if sigma <= 0:
        return img.copy()
    out = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT101)
    return _as_hwc(out, img.shape[2])


def motion_blur(img: np.ndarray, length: float, angle: float = 0.0) -> np.ndarray:
    """Linear motion blur over ``length`` px, [1, ~40], at ``angle`` degrees (0 = horizontal,
    counter-clockwise). ``length <= 1`` returns a copy."""
    img = _check(img)
    if length <= 1:
        return img.copy()
    size = int(math.ceil(length)) | 1
    c = size // 2
    kernel = np.zeros((size, size), np.float64)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * size)
    th = math.radians(angle)
    xs, ys = c + t * math.cos(th), c - t * math.sin(th)
    # Bilinear splat of the samples along the segment: sub-pixel lengths and angles stay smooth.
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(kernel, (yi, xi), wgt)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT101)
    return _clip(_as_hwc(out, img.shape[2]))


def _bicubic_kernel(x: np.ndarray) -> np.ndarray:
    a = -0.5  # PIL's bicubic
    x = np.abs(x)
    return np.where(
        x < 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def _triangle_kernel(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _lanczos_kernel(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


_PIL_FILTERS = {
    "bicubic": (_bicubic_kernel, 2.0),
    "bilinear": (_triangle_kernel, 1.0),
    "lanczos": (_lanczos_kernel, 3.0),
}


@lru_cache(maxsize=512)
def _resample_taps(n_in: int, n_out: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """PIL's separable, antialiased resampling as taps: (n_out, K) source indices and float32
    weights (zero-padded), so output[i] = sum_k weights[i, k] * input[indices[i, k]]."""
    fn, support = _PIL_FILTERS[method]
    scale = n_in / n_out
    fscale = max(scale, 1.0)  # widen the kernel when reducing: this is the antialiasing
    support *= fscale
    centre = (np.arange(n_out) + 0.5) * scale
    xmin = np.maximum(np.trunc(centre - support + 0.5).astype(int), 0)
    xmax = np.minimum(np.trunc(centre + support + 0.5).astype(int), n_in)
    k = np.arange(int((xmax - xmin).max()))
    idx = xmin[:, None] + k[None, :]
    wts = np.where(idx < xmax[:, None], fn((idx - centre[:, None] + 0.5) / fscale), 0.0)
    total = wts.sum(axis=1, keepdims=True)
    wts = (wts / np.where(total == 0, 1.0, total)).astype(np.float32)
    idx = np.minimum(idx, n_in - 1)
    idx.setflags(write=False)
    wts.setflags(write=False)
    return idx, wts


def _resample_rows(x: np.ndarray, n_out: int, method: str) -> np.ndarray:
    """Resample axis 0 of (N, ...) float32. A gather per tap rather than a matrix product: no
    BLAS, whose thread pools thrash when many data-loader workers share a few cores."""
    idx, wts = _resample_taps(x.shape[0], n_out, method)
    out = np.zeros((n_out, *x.shape[1:]), np.float32)
    for k in range(idx.shape[1]):
        out += wts[:, k, None, None] * x[idx[:, k]]
    return out


def resize(img: np.ndarray, size: tuple[int, int], method: ResizeMethod = "bicubic") -> np.ndarray:
    """Resize to ``size`` = (height, width).

    ``bicubic``, ``bilinear`` and ``lanczos`` reproduce PIL's antialiased resampling (the usual
    convention for super-resolution training pairs); ``area`` and ``nearest`` use OpenCV.
    Output clipped to [0, 1] (bicubic/lanczos overshoot at edges).
    """
    img = _check(img)
    oh, ow = int(size[0]), int(size[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"bad target size {size}")
    h, w, c = img.shape
    if method in ("area", "nearest"):
        interp = cv2.INTER_AREA if method == "area" else cv2.INTER_NEAREST
        return _as_hwc(cv2.resize(img, (ow, oh), interpolation=interp), c)
    if method not in _PIL_FILTERS:
        raise ValueError(f"unknown resize method {method!r}")
    out = img
    if oh != h:
        out = _resample_rows(out, oh, method)
    if ow != w:
        out = _resample_rows(out.transpose(1, 0, 2), ow, method).transpose(1, 0, 2)
    return _clip(np.ascontiguousarray(out, dtype=np.float32))


def downscale(
    img: np.ndarray, factor: float, method: ResizeMethod = "bicubic", keep_size: bool = False
) -> np.ndarray:
    """Reduce resolution by ``factor`` >= 1 (2 = half the width and height).

    The output is (round(H / factor), round(W / factor)) (at least 1 px) unless ``keep_size``,
    in which case it is resized back to (H, W) with PIL-bicubic: detail is lost but the shape
    (and so any damage mask) still lines up. See :func:`resize` for the methods.
    """
    img = _check(img)
    if factor < 1:
        raise ValueError("factor must be >= 1")
    h, w = img.shape[:2]
    small = resize(img, (max(1, round(h / factor)), max(1, round(w / factor))), method)
    return resize(small, (h, w), "bicubic") if keep_size else small


def jpeg_artifacts(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through an 8-bit JPEG (OpenCV/libjpeg, 4:2:0 chroma) at ``quality`` [1, 100]
    (10 very blocky, 50 visible, 90 subtle). The result is quantised to 8-bit levels."""
    img = _check(img)
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.shape[2] == 3:
        u8 = np.ascontiguousarray(u8[:, :, ::-1])  # cv2 encodes BGR: keep luma weights right
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(np.clip(quality, 1, 100))])
    if not ok:  # pragma: no cover - libjpeg does not fail on valid arrays
        raise RuntimeError("JPEG encoding failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img.shape[2] == 3:
        dec = dec[:, :, ::-1]
    return _as_hwc(dec.astype(np.float32) * np.float32(1.0 / 255.0), img.shape[2])


# --------------------------------------------------------------------------------------------
# tone


_PAPER = (0.94, 0.92, 0.86)  # the warm grey-white a print fades towards


def to_monochrome(img: np.ndarray) -> np.ndarray:
    """A black-and-white print of a colour image: luminance repeated on every channel
    (shape preserved; a 1-channel image is returned as a copy)."""
    img = _check(img)
    return np.repeat(_luma(img)[:, :, None], img.shape[2], axis=2).astype(np.float32)


def fade(img: np.ndarray, amount: float, paper: tuple[float, float, float] = _PAPER) -> np.ndarray:
    """Fading of a print: contrast loss towards the paper tone, lifted blacks and mid-tones,
    and (colour) loss of saturation.

    ``amount`` in [0, 1]: 0 unchanged, 0.3 noticeably faded, 1 very washed out (blacks at 40%
    of the paper tone, whites at the paper tone, half the saturation gone).
    """
    img = _check(img)
    a = float(np.clip(amount, 0.0, 1.0))
    p = np.asarray(paper, np.float32)
    if img.shape[2] == 1:
        p = p @ _LUMA[:, None]
    x = img
    if img.shape[2] == 3:
        x = x + np.float32(0.5 * a) * (_luma(img)[:, :, None] - x)
    x = np.power(np.maximum(x, 0.0), np.float32(1.0 - 0.3 * a))  # lifted mid-tones
    black = np.float32(0.4 * a) * p
    white = 1.0 - np.float32(a) * (1.0 - p)
    return _clip(black + (white - black) * x)


_SEPIA_DARK = np.array([0.10, 0.06, 0.03], np.float32)
_SEPIA_LIGHT = np.array([1.0, 0.95, 0.82], np.float32)
_SEPIA_GAMMA = np.array([0.85, 1.0, 1.3], np.float32)  # red lifted, blue held down in mid-tones


def sepia(img: np.ndarray, strength: float) -> np.ndarray:
    """Sepia toning: blend with a brown duotone of the luminance.

    ``strength`` in [0, 1] (0 unchanged, 1 fully toned). Always returns 3 channels (a toned
    grey print is a colour image).
    """
    img = _check(img)
    lum = _luma(img)[:, :, None]
    tone = _SEPIA_DARK + (_SEPIA_LIGHT - _SEPIA_DARK) * np.power(lum, _SEPIA_GAMMA)
    base = _rgb(img)
    return _clip(base + np.float32(np.clip(strength, 0, 1)) * (tone - base))


def yellowing(img: np.ndarray, amount: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Yellowed paper/varnish: blue (and a little green) absorbed, most visibly in highlights.

    ``amount`` in [0, 1] (0.2 slight, 0.6 strong). With ``rng`` the cast is uneven, as on a real
    print. Always returns 3 channels.
    """
    img = _check(img)
    h, w = img.shape[:2]
    a = np.full((h, w, 1), np.float32(np.clip(amount, 0, 1)))
    if rng is not None:
        a *= np.clip(1.0 + 0.35 * _smooth_noise((h, w), max(h, w) / 3, rng), 0.3, 1.7)[:, :, None]
    absorb = np.array([0.03, 0.12, 0.5], np.float32)
    return _clip(_rgb(img) * (1.0 - np.clip(a, 0, 1) * absorb))


_SPOT_LUT_SIZE = 4096


@lru_cache(maxsize=1)
def _spot_lut() -> np.ndarray:
    """Lookup table equalising the cosine spot function to a uniform threshold (so a grey level
    v inks exactly a 1 - v fraction of each cell): index round(spot * (N - 1)) -> threshold."""
    f = (np.arange(512) + 0.5) / 512
    fu, fv = np.meshgrid(f, f)
    vals = np.sort((0.5 - (np.cos(2 * np.pi * fu) + np.cos(2 * np.pi * fv)) / 4).ravel())
    grid = np.linspace(0.0, 1.0, _SPOT_LUT_SIZE)
    lut = (np.searchsorted(vals, grid) / vals.size).astype(np.float32)
    lut.setflags(write=False)
    return lut


def halftone(img: np.ndarray, cell: float, angle: float = 45.0) -> np.ndarray:
    """Print-screen halftone (round dots, anti-aliased to about 1 px).

    ``cell`` is the screen period in px, [2, ~12]; ``angle`` the screen angle in degrees. Colour
    images get one screen per channel at angle, angle + 30 and angle + 60 (like CMY plates).
    """
    img = _check(img)
    h, w, c = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    lut = _spot_lut()
    out = np.empty_like(img)
    for ch in range(c):
        th = math.radians(angle + 30.0 * ch)
        u = (xx * math.cos(th) + yy * math.sin(th)) / cell
        v = (-xx * math.sin(th) + yy * math.cos(th)) / cell
        u -= np.floor(u)
        v -= np.floor(v)
        spot = 0.5 - (np.cos(2 * np.pi * u) + np.cos(2 * np.pi * v)) / 4
        thr = lut[(spot * np.float32(_SPOT_LUT_SIZE - 1) + 0.5).astype(np.intp)]
        # Ink where the threshold is below the darkness: paper (1) elsewhere, soft 1-px edge.
        out[:, :, ch] = (thr - (1.0 - img[:, :, ch])) * np.float32(cell * 0.5) + 0.5
    return _clip(out)


def paper_texture(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Photo-paper / scanner-glass texture: fine directional fibres and soft mottling,
    mostly multiplicative (visible in the highlights).

    ``strength`` in [0, 0.3] (0.03 subtle, 0.1 clearly textured).
    """
    img = _check(img)
    h, w = img.shape[:2]
    fibre = rng.standard_normal((h, w), dtype=np.float32)
    sx, sy = (2.5, 0.7) if rng.random() < 0.5 else (0.7, 2.5)
    fibre = cv2.GaussianBlur(fibre, (0, 0), sigmaX=sx, sigmaY=sy)
    fibre /= max(float(fibre.std()), 1e-6)
    mottle = _smooth_noise((h, w), max(8.0, min(h, w) / 6), rng)
    tex = (0.6 * fibre + 0.4 * mottle) * np.float32(strength)
    return _clip(img * (1.0 + tex[:, :, None]) + 0.2 * tex[:, :, None])


# --------------------------------------------------------------------------------------------
# damage


def _local_alpha(
    polys: list[np.ndarray],
    h: int,
    w: int,
    thickness: int = 1,
    blur: float = 0.0,
    fill: bool = False,
) -> tuple[np.ndarray, int, int] | None:
    """Draw float (N, 2) x,y polylines (or filled polygons) anti-aliased into a local window.

    Returns (alpha float32 [0, 1], y0, x0) of the window clipped to the image, or None when the
    shape misses the image.
    """
    pts = np.concatenate(polys)
    margin = thickness / 2 + 3 * blur + 2
    x0 = max(int(math.floor(pts[:, 0].min() - margin)), 0)
    x1 = min(int(math.ceil(pts[:, 0].max() + margin)) + 1, w)
    y0 = max(int(math.floor(pts[:, 1].min() - margin)), 0)
    y1 = min(int(math.ceil(pts[:, 1].max() + margin)) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    # cv2 draws anti-aliased only into 8-bit images, hence the uint8 canvas.
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = [np.round((p - (x0, y0)) * _ONE).astype(np.int32) for p in polys]
    if fill:
        cv2.fillPoly(canvas, fixed, 255, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(canvas, fixed, False, 255, max(1, int(thickness)), cv2.LINE_AA, _SHIFT)
    alpha = canvas.astype(np.float32) * np.float32(1.0 / 255.0)
    if blur > 0.05:
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
    return alpha, y0, x0


def _pick_colour(
    rng: np.random.Generator, mode: str, channels: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(absolute colour, None) or (None, delta relative to the background), both (C,)."""
    if "|" in mode:
        mode = str(rng.choice(mode.split("|")))
    if mode == "mixed":
        mode = str(rng.choice(["bright", "dark", "relative", "tinted"], p=[0.35, 0.3, 0.2, 0.15]))
    colour: np.ndarray | None = None
    delta: np.ndarray | None = None
    if mode == "bright":
        colour = rng.uniform(0.7, 1.0) + rng.normal(0.0, 0.03, 3)
    elif mode == "dark":
        colour = rng.uniform(0.0, 0.3) + rng.normal(0.0, 0.03, 3)
    elif mode == "grey":  # any brightness, flat: neither near white nor black, nor relative
        colour = rng.uniform(0.0, 1.0) + rng.normal(0.0, 0.03, 3)
    elif mode == "tinted":
        grey = rng.uniform(0.1, 0.9)
        colour = grey + rng.uniform(0.3, 1.0) * (rng.uniform(0.0, 1.0, 3) - grey)
    elif mode == "relative":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        delta = sign * rng.uniform(0.2, 0.6) * (1.0 + rng.normal(0.0, 0.1, 3))
    elif mode == "shifted":  # background shifted per channel: coloured, and follows the picture
        delta = rng.uniform(-0.6, 0.6, 3)
        delta *= max(1.0, 0.2 / max(float(np.abs(delta).max()), 1e-6))
    else:
        raise ValueError(f"unknown colour mode {mode!r}")
    if colour is not None:
        colour = np.clip(colour, 0.0, 1.0)
        colour = (colour @ _LUMA[:, None] if channels == 1 else colour).astype(np.float32)
    if delta is not None:
        delta = (delta @ _LUMA[:, None] if channels == 1 else delta).astype(np.float32)
    return colour, delta


def _blend(
    out: np.ndarray,
    alpha: np.ndarray,
    y0: int,
    x0: int,
    colour: np.ndarray | None,
    delta: np.ndarray | None = None,
) -> None:
    """In place: out[window] = lerp(out, colour, alpha); with ``delta`` the colour is the
    background shifted by delta (damage brighter/darker relative to what lies under it)."""
    reg = out[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
    target = np.clip(reg + delta, 0.0, 1.0) if delta is not None else colour
    reg += alpha[:, :, None] * (target - reg)


def _curve(
    rng: np.random.Generator,
    centre: tuple[float, float],
    length: float,
    angle: float,
    bend: float,
    wiggle: float,
) -> np.ndarray:
    """(N, 2) float x,y points of a smooth random curve of ``length`` px through ``centre``.

    ``bend``: total change of direction in radians (0 straight, 2 strongly curved); ``wiggle``:
    random-walk std of the direction per step (radians).
    """
    n = int(np.clip(length / 3, 6, 240))
    t = np.linspace(-0.5, 0.5, n)
    s_bend = bend * rng.uniform(-0.5, 0.5)  # some curves are S-shaped
    walk = np.cumsum(rng.normal(0.0, wiggle, n))
    ang = angle + bend * t + s_bend * (4 * t * t - 1 / 3) + walk - walk[n // 2]
    steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) * (length / (n - 1))
    pts = np.cumsum(steps, axis=0)
    return pts - pts[n // 2] + centre


def scratches(
    img: np.ndarray,
    rng: np.random.Generator,
    count: int = 3,
    width_range: Range | Sequence[Range] = (1.0, 4.0),
    opacity_range: tuple[float, float] = (0.35, 1.0),
    colour_mode: ColourMode = "mixed",
) -> tuple[np.ndarray, np.ndarray]:
    """Long thin curved scratches, anti-aliased.

    Each scratch has its own length (25-110% of the diagonal), direction (half run along the
    film, i.e. near-vertical), curvature, width (``width_range`` px, [1, 4] typical), opacity
    (``opacity_range`` in [0, 1]), blur (sharp to 1.2 px), opacity that fades in and out along
    its length, and colour. ``colour_mode``: "bright" (emulsion scratched off a print, 0.7-1),
    "dark" (0-0.3), "grey" (a flat grey of any brightness, 0-1), "relative" (background shifted
    by +-0.2-0.6, so it follows the picture), "shifted" (background shifted by up to +-0.6 per
    channel: a coloured relative change), "tinted" (random hue, like a scratch through a dye
    layer) or "mixed" (each scratch picks one of bright, dark, relative and tinted); several
    modes joined by "|" make each scratch pick one of those. ``width_range`` may also be several
    ranges: a width is drawn from their union.

    Returns (image, mask): mask (H, W) bool of the pixels visibly changed.
    """
    img = _check(img)
    h, w, c = img.shape
    out = img.copy()
    diag = math.hypot(h, w)
    for _ in range(int(count)):
        length = diag * rng.uniform(0.25, 1.1)
        if rng.random() < 0.5:
            angle = math.pi / 2 + rng.normal(0.0, 0.12)
        else:
            angle = rng.uniform(0.0, math.pi)
        bend = rng.uniform(0.0, 1.0) ** 2 * 2.5 * (1 if rng.random() < 0.5 else -1)
        pts = _curve(
            rng, (rng.uniform(0, w), rng.uniform(0, h)), length, angle, bend, rng.uniform(0, 0.05)
        )
        thickness = max(1, round(_draw(rng, width_range)))
        blur = 0.0 if rng.random() < 0.4 else rng.uniform(0.3, 1.2)
        opacity = rng.uniform(*opacity_range)
        fades = rng.random() < 0.5
        colour, delta = _pick_colour(rng, colour_mode, c)
        drawn = _local_alpha([pts], h, w, thickness, blur)
        if drawn is None:
            continue
        alpha, y0, x0 = drawn
        if fades:
            alpha *= 0.25 + 0.75 * _smooth01(alpha.shape, max(12.0, length / 4), rng)
        alpha *= np.float32(opacity)
        _blend(out, alpha, y0, x0, colour, delta)
    out = _clip(out)
    return out, changed_mask(img, out)


def _blob(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, n: int = 12
) -> np.ndarray:
    """(n, 2) x,y polygon of an irregular, elongated, rotated blob."""
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = radius * (1.0 + rng.uniform(-0.3, 0.3, n))
    aspect, rot = rng.uniform(0.45, 1.0), rng.uniform(0.0, np.pi)
    x, y = r * np.cos(th), aspect * r * np.sin(th)
    cr, sr = math.cos(rot), math.sin(rot)
    return np.stack([x * cr - y * sr, x * sr + y * cr], axis=1) + centre


def dust(
    img: np.ndarray,
    rng: np.random.Generator,
    count: int = 30,
    size_range: Range | Sequence[Range] = (0.5, 4.0),
    hair_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Dust specks and short hairs, bright (dust on the negative) or dark (dust on the print or
    scanner glass), sharp or out of focus.

    ``count`` items; specks have a radius in ``size_range`` px ([0.5, 6] typical) with irregular
    elongated shapes, some in small clusters; ``hair_fraction`` of the items are curly hairs or
    fibres 6-40 px long, 1-2 px wide. Returns (image, mask of visibly changed pixels).
    """
    img = _check(img)
    h, w, c = img.shape
    out = img.copy()
    for _ in range(int(count)):
        r = rng.random()
        mode = "bright" if r < 0.45 else "dark" if r < 0.9 else "relative"
        colour, delta = _pick_colour(rng, mode, c)
        centre = (rng.uniform(0, w), rng.uniform(0, h))
        opacity = rng.uniform(0.55, 1.0)
        if rng.random() < hair_fraction:
            size = max(1.5, _draw(rng, size_range))
            length = float(np.clip(size * rng.uniform(4.0, 12.0), 6.0, 40.0))
            pts = _curve(rng, centre, length, rng.uniform(0, 2 * np.pi), rng.uniform(-4, 4), 0.15)
            thickness = 1 if rng.random() < 0.8 else 2
            blur = 0.0 if rng.random() < 0.5 else rng.uniform(0.3, 0.7)
            drawn = _local_alpha([pts], h, w, thickness, blur)
        else:
            size = _draw(rng, size_range)
            polys = [_blob(rng, centre, max(size, 0.6))]
            if rng.random() < 0.15:  # a small cluster of grains
                for _ in range(int(rng.integers(1, 4))):
                    off = rng.normal(0.0, 2.0 * size + 1.0, 2)
                    polys.append(_blob(rng, centre + off, max(0.6, size * rng.uniform(0.3, 0.7))))
            blur = 0.0 if size < 1.2 or rng.random() < 0.6 else rng.uniform(0.3, 0.3 + size / 4)
            drawn = _local_alpha(polys, h, w, 1, blur, fill=True)
        if drawn is None:
            continue
        alpha, y0, x0 = drawn
        alpha *= np.float32(opacity)
        _blend(out, alpha, y0, x0, colour, delta)
    out = _clip(out)
    return out, changed_mask(img, out)


def stains(
    img: np.ndarray,
    rng: np.random.Generator,
    count: int = 1,
    size_range: tuple[float, float] = (10.0, 60.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Discoloured blotches with soft edges: water stains (yellow-brown, often with a darker tide
    line), rust/foxing (brown), bleached patches (lighter, washed out) and dark grime.

    ``count`` stains of diameter ``size_range`` px ([10, 60] typical; capped at 80% of the short
    side), irregular outlines, uneven interiors. Returns (image, mask of visibly changed pixels).
    """
    img = _check(img)
    h, w, c = img.shape
    out = img.copy()
    for _ in range(int(count)):
        size = min(rng.uniform(*size_range), 0.8 * min(h, w))
        radius = max(size / 2, 1.0)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        edge = rng.uniform(0.8, max(1.0, 0.35 * radius))
        half = radius * 1.6 + 3 * edge
        x0, x1 = max(int(cx - half), 0), min(int(math.ceil(cx + half)) + 1, w)
        y0, y1 = max(int(cy - half), 0), min(int(math.ceil(cy + half)) + 1, h)
        harm_k = np.arange(2, 7)
        harm_a = rng.uniform(0.0, 0.3, harm_k.size) / harm_k
        harm_p = rng.uniform(0.0, 2 * np.pi, harm_k.size)
        body_opacity = rng.uniform(0.35, 0.9)
        tide = rng.uniform(0.0, 0.6) if rng.random() < 0.6 else 0.0
        kind = str(rng.choice(["water", "rust", "bleach", "grime"], p=[0.4, 0.25, 0.2, 0.15]))
        tint = np.array(
            [rng.uniform(0.9, 1.0), rng.uniform(0.72, 0.9), rng.uniform(0.4, 0.7)], np.float32
        )
        brown = np.array([0.55, 0.36, 0.16], np.float32) * rng.uniform(0.6, 1.2)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        r = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dy, dx)
        rad = radius * (
            1.0
            + (
                harm_a[:, None, None] * np.cos(harm_k[:, None, None] * th + harm_p[:, None, None])
            ).sum(0)
        )
        d = (r - rad) / np.float32(edge)
        body = 1.0 / (1.0 + np.exp(np.clip(2.0 * d, -30, 30)))
        texture = 0.55 + 0.45 * _smooth01(body.shape, max(4.0, radius / 2), rng)
        alpha = body * body_opacity * texture
        if tide:
            alpha += tide * np.exp(-(((r - rad) / max(1.0, 0.5 * edge)) ** 2))
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        reg = out[y0:y1, x0:x1]
        if kind == "water":
            target = _rgb(reg) * tint
        elif kind == "rust":
            target = np.broadcast_to(np.clip(brown, 0, 1), (*reg.shape[:2], 3))
        elif kind == "bleach":
            target = _rgb(reg) + 0.7 * (np.float32(0.95) - _rgb(reg))
        else:
            target = _rgb(reg) * np.float32(rng.uniform(0.3, 0.6))
        if c == 1:
            target = _luma(target)[:, :, None]
        reg += alpha[:, :, None] * (target - reg)
    out = _clip(out)
    return out, changed_mask(img, out)


def _jagged(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, bulge: float, rough: float
) -> np.ndarray:
    """(N, 2) torn-paper line from a to b: a bulge of ``bulge`` px (positive to the left),
    a Brownian-bridge meander and fine fibre jitter of ``rough`` px."""
    chord = b - a
    length = float(np.hypot(*chord))
    n = int(np.clip(length / 1.5, 8, 800))
    t = np.linspace(0.0, 1.0, n)
    normal = np.array([-chord[1], chord[0]]) / max(length, 1e-6)
    walk = np.cumsum(rng.normal(0.0, 1.0, n))
    bridge = walk - t * walk[-1]
    bridge *= 0.04 * length / max(float(np.abs(bridge).max()), 1e-6)
    offset = bulge * np.sin(np.pi * t) + bridge + rng.normal(0.0, rough, n)
    return a + t[:, None] * chord + offset[:, None] * normal


def tears_and_folds(
    img: np.ndarray, rng: np.random.Generator, kind: Literal["fold", "tear"] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A fold/crease across the print or a torn-off corner or edge.

    "fold": a slightly wavy line across the whole image where the emulsion cracked (bright paper
    showing, or dark dirt in the crease; broken in places, 1-3 px, with a few short side cracks)
    plus a faint shading on either side (below :data:`VISIBLE_DELTA`, so not in the mask).
    "tear": a corner or edge region missing (white backing, dark scanner lid or grey) bounded by
    a jagged line with bright paper fibres. ``kind`` None picks one (60% folds).

    Returns (image, mask of visibly changed pixels).
    """
    img = _check(img)
    h, w, c = img.shape
    out = img.copy()
    if kind is None:
        kind = "fold" if rng.random() < 0.6 else "tear"
    diag = math.hypot(h, w)
    if kind == "fold":
        px, py = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        angle = rng.uniform(0.0, math.pi)
        pts = _curve(rng, (px, py), 2.2 * diag, angle, rng.uniform(-0.15, 0.15), 0.01)
        # Faint shading: the paper bends, one side catches more light.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        s = (xx - px) * -math.sin(angle) + (yy - py) * math.cos(angle)
        width = rng.uniform(3.0, 12.0)
        amp = rng.uniform(0.005, 0.025)
        out += (amp * np.sign(s) * np.exp(-np.abs(s) / width))[:, :, None].astype(np.float32)
        colour, _ = _pick_colour(rng, "bright" if rng.random() < 0.7 else "dark", c)
        thickness = int(rng.integers(1, 4))
        blur = rng.uniform(0.0, 0.8)
        opacity = rng.uniform(0.5, 1.0)
        n_branch = int(rng.integers(0, 6))
        branches = []
        for _ in range(n_branch):
            base = pts[int(rng.integers(0, len(pts)))]
            b_ang = angle + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.5, 1.5)
            branches.append(_curve(rng, base, rng.uniform(3, 15), b_ang, 0.5, 0.1))
        drawn = _local_alpha([pts], h, w, thickness, blur)
        if drawn is not None:
            alpha, y0, x0 = drawn
            # Broken crack: mostly continuous with gaps where the emulsion held.
            cont = _smooth01(alpha.shape, rng.uniform(8.0, 30.0), rng)
            alpha *= np.clip((cont - 0.25) * 4.0, 0.0, 1.0) * np.float32(opacity)
            _blend(out, alpha, y0, x0, colour)
        for br in branches:
            drawn = _local_alpha([br], h, w, 1, blur)
            if drawn is not None:
                alpha, y0, x0 = drawn
                _blend(out, alpha * np.float32(opacity), y0, x0, colour)
    elif kind == "tear":
        r = rng.random()
        backing = (
            rng.uniform(0.85, 0.98) * np.array([1.0, 0.98, 0.93])
            if r < 0.5
            else np.full(3, rng.uniform(0.02, 0.12))
            if r < 0.8
            else np.full(3, rng.uniform(0.4, 0.6))
        )
        backing = (backing @ _LUMA[:, None] if c == 1 else backing).astype(np.float32)
        if rng.random() < 0.5:  # a corner
            cx, cy = (
                (0.0 if rng.random() < 0.5 else w - 1.0),
                (0.0 if rng.random() < 0.5 else h - 1.0),
            )
            lx, ly = rng.uniform(0.1, 0.35) * w, rng.uniform(0.1, 0.35) * h
            a = np.array([cx + (lx if cx == 0 else -lx), cy])
            b = np.array([cx, cy + (ly if cy == 0 else -ly)])
            line = _jagged(rng, a, b, 0.0, rng.uniform(0.3, 1.2))
            outside = np.array([cx, cy]) + np.sign(np.array([cx, cy]) - (w / 2, h / 2)) * 4
            poly = np.vstack([line, outside[None, :]])
        else:  # a bite out of one edge
            side = int(rng.integers(0, 4))
            along_len = w if side in (0, 1) else h
            across_len = h if side in (0, 1) else w
            start = rng.uniform(0.0, 0.7) * along_len
            stop = min(along_len, start + rng.uniform(0.15, 0.4) * along_len)
            depth = rng.uniform(0.05, 0.15) * across_len
            edge_pos = -2.0 if side in (0, 2) else across_len + 1.0
            if side in (0, 1):
                a, b = np.array([start, edge_pos]), np.array([stop, edge_pos])
            else:
                a, b = np.array([edge_pos, start]), np.array([edge_pos, stop])
            # The bulge goes into the picture: pick the sign that points inwards.
            normal = np.array([-(b - a)[1], (b - a)[0]])
            inward = np.array([w / 2, h / 2]) - (a + b) / 2
            sign = 1.0 if normal @ inward > 0 else -1.0
            line = _jagged(rng, a, b, sign * depth, rng.uniform(0.3, 1.2))
            poly = line
        fibre_colour = np.clip(rng.uniform(0.85, 1.0) + rng.normal(0, 0.02, 3), 0, 1)
        fibre_colour = (fibre_colour @ _LUMA[:, None] if c == 1 else fibre_colour).astype(
            np.float32
        )
        fibre_thick = int(rng.integers(1, 4))
        fibre_opacity = rng.uniform(0.5, 0.9)
        drawn = _local_alpha([poly], h, w, fill=True)
        if drawn is not None:
            alpha, y0, x0 = drawn
            _blend(out, alpha, y0, x0, backing)
        drawn = _local_alpha([line], h, w, fibre_thick, rng.uniform(0.3, 0.9))
        if drawn is not None:
            alpha, y0, x0 = drawn
            _blend(out, alpha * np.float32(fibre_opacity), y0, x0, fibre_colour)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    out = _clip(out)
    return out, changed_mask(img, out)


# --------------------------------------------------------------------------------------------
# the random chain

Range = tuple[float, float]


@dataclass(frozen=True)
class DegradationConfig:
    """Probabilities (in [0, 1]) and (low, high) uniform sampling ranges for :func:`degrade`.

    The defaults are the "old photo" recipe: a chain that makes a typical scanned family print -
    often faded (50%), sometimes black-and-white (20%), sepia-toned (30%) or yellowed (30%),
    usually a little soft (40% blur, 25% lost resolution), with dust (50%), scratches (40%),
    sometimes stains (15%) or a fold/tear (8%), film grain (50%), scanner noise (30% Gaussian,
    10% Poisson) and JPEG compression (30%). Units are those of the functions above.
    Damage densities scale with the image so 64 px patches and 512 px photos look alike.
    Use :meth:`none` with ``dataclasses.replace`` to build task-specific recipes.
    """

    # tone
    p_monochrome: float = 0.2
    p_fade: float = 0.5
    fade_amount: Range = (0.1, 0.5)
    p_sepia: float = 0.3
    sepia_strength: Range = (0.4, 1.0)
    p_yellowing: float = 0.3
    yellowing_amount: Range = (0.1, 0.5)
    p_paper_texture: float = 0.25
    paper_strength: Range = (0.02, 0.08)
    p_halftone: float = 0.02
    halftone_cell: Range = (2.5, 5.0)
    # optics and resolution
    p_blur: float = 0.4
    blur_sigma: Range = (0.4, 1.5)
    p_motion_blur: float = 0.05
    motion_length: Range = (3.0, 9.0)
    p_downscale: float = 0.25
    downscale_factor: Range = (1.5, 3.0)
    downscale_methods: tuple[str, ...] = ("bicubic", "bilinear", "area")
    # damage (densities: expected items per 256 px of the long side / per 256x256 px area)
    p_stains: float = 0.15
    stain_density: Range = (0.5, 2.0)
    stain_size: Range = (10.0, 60.0)
    p_tears_folds: float = 0.08
    p_scratches: float = 0.4
    scratch_density: Range = (0.5, 4.0)
    scratch_width: Range | tuple[Range, ...] = (1.0, 4.0)
    scratch_opacity: Range = (0.35, 1.0)
    scratch_colour_mode: str = "mixed"
    p_dust: float = 0.5
    dust_density: Range = (3.0, 40.0)
    dust_size: Range | tuple[Range, ...] = (0.5, 4.0)
    # noise and compression
    p_grain: float = 0.5
    grain_strength: Range = (0.015, 0.07)
    grain_size: Range = (0.5, 1.8)
    p_gaussian: float = 0.3
    gaussian_sigma: Range = (2.0, 15.0)
    p_poisson: float = 0.1
    poisson_peak: Range = (30.0, 300.0)
    p_jpeg: float = 0.3
    jpeg_quality: Range = (45.0, 95.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
            spans = (
                value
                if isinstance(value, tuple) and value and isinstance(value[0], tuple)
                else (value,)
            )
            for span in spans:
                if (
                    isinstance(span, tuple)
                    and len(span) == 2
                    and all(isinstance(v, int | float) for v in span)
                    and span[0] > span[1]
                ):
                    raise ValueError(f"{f.name} must be (low, high), got {value}")

    @classmethod
    def old_photo(cls) -> DegradationConfig:
        """The default recipe (same as ``DegradationConfig()``)."""
        return cls()

    @classmethod
    def none(cls) -> DegradationConfig:
        """Every probability 0: the identity chain, a base for ``dataclasses.replace``."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})

    @classmethod
    def heavy(cls) -> DegradationConfig:
        """A badly kept print: everything more likely and stronger."""
        return cls(
            p_fade=0.8,
            fade_amount=(0.3, 0.7),
            p_blur=0.6,
            blur_sigma=(0.8, 2.0),
            p_downscale=0.4,
            downscale_factor=(2.0, 4.0),
            p_stains=0.5,
            p_tears_folds=0.3,
            p_scratches=0.8,
            scratch_density=(2.0, 8.0),
            p_dust=0.9,
            dust_density=(20.0, 80.0),
            p_grain=0.7,
            grain_strength=(0.04, 0.12),
            p_gaussian=0.5,
            gaussian_sigma=(8.0, 25.0),
            p_jpeg=0.5,
            jpeg_quality=(25.0, 80.0),
        )


@dataclass
class Degraded:
    """Result of :func:`degrade`: ``image`` (H, W, C) float32 [0, 1] (same shape as the input),
    ``damage_mask`` (H, W) bool (pixels visibly changed by the damage steps; inpaint these), and
    ``params``: JSON-serialisable {step name: arguments}, in the order applied."""

    image: np.ndarray
    damage_mask: np.ndarray
    params: dict[str, dict[str, Any]]
    # The image just before the damage steps (after tone and optics): what inpainting should
    # give back when the chain adds no noise or compression after the damage.
    before_damage: np.ndarray | None = None
    # (H, W) float32: how much the damage changed each pixel (largest channel change, before any
    # noise or compression); None when no damage was drawn. Lets a detector's target be
    # "clearly visible damage" rather than every pixel moved by more than VISIBLE_DELTA.
    damage_delta: np.ndarray | None = None


def _count(rng: np.random.Generator, density: Range, units: float) -> int:
    """At least one item, Poisson around a density drawn from ``density`` times ``units``."""
    return max(1, int(rng.poisson(rng.uniform(*density) * units)))


def degrade(
    img: np.ndarray, rng: np.random.Generator, config: DegradationConfig | None = None
) -> Degraded:
    """Apply a random chain of degradations drawn from ``config`` (default: old photo).

    Order (physical): tone (monochrome, fade, sepia, yellowing, paper texture, halftone), optics
    (blur or motion blur, lost resolution), damage (stains, fold/tear, scratches, dust), noise
    (film grain, then Gaussian or Poisson), JPEG. Colour-adding steps are skipped for 1-channel
    inputs, so the output always has the input's shape. Same generator state, same output.
    """
    cfg = config or DegradationConfig()
    x = _check(img)
    h, w, c = x.shape
    params: dict[str, dict[str, Any]] = {}
    mask = np.zeros((h, w), bool)

    def u(rng_range: Range) -> float:
        return float(rng.uniform(*rng_range))

    # tone
    if c == 3 and rng.random() < cfg.p_monochrome:
        x = to_monochrome(x)
        params["monochrome"] = {}
    if rng.random() < cfg.p_fade:
        params["fade"] = {"amount": u(cfg.fade_amount)}
        x = fade(x, **params["fade"])
    if c == 3 and rng.random() < cfg.p_sepia:
        params["sepia"] = {"strength": u(cfg.sepia_strength)}
        x = sepia(x, **params["sepia"])
    if c == 3 and rng.random() < cfg.p_yellowing:
        params["yellowing"] = {"amount": u(cfg.yellowing_amount)}
        x = yellowing(x, params["yellowing"]["amount"], rng)
    if rng.random() < cfg.p_paper_texture:
        params["paper_texture"] = {"strength": u(cfg.paper_strength)}
        x = paper_texture(x, params["paper_texture"]["strength"], rng)
    if rng.random() < cfg.p_halftone:
        params["halftone"] = {"cell": u(cfg.halftone_cell), "angle": u((0.0, 90.0))}
        x = halftone(x, **params["halftone"])
        x = gaussian_blur(x, 0.5)  # a scanned halftone is never razor sharp
    # optics
    if rng.random() < cfg.p_blur:
        params["gaussian_blur"] = {"sigma": u(cfg.blur_sigma)}
        x = gaussian_blur(x, **params["gaussian_blur"])
    elif rng.random() < cfg.p_motion_blur:
        params["motion_blur"] = {"length": u(cfg.motion_length), "angle": u((0.0, 180.0))}
        x = motion_blur(x, **params["motion_blur"])
    if rng.random() < cfg.p_downscale:
        method = str(rng.choice(list(cfg.downscale_methods)))
        params["downscale"] = {"factor": u(cfg.downscale_factor), "method": method}
        x = downscale(x, params["downscale"]["factor"], method, keep_size=True)
    # damage
    long_units = max(h, w) / 256.0
    area_units = h * w / 65536.0
    before_damage = x
    if rng.random() < cfg.p_stains:
        params["stains"] = {
            "count": _count(rng, cfg.stain_density, area_units),
            "size_range": cfg.stain_size,
        }
        x, m = stains(x, rng, **params["stains"])
        mask |= m
    if rng.random() < cfg.p_tears_folds:
        params["tears_and_folds"] = {"kind": "fold" if rng.random() < 0.6 else "tear"}
        x, m = tears_and_folds(x, rng, **params["tears_and_folds"])
        mask |= m
    if rng.random() < cfg.p_scratches:
        params["scratches"] = {
            "count": _count(rng, cfg.scratch_density, long_units),
            "width_range": cfg.scratch_width,
            "opacity_range": cfg.scratch_opacity,
            "colour_mode": cfg.scratch_colour_mode,
        }
        x, m = scratches(x, rng, **params["scratches"])
        mask |= m
    if rng.random() < cfg.p_dust:
        params["dust"] = {
            "count": _count(rng, cfg.dust_density, area_units),
            "size_range": cfg.dust_size,
        }
        x, m = dust(x, rng, **params["dust"])
        mask |= m
    damage_delta = None
    if x is not before_damage:
        # Faint changes of several steps can add up to a visible one: mark those too.
        mask |= changed_mask(before_damage, x)
        damage_delta = np.abs(x - before_damage).max(axis=2)
    # noise and compression
    if rng.random() < cfg.p_grain:
        params["film_grain"] = {"strength": u(cfg.grain_strength), "grain_size": u(cfg.grain_size)}
        x = film_grain(x, rng=rng, **params["film_grain"])
    if rng.random() < cfg.p_gaussian:
        params["gaussian_noise"] = {"sigma": u(cfg.gaussian_sigma)}
        x = gaussian_noise(x, params["gaussian_noise"]["sigma"], rng)
    elif rng.random() < cfg.p_poisson:
        params["poisson_noise"] = {"peak": u(cfg.poisson_peak)}
        x = poisson_noise(x, params["poisson_noise"]["peak"], rng)
    if rng.random() < cfg.p_jpeg:
        params["jpeg"] = {"quality": int(round(u(cfg.jpeg_quality)))}
        x = jpeg_artifacts(x, **params["jpeg"])
    # Tuples become lists so params round-trip through JSON unchanged.
    params = {
        k: {n: list(v) if isinstance(v, tuple) else v for n, v in a.items()}
        for k, a in params.items()
    }
    return Degraded(
        image=_clip(x.copy() if x is img else x),
        damage_mask=mask,
        params=params,
        before_damage=before_damage,
        damage_delta=damage_delta,
    )


# --------------------------------------------------------------------------------------------
# the damage detector's recipes

# Scratch colours and widths, and dust sizes, that the detector's training never sees: the
# benchmark draws its damage from these, so a model that learned a few colours instead of
# shapes fails there. Training draws widths and sizes on both sides of the held-out band (a
# detector must generalise across widths, not only below the widest it saw), and colours only
# relative to the background: absolute tinted colours are never drawn.
HELD_OUT_SCRATCH_COLOURS = "tinted"
HELD_OUT_SCRATCH_WIDTH: Range = (4.6, 6.4)  # drawn widths round to 5 or 6 px
HELD_OUT_DUST_SIZE: Range = (4.0, 6.0)
TRAINING_SCRATCH_WIDTH: tuple[Range, ...] = ((1.0, 4.4), (6.6, 9.4))  # 1-4 and 7-9 px
TRAINING_DUST_SIZE: tuple[Range, ...] = ((0.5, 3.8), (6.2, 8.0))


def damage_training_config() -> DegradationConfig:
    """The damage detector's training chain: the old-photo chain with damage on most images.

    Scratches are bright, dark, a flat grey of any brightness, or shifted relative to the
    background in brightness or colour (absolute tinted colours are held out), 1-4 or 7-9 px
    wide; dust 0.5-3.8 or 6.2-8 px; stains, folds and tears as in the default chain, more often.
    """
    return replace(
        DegradationConfig(),
        p_stains=0.3,
        p_tears_folds=0.12,
        p_scratches=0.65,
        scratch_width=TRAINING_SCRATCH_WIDTH,
        scratch_colour_mode="bright|dark|grey|relative|shifted",
        p_dust=0.65,
        dust_size=TRAINING_DUST_SIZE,
    )


# The steps of the old-photo chain that are not damage: tone, optics and resolution, noise.
AGING_STEPS = (
    "p_monochrome",
    "p_fade",
    "p_sepia",
    "p_yellowing",
    "p_paper_texture",
    "p_halftone",
    "p_blur",
    "p_motion_blur",
    "p_downscale",
    "p_grain",
    "p_gaussian",
    "p_poisson",
    "p_jpeg",
)


def damage_held_out_config(aged: bool = True) -> DegradationConfig:
    """The benchmark's chain: every image scratched and dusty, with the held-out colours,
    scratch widths and dust sizes; stains and folds/tears as in training. `aged=False` draws
    the same damage on the image as it is (none of `AGING_STEPS`)."""
    aging = {} if aged else dict.fromkeys(AGING_STEPS, 0.0)
    return replace(
        DegradationConfig(),
        **aging,
        p_stains=0.3,
        p_tears_folds=0.12,
        p_scratches=1.0,
        scratch_colour_mode=HELD_OUT_SCRATCH_COLOURS,
        scratch_width=HELD_OUT_SCRATCH_WIDTH,
        p_dust=1.0,
        dust_size=HELD_OUT_DUST_SIZE,
    )


def inpainting_training_config() -> DegradationConfig:
    """The inpainting model's training chain: tone and optics, then damage on nearly every
    image (stains, folds and tears more often than in scans, since large regions are where a
    learned fill must win), and no noise or compression after it, so `before_damage` is the
    exact target."""
    return replace(
        DegradationConfig(),
        p_stains=0.5,
        p_tears_folds=0.15,
        p_scratches=0.7,
        p_dust=0.7,
        p_grain=0.0,
        p_gaussian=0.0,
        p_poisson=0.0,
        p_jpeg=0.0,
    )


def undamaged_config() -> DegradationConfig:
    """The old-photo chain without any damage: what the detector must leave unmarked."""
    return replace(
        DegradationConfig(), p_stains=0.0, p_tears_folds=0.0, p_scratches=0.0, p_dust=0.0
    )

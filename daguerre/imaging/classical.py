"""Classical restoration operators: non-local means, Telea inpainting, Lanczos, levels.

Pure functions on the pixel convention: float32 (H, W, C), C in {1, 3}, values in [0, 1];
they return the same shape (except the upscalers) and never modify their input. Each
operator with tunable settings has a `*_parameters` companion returning the exact settings
it uses, so the catalog can record them.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from daguerre.imaging.detect import luminance

NLM_OPERATOR = "opencv.fastNlMeansDenoising"
NLM_TEMPLATE_WINDOW = 7
NLM_SEARCH_WINDOW = 21
# Filter strength per channel, per unit of noise sigma (8-bit units), for the L1 patch
# distance on 16-bit samples. OpenCV divides the squared patch distance by the channel count,
# so the strength it is given is h_8bit * sqrt(channels) * 257. Tuned on skimage astronaut,
# coffee, chelsea and camera crops with Gaussian noise of sigma 5, 15 and 25: on colour this
# beats fastNlMeansDenoisingColored on 8-bit samples by 1-2.5 dB PSNR.
_NLM_H_PER_SIGMA = 0.8


def _check(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got {pixels.shape}")
    return pixels


def _to_uint16(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _opencv_h(h_8bit: float, channels: int) -> float:
    return round(h_8bit * math.sqrt(channels) * 257.0, 2)


def nlm_parameters(
    sigma: float, bit_depth: int | None = 8, channels: int | None = None
) -> dict[str, Any]:
    """The settings nlm_denoise uses for a noise sigma (8-bit units) and source bit depth.

    Every source is filtered as 16-bit samples with the L1 patch distance (the only norm
    OpenCV offers for 16 bits), so 16-bit masters keep their precision; bit_depth is
    recorded, not needed. h_8bit is the per-channel strength; with channels given, "h" is the
    exact value handed to OpenCV (h_8bit * sqrt(channels) * 257).
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    h_8bit = round(_NLM_H_PER_SIGMA * float(sigma), 4)
    params: dict[str, Any] = {
        "operator": NLM_OPERATOR,
        "sigma": round(float(sigma), 4),
        "source_bit_depth": bit_depth,
        "working_dtype": "uint16",
        "norm": "L1",
        "h_8bit": h_8bit,
        "h_rule": "h = h_8bit * sqrt(channels) * 257",
        "template_window": NLM_TEMPLATE_WINDOW,
        "search_window": NLM_SEARCH_WINDOW,
    }
    if channels is not None:
        params["channels"] = channels
        params["h"] = _opencv_h(h_8bit, channels)
    return params


def nlm_denoise(pixels: np.ndarray, sigma: float, bit_depth: int | None = 8) -> np.ndarray:
    """Non-local means denoising with strength from the noise sigma (8-bit units).

    Returns float32 of the input's shape; sigma <= 0 returns a copy.
    """
    pixels = _check(pixels)
    if sigma <= 0:
        return pixels.astype(np.float32, copy=True)
    params = nlm_parameters(sigma, bit_depth, pixels.shape[2])
    source = _to_uint16(pixels)
    if pixels.shape[2] == 1:
        source = source[:, :, 0]
    out = cv2.fastNlMeansDenoising(
        source,
        h=[params["h"]],
        templateWindowSize=params["template_window"],
        searchWindowSize=params["search_window"],
        normType=cv2.NORM_L1,
    )
    out = out.astype(np.float32) / np.float32(65535.0)
    return out.reshape(pixels.shape)


_TELEA_SCALE = 65535.0


def telea_inpaint(
    pixels: np.ndarray, mask: np.ndarray, radius: int = 3, method: str = "telea"
) -> np.ndarray:
    """Fill mask (H, W) bool by Telea's fast marching method (or `method="ns"`, OpenCV's
    Navier-Stokes), channel by channel in float32.

    Pixels outside the mask are returned bit-identical to the input.
    """
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}.get(method)
    if flag is None:
        raise ValueError(f"method must be 'telea' or 'ns', got {method!r}")
    pixels = _check(pixels)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match pixels {pixels.shape}")
    source = pixels.astype(np.float32, copy=False)
    if not mask.any():
        return source.copy()
    mask_u8 = mask.astype(np.uint8)
    # OpenCV's float Telea misbehaves on [0, 1] data (wild over/undershoots); on a 0-65535
    # float scale it is well behaved and still keeps more than 16 bits of precision.
    scaled = source * np.float32(_TELEA_SCALE)
    filled = np.stack(
        [
            cv2.inpaint(np.ascontiguousarray(scaled[:, :, c]), mask_u8, radius, flag)
            for c in range(source.shape[2])
        ],
        axis=2,
    )
    filled = np.clip(filled / np.float32(_TELEA_SCALE), 0.0, 1.0)
    # OpenCV may touch pixels near the mask boundary; only masked pixels may change.
    return np.where(mask[:, :, None], filled, source).astype(np.float32, copy=False)


def telea_parameters(radius: int = 3) -> dict[str, Any]:
    """The settings telea_inpaint uses."""
    return {
        "operator": "opencv.inpaint.telea",
        "radius": int(radius),
        "working_dtype": "float32",
        "working_scale": _TELEA_SCALE,
    }


def lanczos_upscale(
    pixels: np.ndarray, scale: int, out: np.ndarray | None = None, *, clip: bool = True
) -> np.ndarray:
    """Lanczos-4 enlargement by an integer factor: (H, W, C) -> (H*scale, W*scale, C), clipped.

    `out`, float32 of the result's shape, receives the result and is returned. It may be a
    strided view (rows of whole pixels, e.g. a rectangle of a larger image): a tiler writes
    each tile straight into the assembled image, or reuses one buffer (a fresh output per
    tile costs as much in page faults as the resize). clip=False leaves Lanczos' overshoot
    beyond [0, 1] for the caller to clip (a tiler does it over whole output rows at once).
    """
    pixels = _check(pixels)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    height, width, channels = pixels.shape
    shape = (height * scale, width * scale, channels)
    if out is not None and (out.shape != shape or out.dtype != np.float32):
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    if scale == 1:
        if out is None:
            return pixels.astype(np.float32, copy=True)
        out[...] = pixels
        return out
    # OpenCV takes one band as (H, W); indexing (not reshape) keeps a strided out a view.
    dst = None if out is None else (out[:, :, 0] if channels == 1 else out)
    result = cv2.resize(
        pixels.astype(np.float32, copy=False),
        (width * scale, height * scale),
        dst=dst,
        interpolation=cv2.INTER_LANCZOS4,
    )
    if out is None:
        result = result.reshape(shape)
    else:
        if dst is not None and not np.may_share_memory(result, dst):
            dst[...] = result  # OpenCV could not use dst (never seen): copy it there
        result = out
    return np.clip(result, 0.0, 1.0, out=result) if clip else result


def resize_alpha(alpha: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """Resize an (H, W) alpha plane to size = (height, width): bilinear up (no ringing),
    area average down. None stays None."""
    if alpha is None:
        return None
    height, width = (int(v) for v in size)
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.shape == (height, width):
        return alpha.copy()
    shrinking = height * width < alpha.shape[0] * alpha.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(alpha, (width, height), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0)


# Already full range: the percentiles sit this close to black and white.
_TONE_FULL_EPS = 0.02
# Flat images (fog, blank pages) must not have their noise blown up.
_TONE_MAX_GAIN = 4.0


def _check_percentiles(low_pct: float, high_pct: float) -> None:
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")


def tone_levels(low: float, high: float, low_pct: float = 0.5, high_pct: float = 99.5) -> dict:
    """The levels stretch for luminance percentiles low/high (values in [0, 1])."""
    span = high - low
    full = low <= _TONE_FULL_EPS and high >= 1.0 - _TONE_FULL_EPS
    applied = not full and span > 1e-3
    gain = min(1.0 / span, _TONE_MAX_GAIN) if applied else 1.0
    return {
        "operator": "daguerre.auto_tone",
        "low_pct": low_pct,
        "high_pct": high_pct,
        "low": round(float(low), 6),
        "high": round(float(high), 6),
        "gain": round(gain, 6),
        "applied": applied,
    }


def auto_tone_parameters(
    pixels: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5
) -> dict[str, Any]:
    """The levels auto_tone would apply: luminance percentiles, gain and whether it applies."""
    pixels = _check(pixels)
    _check_percentiles(low_pct, high_pct)
    low, high = (float(v) for v in np.percentile(luminance(pixels), [low_pct, high_pct]))
    return tone_levels(low, high, low_pct, high_pct)


def apply_levels(pixels: np.ndarray, levels: dict[str, Any]) -> np.ndarray:
    """out = (in - low) * gain on every channel, clipped; a copy when levels do not apply."""
    pixels = _check(pixels)
    if not levels["applied"]:
        return pixels.astype(np.float32, copy=True)
    out = (pixels.astype(np.float32) - np.float32(levels["low"])) * np.float32(levels["gain"])
    return np.clip(out, 0.0, 1.0)


def auto_tone(pixels: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Restore faded contrast with one levels stretch of the luminance range.

    out = (in - low) * gain on every channel alike, so hue (and a sepia tone) is kept;
    low/high are the luminance percentiles, gain = 1 / (high - low) capped at 4. A no-op
    (copy) when the luminance already spans black to white.
    """
    return apply_levels(pixels, auto_tone_parameters(pixels, low_pct, high_pct))


# Luminance histogram resolution of the streaming percentiles: 16-bit levels.
TONE_BINS = 65536


def luminance_histogram(pixels: np.ndarray, bins: int = TONE_BINS) -> np.ndarray:
    """Counts of the luminance of (H, W, C) pixels in `bins` equal bins over [0, 1] (int64).

    Histograms of the blocks of an image add up to the histogram of the image, so
    percentiles can be taken over an image too large to hold.
    """
    lum = luminance(_check(pixels)).ravel()
    index = np.clip((lum * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(index, minlength=bins)


def histogram_percentiles(hist: np.ndarray, percents: list[float]) -> list[float]:
    """Percentiles (numpy's linear method) of the values a histogram counts, in [0, 1].

    Values are taken spread evenly inside their bin, so the error is below one bin width.
    """
    hist = np.asarray(hist, np.int64)
    total = int(hist.sum())
    if total == 0:
        raise ValueError("empty histogram")
    bins = hist.size
    cumulative = np.cumsum(hist)

    def value(rank: int) -> float:  # the rank-th smallest value (0-based)
        b = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[b - 1]) if b else 0
        return (b + (rank - before + 0.5) / int(hist[b])) / bins

    out = []
    for p in percents:
        position = p / 100.0 * (total - 1)
        lo = math.floor(position)
        hi = min(lo + 1, total - 1)
        out.append(value(lo) + (value(hi) - value(lo)) * (position - lo))
    return out


def tone_levels_from_histogram(
    hist: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5
) -> dict[str, Any]:
    """The auto_tone levels from a luminance histogram (see luminance_histogram)."""
    _check_percentiles(low_pct, high_pct)
    low, high = histogram_percentiles(hist, [low_pct, high_pct])
    return tone_levels(low, high, low_pct, high_pct)

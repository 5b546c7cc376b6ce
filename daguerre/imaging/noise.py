"""Noise level of an image: the sigma that steers the learned denoisers and the NLM strength.

numpy and OpenCV only (no pyvips, scikit-image or PyWavelets), so a bare GPU image that runs
training and the models can import it. Pixels follow the imaging convention: float32 (H, W, C), C in
{1, 3}, values in [0, 1]; sigmas are on the 8-bit scale (0-255) whatever the bit depth.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# Daubechies-2 decomposition high-pass filter (PyWavelets' `Wavelet("db2").dec_hi`).
_DB2_HIGH = np.array(
    [-0.48296291314453416, 0.8365163037378079, -0.2241438680420134, -0.12940952255126037]
)
# A wavelet coefficient next to black or white sees clipped, truncated noise (at sigma 50 a
# dark sky is half zeros, and the plain estimate reads 45): only coefficients whose local
# mean lies this many sigmas inside the 8-bit range count, once a first estimate says where.
_CLIP_MARGIN_SIGMAS = 2.0
_MIN_COEFFICIENTS = 256  # fewer clear of the clipped levels: keep the estimate before
_GAUSSIAN_MAD = 0.6744897501960817  # MAD of a unit normal (its 75th percentile)
_NUMERICAL_ZERO = 1e-9  # 8-bit levels: float64 rounding of an exact zero is ~1e-14
_LOCAL_SIDE = 7  # the box whose mean says how close to black or white a coefficient lies


def _high_pass_rows(x: np.ndarray) -> np.ndarray:
    """db2 detail coefficients along the last axis, as `pywt.dwt(x, "db2", mode="symmetric")`:
    half-sample symmetric extension by 3, convolution, every second value from the second."""
    n = x.shape[-1]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(3, 3)], mode="symmetric")
    length = n + 3  # the 'valid' part of the convolution
    full = sum(h * padded[..., 3 - j : 3 - j + length] for j, h in enumerate(_DB2_HIGH))
    return full[..., 1::2][..., : (n + 3) // 2]


def diagonal_detail(channel: np.ndarray) -> np.ndarray:
    """The finest diagonal db2 band of an (H, W) array (PyWavelets' `dwt2(..., "db2")[1][2]`)."""
    x = np.asarray(channel, dtype=np.float64)
    return _high_pass_rows(_high_pass_rows(x).T).T


def _local_level(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mean of each coefficient's neighbourhood (a box of `_LOCAL_SIDE` px), on the band grid
    (`shape`: the band's, one larger than half the channel; the last row and column repeat)."""
    local = cv2.blur(channel, (_LOCAL_SIDE, _LOCAL_SIDE))[::2, ::2]
    bh, bw = shape
    pad = ((0, max(0, bh - local.shape[0])), (0, max(0, bw - local.shape[1])))
    return np.pad(local, pad, mode="edge")[:bh, :bw]


def _mad_sigma(coefficients: np.ndarray) -> float:
    return float(np.median(np.abs(coefficients)) / _GAUSSIAN_MAD)


def channel_noise_sigma(channel: np.ndarray) -> float:
    """Donoho's MAD estimate on the finest diagonal db2 band of one (H, W) channel in 0-255,
    from the coefficients clear of clipped levels (see `_CLIP_MARGIN_SIGMAS`)."""
    diagonal = diagonal_detail(channel)
    # Flat or linear areas (a clipped sky, a blank border) say nothing; in floating point
    # their coefficients come out tiny (about 1e-14), not zero. Smooth but curved areas of a
    # clean image give small real coefficients: those count (evidence of no noise).
    informative = np.abs(diagonal) > _NUMERICAL_ZERO
    if not informative.any():
        return 0.0
    local = _local_level(channel, diagonal.shape)
    sigma = _mad_sigma(diagonal[informative])
    for _ in range(3):  # the margin depends on sigma: refine both together
        margin = _CLIP_MARGIN_SIGMAS * sigma
        clear = informative & (local > margin) & (local < 255.0 - margin)
        if np.count_nonzero(clear) < _MIN_COEFFICIENTS:
            break
        sigma = _mad_sigma(diagonal[clear])
    return sigma


def _sample_windows(
    height: int, width: int, tile: int = 256, grid: int = 3
) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of up to grid x grid full-resolution windows spread over an image (the
    whole image when small). Noise must be measured at full resolution: downscaling averages
    it away."""
    if height <= tile * grid and width <= tile * grid:
        return [(0, 0, width, height)]
    ys = np.linspace(0, max(height - tile, 0), grid).astype(int)
    xs = np.linspace(0, max(width - tile, 0), grid).astype(int)
    return [
        (int(x), int(y), min(tile, width - int(x)), min(tile, height - int(y)))
        for y in ys
        for x in xs
    ]


def _as_hwc(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got {pixels.shape}")
    return pixels


def sampled_noise_sigma(
    read: Callable[[int, int, int, int], np.ndarray], height: int, width: int
) -> float:
    """`estimate_noise_sigma` of an image known by its size and a `read(x, y, w, h)` of its
    pixels (a huge scan's region reader): only the sampled windows are read."""
    estimates = []
    for x, y, w, h in _sample_windows(height, width):
        if min(w, h) < 8:
            continue
        window = _as_hwc(read(x, y, w, h))
        scaled = np.ascontiguousarray(window, dtype=np.float32) * np.float32(255.0)
        sigmas = [channel_noise_sigma(scaled[:, :, c]) for c in range(scaled.shape[2])]
        estimates.append(float(np.mean(sigmas)))
    return float(np.median(estimates)) if estimates else 0.0


def estimate_noise_sigma(pixels: np.ndarray) -> float:
    """Gaussian noise standard deviation on the 8-bit scale (0-255), any bit depth.

    Wavelet (MAD) estimate per channel, averaged, on full-resolution windows; the median over
    windows resists windows of pure texture. Coefficients near black or white are left out, so
    heavy noise on a clipped 8-bit file is not underestimated. `pixels`: (H, W) or (H, W, C).
    """
    pixels = _as_hwc(pixels)

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return pixels[y : y + h, x : x + w]

    return sampled_noise_sigma(read, *pixels.shape[:2])

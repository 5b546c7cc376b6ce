"""Running a `LoadedModel` on whole images: device choice, noise estimation, simple tiling.

`run_tiled` splits the image into balanced, overlapping tiles, blends the overlaps with linear
ramps (weights of neighbouring tiles sum to one) and keeps only the output accumulator and the
current tile in memory. On CUDA out-of-memory it halves the tile and starts again; any other
error propagates (never a stale or missing tile).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .loading import LoadedModel


def pick_device(device: str = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cpu"; "cuda" / "cuda:N" (error if absent)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (auto, cpu, cuda)")
    return dev


def estimate_noise_sigma(pixels: np.ndarray) -> float:
    """Gaussian noise level of an image, in 8-bit levels (0-255 scale).

    Median absolute deviation of the finest diagonal Haar wavelet band / 0.6745 (Donoho),
    averaged over channels: robust to edges and texture, slightly high on very fine texture.
    `pixels`: (H, W, C) or (H, W) float in [0, 1].
    """
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    img = img[:h, :w]
    # Orthonormal Haar HH band: (a - b - c + d) / 2 keeps the noise std unchanged.
    hh = (img[0::2, 0::2] - img[0::2, 1::2] - img[1::2, 0::2] + img[1::2, 1::2]) / 2.0
    sigmas = [np.median(np.abs(hh[..., k])) / 0.6745 for k in range(img.shape[2])]
    return float(np.mean(sigmas) * 255.0)


def _spans(length: int, tile: int, overlap: int, multiple_of: int) -> list[tuple[int, int]]:
    """Balanced (start, end) tiles covering [0, length), neighbours sharing >= `overlap` px.

    Starts are multiples of `multiple_of`, so every tile sees the same pixel grid phase as the
    whole image (a pixel-unshuffle net is not shift-equivariant by odd offsets).
    """
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    size = min(length, -(-size // multiple_of) * multiple_of)
    spans = []
    for i in range(n):
        start = (round(i * (length - size) / (n - 1)) // multiple_of) * multiple_of
        end = length if i == n - 1 else min(length, start + size)
        spans.append((start, end))
    return spans


def _ramp(size: int, left: int, right: int, margin: int) -> np.ndarray:
    """1-D weights of one tile over its `left`/`right` overlaps with its neighbours.

    Within an overlap the weight is 0 for the `margin` pixels nearest the tile's edge (where
    padding still reaches), then rises linearly to 1. Neighbours' weights sum to 1 everywhere.
    """

    def rise(n: int) -> np.ndarray:
        m = min(margin, (n - 1) // 2)
        return np.clip((np.arange(n, dtype=np.float32) + 0.5 - m) / (n - 2 * m), 0, 1)

    w = np.ones(size, dtype=np.float32)
    if left > 0:
        w[:left] = rise(left)
    if right > 0:
        w[size - right :] = np.minimum(w[size - right :], rise(right)[::-1])
    return w


def run_tiled(
    model: LoadedModel,
    pixels: np.ndarray,
    tile: int = 512,
    overlap: int | None = None,
    *,
    noise_sigma: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """`model.run` on overlapping tiles of at most `tile` px, blended; same contract as `run`.

    `overlap` (input pixels shared by neighbouring tiles) defaults to twice the model's
    receptive overlap plus 16: the `receptive_overlap` pixels nearest each tile edge get no
    weight, the 16 in the middle blend linearly, so a model whose receptive field is within its
    `receptive_overlap` gives the untiled result (with a smaller overlap a quarter of it goes
    unweighted). The noise level, when the model takes one and none is given, is estimated once
    on the whole image so every tile uses the same. Models whose tiling policy is "internal"
    run untiled.
    """
    if pixels.ndim != 3:
        raise ValueError(f"expected (H, W, C), got shape {pixels.shape}")
    if model.takes_noise_level and noise_sigma is None:
        noise_sigma = estimate_noise_sigma(pixels)
    h, w = pixels.shape[:2]
    if model.tiling == "internal" or (h <= tile and w <= tile):
        return model.run(pixels, noise_sigma=noise_sigma, mask=mask)
    if overlap is None:
        overlap = 2 * model.receptive_overlap + 16
    while True:
        try:
            return _tiled(model, pixels, tile, overlap, noise_sigma, mask)
        except torch.cuda.OutOfMemoryError:
            smaller = tile // 2
            if smaller < max(overlap + 16, model.size_requirements.minimum, 32):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            tile = smaller


def _tiled(
    model: LoadedModel,
    pixels: np.ndarray,
    tile: int,
    overlap: int,
    noise_sigma: float | None,
    mask: np.ndarray | None,
) -> np.ndarray:
    h, w, c = pixels.shape
    s = model.scale
    m = model.size_requirements.multiple_of
    overlap = max(0, min(overlap, tile // 2 - 1))
    # Unweighted border of each overlap: the receptive overlap, but leave half to blend in.
    enough = overlap >= 2 * model.receptive_overlap + 2
    margin = model.receptive_overlap if enough else min(model.receptive_overlap, overlap // 4)
    rows = _spans(h, tile, overlap, m)
    cols = _spans(w, tile, overlap, m)
    out = np.zeros((h * s, w * s, c), dtype=np.float32)
    weight = np.zeros((h * s, w * s, 1), dtype=np.float32)
    for iy, (y0, y1) in enumerate(rows):
        top = rows[iy - 1][1] - y0 if iy > 0 else 0
        bottom = y1 - rows[iy + 1][0] if iy + 1 < len(rows) else 0
        wy = _ramp((y1 - y0) * s, top * s, bottom * s, margin * s)
        for ix, (x0, x1) in enumerate(cols):
            left = cols[ix - 1][1] - x0 if ix > 0 else 0
            right = x1 - cols[ix + 1][0] if ix + 1 < len(cols) else 0
            wx = _ramp((x1 - x0) * s, left * s, right * s, margin * s)
            tile_mask = None if mask is None else mask[y0:y1, x0:x1]
            result = model.run(pixels[y0:y1, x0:x1], noise_sigma=noise_sigma, mask=tile_mask)
            wt = (wy[:, None] * wx[None, :])[..., None]
            region = (slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
            out[region] += result * wt
            weight[region] += wt
    return out / np.maximum(weight, 1e-12)

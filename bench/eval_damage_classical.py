"""Pixel precision / recall / F1 of the classical damage detector, old (v0) against new.

    .venv/bin/python bench/eval_damage_classical.py [--only new|v0] [--time]

Three sets, all made on the fly from scikit-image's bundled images (no downloads):

- samples: the demo collection (daguerre.imaging.samples) with its true damage masks, both the
  rendered pixels and the encoded file decoded again (JPEG q92 / PNG / 16-bit TIFF);
- synthetic: 256-512 px crops damaged with daguerre.imaging.degrade (scratches 1-4 px of every
  colour and opacity, dust specks and hairs up to ~10 px, some grain, noise and JPEG), fixed seeds;
- clean: whole clean photographs, as they are and through JPEG q75: the share of pixels marked
  (every one of them is a false positive that inpainting would smear).

"strong R" is the recall on the truth pixels that changed by more than 0.1 (clearly visible), known
for the synthetic cases only. `--time` also times one 12 MP image.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage import data

from daguerre.imaging import degrade as dg
from daguerre.imaging.detect import damage_mask, luminance
from daguerre.imaging.io import decode
from daguerre.imaging.samples import make_sample_collection, render_sample, sample_manifest

# --------------------------------------------------------------------------- the old detector

_TOPHAT_SIZE = 7
_BLOCK = 64
_K_LOCAL = 8.0
_K_NOISE = 6.0
_MIN_CONTRAST = 0.1
_K_EDGE = 4.0
_EDGE_SIZE = 9
_MIN_PASSING = 0.6
_MAX_HALF_WIDTH = 2.5
_MAX_DEEP_SHARE = 0.1


def _fast_noise_v0(lum: np.ndarray) -> float:
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(lum, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT)
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def _local_levels_v0(response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _marks_v0(response: np.ndarray, edges: np.ndarray, noise: float) -> np.ndarray:
    median, spread = _local_levels_v0(response)
    threshold = np.maximum(median + _K_LOCAL * spread, max(_K_NOISE * noise, _MIN_CONTRAST))
    passing = (response > threshold) & (response > _K_EDGE * edges)
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
    depth = cv2.distanceTransform(candidates.astype(np.uint8), cv2.DIST_L2, 5)
    deep = ndimage.sum_labels(depth > _MAX_HALF_WIDTH, labels, index) / np.maximum(areas, 1.0)
    keep = (deep <= _MAX_DEEP_SHARE) & (share >= _MIN_PASSING)
    keep[0] = False
    return keep[labels]


def damage_mask_v0(pixels: np.ndarray) -> np.ndarray:
    """The detector before this change (top-hat 7 px on luminance only), for the baseline."""
    lum = luminance(pixels)
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (_TOPHAT_SIZE, _TOPHAT_SIZE))
    opened = cv2.morphologyEx(lum, cv2.MORPH_OPEN, element, borderType=cv2.BORDER_REFLECT)
    closed = cv2.morphologyEx(lum, cv2.MORPH_CLOSE, element, borderType=cv2.BORDER_REFLECT)
    background = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, element, borderType=cv2.BORDER_REFLECT)
    edges = cv2.morphologyEx(
        background, cv2.MORPH_GRADIENT, np.ones((_EDGE_SIZE, _EDGE_SIZE), np.uint8)
    )
    noise = _fast_noise_v0(lum)
    mask = _marks_v0(lum - opened, edges, noise) | _marks_v0(closed - lum, edges, noise)
    if not mask.any():
        return mask
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


# --------------------------------------------------------------------------- cases

Case = tuple[str, np.ndarray, np.ndarray, np.ndarray | None]  # name, pixels, truth, strong


def _unit(array: np.ndarray) -> np.ndarray:
    out = array.astype(np.float32) / 255.0
    return out[:, :, None] if out.ndim == 2 else out


def sample_cases() -> list[Case]:
    """Each sample as rendered and as read back from its encoded file."""
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_sample_collection(Path(tmp), seed=0)
        for spec, path in zip(sample_manifest(), paths, strict=True):
            rendered = render_sample(spec, seed=0)
            name = spec.relative_path.rsplit("/", 1)[-1]
            cases.append((f"{name} (render)", rendered.image, rendered.damage_mask, None))
            decoded = decode(path.read_bytes()).pixels
            cases.append((f"{name} (file)", decoded, rendered.damage_mask, None))
    return cases


def _crop(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    img = _unit(getattr(data, name)())
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(img[y : y + ch, x : x + cw])


# (source, crop size, seed, scratches kwargs or None, dust kwargs or None, post-processing)
_SYNTHETIC: list[tuple[str, int, int, dict | None, dict | None, str]] = [
    ("astronaut", 384, 1, {"count": 5}, {"count": 40, "size_range": (0.5, 5.0)}, ""),
    ("camera", 384, 2, None, {"count": 70, "size_range": (0.6, 5.0)}, "noise3"),
    ("coffee", 400, 3, {"count": 5, "width_range": (1.0, 2.5), "colour_mode": "bright"}, None, ""),
    ("chelsea", 300, 4, {"count": 4, "colour_mode": "tinted"}, {"count": 30}, "jpeg85"),
    ("rocket", 427, 5, {"count": 4, "colour_mode": "dark"}, {"count": 50}, "grain"),
    ("astronaut", 256, 6, {"count": 3, "colour_mode": "tinted"}, {"count": 25}, "jpeg75"),
    ("coffee", 384, 7, {"count": 3, "colour_mode": "relative"}, {"count": 40}, "noise3"),
    ("chelsea", 300, 8, {"count": 4, "opacity_range": (0.35, 0.7)}, {"count": 40}, ""),
    ("camera", 512, 9, {"count": 4}, {"count": 40, "size_range": (1.0, 5.0)}, "jpeg85"),
    ("rocket", 384, 10, None, {"count": 60, "size_range": (0.5, 5.0)}, ""),
]


def synthetic_cases() -> list[Case]:
    cases: list[Case] = []
    for source, size, seed, scratch, dust, post in _SYNTHETIC:
        rng = np.random.default_rng(seed)
        clean = _crop(source, size, rng)
        x = clean
        if scratch is not None:
            x, _ = dg.scratches(x, rng, **scratch)
        if dust is not None:
            x, _ = dg.dust(x, rng, **dust)
        truth = dg.changed_mask(clean, x)
        strong = dg.changed_mask(clean, x, 0.1)
        if post == "noise3":
            x = dg.gaussian_noise(x, 3.0, rng)
        elif post == "grain":
            x = dg.film_grain(x, 0.03, 1.0, rng)
        elif post.startswith("jpeg"):
            x = dg.jpeg_artifacts(x, int(post[4:]))
        label = f"{source}#{seed}" + (f" {post}" if post else "")
        cases.append((label, x, truth, strong))
    return cases


def clean_images() -> list[tuple[str, np.ndarray]]:
    out = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "text"):
        img = _unit(getattr(data, name)())
        out.append((name, img))
        if name != "text":
            out.append((f"{name} q75", dg.jpeg_artifacts(img, 75)))
    return out


# --------------------------------------------------------------------------- scoring


def scores(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((mask & truth).sum())
    precision = tp / max(float(mask.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return precision, recall, f1


Detector = Callable[[np.ndarray], np.ndarray]


def evaluate(cases: list[Case], detectors: dict[str, Detector]) -> dict[str, list[float]]:
    header = f"{'case':34s}" + "".join(f" | {n:>4s} P    R    F1  strR" for n in detectors)
    print(header)
    f1s: dict[str, list[float]] = {n: [] for n in detectors}
    for name, pixels, truth, strong in cases:
        row = f"{name:34s}"
        for det_name, detector in detectors.items():
            mask = detector(pixels)
            if truth.any():
                p, r, f = scores(mask, truth)
                sr = scores(mask, strong)[1] if strong is not None and strong.any() else math.nan
                f1s[det_name].append(f)
                row += f" | {p:9.2f} {r:4.2f} {f:4.2f} {sr:4.2f}"
            else:
                row += f" | marked {mask.mean() * 100:6.3f}%     "
        print(row)
    print(
        f"{'mean F1 (damaged)':34s}" + "".join(f" | {np.mean(v):19.3f}     " for v in f1s.values())
    )
    return f1s


def evaluate_clean(detectors: dict[str, Detector]) -> None:
    print(f"{'clean image: % pixels marked':34s}" + "".join(f" | {n:>8s}" for n in detectors))
    worst = dict.fromkeys(detectors, 0.0)
    for name, pixels in clean_images():
        row = f"{name:34s}"
        for det_name, detector in detectors.items():
            fraction = float(detector(pixels).mean())
            worst[det_name] = max(worst[det_name], fraction)
            row += f" | {fraction * 100:7.3f}%"
        print(row)
    print(f"{'worst':34s}" + "".join(f" | {v * 100:7.3f}%" for v in worst.values()))


def time_big(detectors: dict[str, Detector]) -> None:
    img = _unit(data.astronaut())
    big = cv2.resize(img, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    big, _ = dg.scratches(np.clip(big, 0, 1), np.random.default_rng(0), count=8)
    for det_name, detector in detectors.items():
        start = time.perf_counter()
        mask = detector(big)
        print(f"12 MP {det_name}: {time.perf_counter() - start:.2f} s, {mask.mean() * 100:.3f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["new", "v0"], default=None)
    parser.add_argument("--time", action="store_true", help="also time a 12 MP image")
    args = parser.parse_args()
    detectors: dict[str, Detector] = {"v0": damage_mask_v0, "new": damage_mask}
    if args.only:
        detectors = {args.only: detectors[args.only]}
    cv2.setNumThreads(2)
    print("== demo samples (true masks)")
    evaluate(sample_cases(), detectors)
    print("\n== synthetic (degrade.py, fixed seeds)")
    evaluate(synthetic_cases(), detectors)
    print("\n== clean photographs")
    evaluate_clean(detectors)
    if args.time:
        print()
        time_big(detectors)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""A small, deterministic collection of synthetic "old photos" for the demo and the tests.

Made from scikit-image's bundled sample images (only those shipped inside the package, never the
ones fetched with pooch) degraded with :mod:`daguerre.imaging.degrade`. Six files in three formats
(JPEG, PNG, 16-bit TIFF), one of them grey, some in sub-folders so relative paths get mirrored.
Every image is at most 512 px on its long edge so the demo stays quick on a small CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daguerre.imaging import degrade as dg

__all__ = ["SampleSpec", "make_sample_collection", "render_sample", "sample_manifest"]


@dataclass(frozen=True)
class SampleSpec:
    """One image of the collection.

    ``plan_hints`` are the pixel stages (names from ``daguerre.records.PIXEL_STAGES``) a sensible
    planner should choose for it: the degradation it was built to show. Other stages may be
    reasonable too (JPEG files carry slight compression noise, for instance).
    """

    relative_path: str
    source: str  # the skimage.data function the pixels come from
    description: str
    degradations: tuple[str, ...]
    format: str  # "jpeg", "png" or "tiff"
    width: int
    height: int
    bands: int
    bit_depth: int
    plan_hints: tuple[str, ...]


_MANIFEST: tuple[SampleSpec, ...] = (
    SampleSpec(
        relative_path="portrait_faded_sepia.jpg",
        source="astronaut",
        description="Studio portrait, strongly faded and sepia-toned, yellowed, on textured paper.",
        degradations=("fade", "sepia", "yellowing", "paper_texture", "film_grain"),
        format="jpeg",
        width=512,
        height=512,
        bands=3,
        bit_depth=8,
        plan_hints=("tone",),
    ),
    SampleSpec(
        relative_path="rocket_grainy.png",
        source="rocket",
        description="Launch pad photo with heavy film grain and sensor noise, plain in the sky.",
        degradations=("film_grain", "gaussian_noise"),
        format="png",
        width=512,
        height=342,
        bands=3,
        bit_depth=8,
        plan_hints=("denoise",),
    ),
    SampleSpec(
        relative_path="album-1/cat_scratched.jpg",
        source="chelsea",
        description="Cat snapshot with long scratches (bright, dark, tinted) and dust.",
        degradations=("scratches", "dust"),
        format="jpeg",
        width=451,
        height=300,
        bands=3,
        bit_depth=8,
        plan_hints=("inpaint",),
    ),
    SampleSpec(
        relative_path="album-1/cameraman_grey.png",
        source="camera",
        description="Black-and-white print (grey 8-bit PNG), dusty, grainy, slightly faded.",
        degradations=("fade", "dust"),
        format="png",
        width=512,
        height=512,
        bands=1,
        bit_depth=8,
        plan_hints=("inpaint", "colorize"),
    ),
    SampleSpec(
        relative_path="album-1/astronaut_small.jpg",
        source="astronaut",
        description="Small wallet-size head-and-shoulders print: low resolution and a bit blurry.",
        degradations=("downscale", "gaussian_blur"),
        format="jpeg",
        width=160,
        height=180,
        bands=3,
        bit_depth=8,
        plan_hints=("upscale",),
    ),
    SampleSpec(
        relative_path="album-1/scans/coffee_scan16.tif",
        source="coffee",
        description="16-bit colour TIFF scan at 600 ppi: slight scanner noise and a few scratches.",
        degradations=("gaussian_noise", "scratches"),
        format="tiff",
        width=512,
        height=341,
        bands=3,
        bit_depth=16,
        plan_hints=("inpaint",),
    ),
)


def sample_manifest() -> list[SampleSpec]:
    """What :func:`make_sample_collection` writes, in order (no pixels are computed)."""
    return list(_MANIFEST)


# ---------------------------------------------------------------------------------------------
# sources and recipes


_CROPS = {"album-1/astronaut_small.jpg": (slice(0, 270), slice(105, 345))}  # head, shoulders
_MAX_EDGE = 512


def _source(spec: SampleSpec) -> np.ndarray:
    """The clean picture for a sample: float32 (H, W, C) [0, 1], cropped, long edge <= 512."""
    # Only images bundled in the scikit-image wheel: skimage.data.* that need pooch are avoided.
    from skimage import data

    raw = getattr(data, spec.source)()
    if spec.relative_path in _CROPS:
        raw = raw[_CROPS[spec.relative_path]]
    img = raw.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[:, :, None]
    h, w = img.shape[:2]
    if max(h, w) > _MAX_EDGE:
        scale = _MAX_EDGE / max(h, w)
        img = dg.resize(img, (round(h * scale), round(w * scale)), "bicubic")
    return img


def _faded_sepia(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x = dg.fade(img, 0.55)
    x = dg.sepia(x, 0.9)
    x = dg.yellowing(x, 0.3, rng)
    x = dg.paper_texture(x, 0.03, rng)
    x = dg.film_grain(x, 0.012, 0.8, rng)
    params = {
        "fade": {"amount": 0.55},
        "sepia": {"strength": 0.9},
        "yellowing": {"amount": 0.3},
        "paper_texture": {"strength": 0.03},
        "film_grain": {"strength": 0.012, "grain_size": 0.8},
    }
    return dg.Degraded(x, np.zeros(x.shape[:2], bool), params)


def _grainy(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x = dg.film_grain(img, 0.09, 1.0, rng)
    x = dg.gaussian_noise(x, 12.0, rng)
    params = {"film_grain": {"strength": 0.09, "grain_size": 1.0}, "gaussian_noise": {"sigma": 12}}
    return dg.Degraded(x, np.zeros(x.shape[:2], bool), params)


def _scratched(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x, m1 = dg.scratches(img, rng, count=6, width_range=(1.0, 3.5), opacity_range=(0.6, 1.0))
    x, m2 = dg.dust(x, rng, count=60, size_range=(0.6, 3.5))
    params = {"scratches": {"count": 6}, "dust": {"count": 60}}
    return dg.Degraded(x, m1 | m2, params)


def _grey_dusty(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x = dg.fade(img, 0.2)
    x, mask = dg.dust(x, rng, count=80, size_range=(0.6, 4.0))
    x = dg.film_grain(x, 0.06, 1.0, rng)
    params = {"fade": {"amount": 0.2}, "dust": {"count": 80}, "film_grain": {"strength": 0.06}}
    return dg.Degraded(x, mask, params)


def _small(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x = dg.resize(img, (180, 160), "bicubic")
    x = dg.gaussian_blur(x, 0.8)
    params = {
        "downscale": {"size": [180, 160], "method": "bicubic"},
        "gaussian_blur": {"sigma": 0.8},
    }
    return dg.Degraded(x, np.zeros(x.shape[:2], bool), params)


def _scan16(img: np.ndarray, rng: np.random.Generator) -> dg.Degraded:
    x, mask = dg.scratches(img, rng, count=3, width_range=(1.0, 2.5), opacity_range=(0.6, 1.0))
    x = dg.gaussian_noise(x, 3.0, rng)
    return dg.Degraded(x, mask, {"scratches": {"count": 3}, "gaussian_noise": {"sigma": 3}})


_RECIPES: dict[str, Callable[[np.ndarray, np.random.Generator], dg.Degraded]] = {
    "portrait_faded_sepia.jpg": _faded_sepia,
    "rocket_grainy.png": _grainy,
    "album-1/cat_scratched.jpg": _scratched,
    "album-1/cameraman_grey.png": _grey_dusty,
    "album-1/astronaut_small.jpg": _small,
    "album-1/scans/coffee_scan16.tif": _scan16,
}


def _spec(sample: SampleSpec | str) -> tuple[int, SampleSpec]:
    for index, spec in enumerate(_MANIFEST):
        if sample in (spec, spec.relative_path):
            return index, spec
    raise KeyError(f"no sample {sample!r}")


def render_sample(sample: SampleSpec | str, seed: int = 0) -> dg.Degraded:
    """The pixels of one sample before encoding: image (H, W, C) float32 [0, 1] with C = the
    spec's bands, the ground-truth damage mask (H, W) bool (empty when no damage was drawn) and
    the degradation parameters. ``sample``: a spec or its relative path."""
    index, spec = _spec(sample)
    rng = np.random.default_rng([seed, index])  # one stream per sample: order-independent
    return _RECIPES[spec.relative_path](_source(spec), rng)


def _write(path: Path, img: np.ndarray, spec: SampleSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.bit_depth == 16:
        import pyvips

        u16 = np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
        vimg = pyvips.Image.new_from_array(u16).copy(
            interpretation="rgb16" if spec.bands == 3 else "grey16",
            xres=600 / 25.4,  # vips counts pixels per millimetre
            yres=600 / 25.4,
        )
        vimg.tiffsave(str(path), compression="deflate", predictor="horizontal", resunit="inch")
        return
    u8 = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    u8 = u8[:, :, 0] if spec.bands == 1 else np.ascontiguousarray(u8[:, :, ::-1])  # cv2: BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if spec.format == "jpeg" else []
    if not cv2.imwrite(str(path), u8, params):
        raise OSError(f"could not write {path}")


def make_sample_collection(dest: Path, seed: int = 0) -> list[Path]:
    """Write the sample collection under ``dest`` (created if missing; files overwritten) and
    return the written paths in manifest order. Deterministic: the same seed writes the same
    bytes."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in _MANIFEST:
        path = dest / spec.relative_path
        _write(path, render_sample(spec, seed).image, spec)
        paths.append(path)
    return paths

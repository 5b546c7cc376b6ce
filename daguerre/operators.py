"""The stage interface: one operator per pixel stage, classical or learned, chosen in one place.

An operator is pure computation plus the identity an audit needs (operator id, version,
weights sha256, device). It never sees a whole huge image: `prepare(source, params, ctx)`
may read global statistics from the source (a histogram, a downscaled view) and returns a
`TileJob` (the operator's tile requirements and a function of one tile), which
`daguerre.imaging.tiling` streams over the image. `apply(pixels, ...)` runs the same job on an
in-memory image. The Prefect tasks look operators up here and never special-case an
algorithm or an architecture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import cv2
import numpy as np

from daguerre import __version__
from daguerre.imaging import classical
from daguerre.imaging.detect import analysis_view
from daguerre.imaging.masks import threshold_damage
from daguerre.imaging.noise import estimate_noise_sigma
from daguerre.imaging.tiling import (
    ArraySink,
    ArraySource,
    Region,
    RegionSource,
    Tile,
    TileFn,
    TileRequirements,
    TileSink,
    TileStats,
    TileWriter,
    apply_tiled,
    iter_blocks,
)

# Classical operators are cheap per pixel: big tiles keep the context overhead small.
CLASSICAL_TILE = 2048
LEARNED_TILE = 1024
LEARNED_BLEND = 16
# Long edge of the view a global-context operator (colorization) sees.
COLORIZE_LONG_EDGE = 1024


class MaskSource(Protocol):
    """A damage mask readable by rectangle: (h, w) bool."""

    def read_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray: ...

    def count(self) -> int: ...


class ArrayMask:
    """An in-memory (H, W) bool mask as a MaskSource."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got {self.mask.shape}")

    def read_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.mask[y : y + h, x : x + w]

    def count(self) -> int:
        return int(self.mask.sum())


@dataclass
class StageContext:
    """What an operator may need beyond the pixels.

    damage_mask: (H, W) bool array or a MaskSource of the image's size.
    """

    bit_depth: int = 8
    damage_mask: np.ndarray | MaskSource | None = None
    noise_sigma: float | None = None

    def mask_source(self) -> MaskSource | None:
        if self.damage_mask is None or hasattr(self.damage_mask, "read_mask"):
            return self.damage_mask  # type: ignore[return-value]
        return ArrayMask(np.asarray(self.damage_mask))


@dataclass
class OperatorResult:
    pixels: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TileJob:
    """What an operator runs over one image: its tile requirements and one tile's function.

    fn(pixels, tile) gets float32 (h, w, C) in [0, 1] (a view it must not modify) and returns
    (h * scale, w * scale, C') float32 in [0, 1].
    """

    requirements: TileRequirements
    fn: TileFn
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class OperatorRun:
    """What running an operator over an image recorded (the pixels went to the sink)."""

    parameters: dict[str, Any]
    metrics: dict[str, Any]
    stats: TileStats


class Operator(Protocol):
    stage: str
    id: str
    version: str
    weights_sha256: str | None
    device: str

    def prepare(
        self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext
    ) -> TileJob: ...

    def apply(
        self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext
    ) -> OperatorResult: ...


def identity(op: Operator) -> str:
    """Compact identity used in the configuration hash."""
    if isinstance(op, OperatorChoice):
        return op.identity()
    ensemble = int(getattr(op, "ensemble", 1))
    return (
        f"{op.id}@{op.version}"
        + (f"#{op.weights_sha256}" if op.weights_sha256 else "")
        + (f"~ensemble{ensemble}" if ensemble > 1 else "")
    )


def operator_for(op: Operator, params: Mapping[str, Any]) -> Operator:
    """The operator that runs these plan parameters (an OperatorChoice picks one)."""
    return op.select(params) if isinstance(op, OperatorChoice) else op


def run_operator(
    op: Operator,
    source: RegionSource,
    sink: TileSink,
    params: Mapping[str, Any],
    ctx: StageContext,
    *,
    tile: int | None = None,
) -> OperatorRun:
    """Stream `op` over `source` into `sink`, tile by tile; the one way stages run."""
    job = op.prepare(source, params, ctx)
    stats = apply_tiled(source, job.fn, job.requirements, sink, tile=tile)
    metrics = {**job.metrics, "tiles": stats.tiles}
    if stats.splits:
        metrics["oom_splits"] = stats.splits
        metrics["tile_limit"] = stats.tile_limit
    return OperatorRun(job.parameters, metrics, stats)


class _Tiled:
    """`apply` for every operator: the streaming job on an in-memory image."""

    def apply(
        self, pixels: np.ndarray, params: Mapping[str, Any], ctx: StageContext
    ) -> OperatorResult:
        source = ArraySource(np.asarray(pixels, dtype=np.float32))
        job = self.prepare(source, params, ctx)  # type: ignore[attr-defined]
        scale = job.requirements.scale
        sink = ArraySink(source.width * scale, source.height * scale)
        apply_tiled(source, job.fn, job.requirements, sink)
        return OperatorResult(sink.result(), job.parameters, job.metrics)


def source_view(source: RegionSource, long_edge: int) -> np.ndarray:
    """A downscaled (area) view of the source with the long edge at most long_edge."""
    view = getattr(source, "view", None)
    if view is not None:
        return view(long_edge)
    return analysis_view(source.read_region(0, 0, source.width, source.height), long_edge)


# --------------------------------------------------------------------------- classical


@dataclass
class NlmDenoise(_Tiled):
    stage: str = "denoise"
    id: str = "opencv.fastNlMeans"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"

    # A pixel's result depends only on pixels within search/2 + template/2 of it: with that
    # context tiles are exact, so they butt-join (a cross-fade only added overlap to denoise).
    # Row strips: OpenCV's NLM ran 12% slower on 2015 px wide tiles than on the whole 4000 px
    # wide image, and 2% on full-width strips (bench_tiling); same area per tile as before.
    requirements = TileRequirements(
        context=classical.NLM_SEARCH_WINDOW // 2 + classical.NLM_TEMPLATE_WINDOW // 2 + 2,
        blend=0,
        tile=CLASSICAL_TILE // 2,
        tile_width=CLASSICAL_TILE * 2,
    )

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        sigma = float(params.get("sigma", ctx.noise_sigma or 0.0))
        used = classical.nlm_parameters(sigma, ctx.bit_depth, channels=source.bands)
        bit_depth = ctx.bit_depth

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            return classical.nlm_denoise(pixels, sigma, bit_depth=bit_depth)

        return TileJob(self.requirements, fn, {"sigma": round(sigma, 3), **used})


@dataclass
class TeleaInpaint(_Tiled):
    stage: str = "inpaint"
    id: str = "opencv.inpaint-telea"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"
    radius: int = 3

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        mask = ctx.mask_source()
        if mask is None:
            raise ValueError("inpainting needs a damage mask")
        radius = int(params.get("radius", self.radius))
        # Fast marching fills thin marks from their rims: what a filled pixel depends on lies
        # within a few radii (our damage masks hold marks a few pixels wide).
        req = TileRequirements(context=max(32, 8 * radius), tile=CLASSICAL_TILE)

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            m = mask.read_mask(*_xywh(tile.read))
            if not m.any():
                return pixels
            return classical.telea_inpaint(pixels, m, radius=radius)

        return TileJob(req, fn, {"radius": radius}, {"masked_pixels": int(mask.count())})


@dataclass
class AutoTone(_Tiled):
    stage: str = "tone"
    id: str = "daguerre.auto-tone"
    version: str = __version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        low_pct = float(params.get("low_pct", 0.5))
        high_pct = float(params.get("high_pct", 99.5))
        # Percentiles over every pixel at full resolution, from a streamed 16-bit histogram.
        hist = np.zeros(classical.TONE_BINS, np.int64)
        for _, block in iter_blocks(source, CLASSICAL_TILE):
            hist += classical.luminance_histogram(block)
        levels = classical.tone_levels_from_histogram(hist, low_pct, high_pct)

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            return classical.apply_levels(pixels, levels)

        # Pointwise: no context, no blend.
        return TileJob(TileRequirements(blend=0, tile=CLASSICAL_TILE), fn, levels)


@dataclass
class LanczosUpscale(_Tiled):
    stage: str = "upscale"
    id: str = "opencv.resize-lanczos4"
    version: str = cv2.__version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        scale = int(params["scale"])
        # Lanczos-4 reads 4 input px on each side of an output pixel's position, so with that
        # context tiles are exact: no cross-fade needed (it cost a third of the resize time).
        req = TileRequirements(
            context=6, blend=0, scale=scale, tile=max(256, CLASSICAL_TILE // scale)
        )

        def write(pixels: np.ndarray, tile: Tile, out: np.ndarray) -> None:
            classical.lanczos_upscale(pixels, scale, out=out, clip=False)

        def clip(out: np.ndarray) -> None:
            np.clip(out, 0.0, 1.0, out=out)

        # A writer: into an in-memory sink each tile's output goes straight into the image (no
        # copy of the 576 MB float output of a 12 MP x2), clipped a row of tiles at a time
        # over whole image rows (twice as fast as over tile-shaped views); elsewhere into a
        # reused buffer, clipped there.
        fn = TileWriter(write, scale, channels=source.bands, finish=clip)
        return TileJob(req, fn, {"scale": scale})


@dataclass
class OperatorChoice(_Tiled):
    """A stage served by several operators, one picked per image by an integer plan parameter:
    the upscale factor (each factor's model, Lanczos for the others) or the number of bands the
    denoiser gets (a grey model for grey images, the colour one for the rest).

    The step records the operator that ran (`operator_for`), never the choice itself.
    """

    stage: str
    param: str  # the plan parameter that picks
    default: int  # its value where the plan does not give one
    label: str  # identity prefix of each value: "x" gives "x2=..."
    by_value: dict[int, Operator]
    fallback: Operator
    id: str = "daguerre.operator-choice"
    version: str = __version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def select(self, params: Mapping[str, Any]) -> Operator:
        return self.by_value.get(int(params.get(self.param, self.default)), self.fallback)

    def identity(self) -> str:
        parts = [f"{self.label}{v}={identity(op)}" for v, op in sorted(self.by_value.items())]
        return ";".join([*parts, f"else={identity(self.fallback)}"])

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        return self.select(params).prepare(source, params, ctx)


def upscale_choice(by_scale: dict[int, Operator]) -> OperatorChoice:
    """The upscale stage when models serve some factors: each factor's model, else Lanczos."""
    return OperatorChoice("upscale", "scale", 2, "x", by_scale, LanczosUpscale())


def denoise_choice(colour: Operator, grey: Operator) -> OperatorChoice:
    """The denoise stage with a grey model: it serves grey images (one band, or grey stored as
    RGB), `colour` the rest."""
    return OperatorChoice("denoise", "bands", 3, "bands", {1: grey}, colour)


# --------------------------------------------------------------------------- damage detectors
# Detection's damage mask, tile by tile at full resolution: not a pixel stage (it makes the
# mask inpainting fills) but chosen and recorded the same way (`--model damage=...`).

DAMAGE = "damage"
# A pixel is damage when the model's probability exceeds this.
DAMAGE_THRESHOLD = 0.5
MaskFn = Callable[[np.ndarray, Tile], np.ndarray]


def _take_identity(wrapper: Any, model: Any) -> None:
    """A learned wrapper's audit identity is its LoadedModel's (id, version, weights, device)."""
    wrapper.id = model.model_id
    wrapper.version = getattr(model, "version", "") or "user"
    wrapper.weights_sha256 = model.weights_sha256
    wrapper.device = str(model.device)


@dataclass
class ClassicalDamage:
    """Per-channel dust rings and scratch runs (`daguerre.imaging.detect.damage_mask`)."""

    stage: str = DAMAGE
    id: str = "daguerre.damage-classical"
    version: str = __version__
    weights_sha256: str | None = None
    device: str = "cpu"

    def mask_job(self) -> tuple[TileRequirements, MaskFn]:
        from daguerre.imaging.detect import DAMAGE_CONTEXT, damage_mask

        return TileRequirements(context=DAMAGE_CONTEXT, blend=0, tile=2048), (
            lambda pixels, tile: damage_mask(pixels)
        )


@dataclass
class LearnedDamage:
    """A segmentation model's probability map, thresholded (with hysteresis where the model
    was calibrated with a grow threshold). Tiles butt-join (blend 0): the context covers the
    receptive field, and a thresholded mask cannot be cross-faded; a region grows within its
    tile's window (the tile and its context)."""

    model: Any  # daguerre.models.loading.LoadedModel
    threshold: float | None = None  # None: the model's calibrated one, else DAMAGE_THRESHOLD
    grow_threshold: float | None = None  # None: the model's with its own threshold, else none
    stage: str = DAMAGE
    id: str = ""
    version: str = ""
    weights_sha256: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        _take_identity(self, self.model)
        if self.threshold is None:
            calibrated = getattr(self.model, "decision_threshold", None)
            self.threshold = DAMAGE_THRESHOLD if calibrated is None else float(calibrated)
            if self.grow_threshold is None and calibrated is not None:
                self.grow_threshold = getattr(self.model, "grow_threshold", None)

    def mask_job(self) -> tuple[TileRequirements, MaskFn]:
        req = replace(model_requirements(self.model), blend=0)
        threshold, grow = self.threshold, self.grow_threshold
        assert threshold is not None  # resolved in __post_init__

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            return threshold_damage(self.model.run(pixels)[:, :, 0], threshold, grow)

        return req, fn


DamageDetector = ClassicalDamage | LearnedDamage


# --------------------------------------------------------------------------- learned


def model_requirements(model: Any, tile: int | None = None) -> TileRequirements:
    """Tile requirements of a LoadedModel, read from its descriptor's facts."""
    if tile is None:
        tile = LEARNED_TILE * (2 if model.tiling == "discouraged" else 1)
    return TileRequirements(
        context=int(model.receptive_overlap),
        blend=LEARNED_BLEND,
        multiple_of=int(model.size_requirements.multiple_of),
        minimum=max(1, int(model.size_requirements.minimum)),
        scale=int(model.scale),
        tile=tile,
        whole=model.tiling == "internal",
    )


def _noise_estimate(source: RegionSource) -> float:
    """One noise level for the whole image (so every tile uses the same), from its centre."""
    side = 2048
    w, h = min(side, source.width), min(side, source.height)
    x, y = (source.width - w) // 2, (source.height - h) // 2
    return estimate_noise_sigma(source.read_region(x, y, w, h))


@dataclass
class LearnedOperator(_Tiled):
    """A model from the registry or brought by the user, behind the same interface."""

    stage: str
    model: Any  # daguerre.models.loading.LoadedModel
    id: str = ""
    version: str = ""
    weights_sha256: str | None = None
    device: str = "cpu"
    # Passes of the geometric self-ensemble (`with_ensemble`): 1 runs the model once.
    ensemble: int = 1

    def __post_init__(self) -> None:
        _take_identity(self, self.model)

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        model = self.model
        used: dict[str, Any] = {"architecture": model.architecture}
        if self.ensemble > 1:
            used["ensemble"] = self.ensemble
        sigma = None
        if model.takes_noise_level:
            level = params.get("sigma", ctx.noise_sigma)
            if level is None:
                sigma = _noise_estimate(source)
                used["sigma"] = "estimated"
                used["estimated_sigma"] = round(sigma, 3)
            else:
                sigma = float(level)
                used["sigma"] = round(sigma, 3)
        if self.stage == "upscale":
            used["scale"] = model.scale
        if self.stage == "colorize":
            return self._colorize(source, used)
        mask = ctx.mask_source() if self.stage == "inpaint" else None
        if self.stage == "inpaint" and mask is None:
            raise ValueError("inpainting needs a damage mask")

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            m = mask.read_mask(*_xywh(tile.read)) if mask is not None else None
            if m is not None and not m.any():
                return pixels
            out = model.run(pixels, noise_sigma=sigma, mask=m, ensemble=self.ensemble)
            if m is not None:  # only masked pixels may change
                out = np.where(m[..., None], out, pixels).astype(np.float32)
            return out

        metrics = {"masked_pixels": int(mask.count())} if mask is not None else {}
        return TileJob(model_requirements(model), fn, used, metrics)

    def _colorize(self, source: RegionSource, used: dict[str, Any]) -> TileJob:
        """Colorize a downscaled view, then put its chroma on the full-resolution lightness."""
        view = source_view(source, COLORIZE_LONG_EDGE)
        coloured = self.model.run(view)
        if coloured.shape[2] != 3:
            raise ValueError(f"{self.id} returned {coloured.shape[2]} channels, not 3")
        chroma = ChromaTransfer(coloured, source.width, source.height)
        used["view"] = [int(view.shape[1]), int(view.shape[0])]
        return TileJob(TileRequirements(blend=0, tile=CLASSICAL_TILE), chroma.apply, used)


class ChromaTransfer:
    """Chroma (CIELAB a*, b*) of a small colour view laid on full-resolution lightness.

    The view's a*/b* planes are sampled bilinearly at each full-resolution pixel's position
    (pixel centres aligned), so any tile gets exactly what the whole image would.
    """

    def __init__(self, coloured_view: np.ndarray, width: int, height: int) -> None:
        lab = cv2.cvtColor(np.ascontiguousarray(coloured_view, np.float32), cv2.COLOR_RGB2Lab)
        self.ab = np.ascontiguousarray(lab[:, :, 1:])
        self.fx = coloured_view.shape[1] / width
        self.fy = coloured_view.shape[0] / height

    def apply(self, pixels: np.ndarray, tile: Tile) -> np.ndarray:
        region: Region = tile.read
        grey = pixels.mean(axis=2) if pixels.shape[2] == 3 else pixels[:, :, 0]
        rgb_grey = np.repeat(np.clip(grey, 0.0, 1.0)[:, :, None], 3, axis=2).astype(np.float32)
        lightness = cv2.cvtColor(rgb_grey, cv2.COLOR_RGB2Lab)[:, :, 0]
        xs = ((np.arange(region.width) + region.x + 0.5) * self.fx - 0.5).astype(np.float32)
        ys = ((np.arange(region.height) + region.y + 0.5) * self.fy - 0.5).astype(np.float32)
        map_x, map_y = np.meshgrid(xs, ys)
        ab = cv2.remap(self.ab, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lab = np.dstack([lightness, ab]).astype(np.float32)
        return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _xywh(r: Region) -> tuple[int, int, int, int]:
    return r.x, r.y, r.width, r.height


# --------------------------------------------------------------------------- faces
# Face models (GFPGAN, CodeFormer) restore one face at a time in a fixed-size square crop
# (512 px). The stage crops around each detected face, restores the crop, and blends it back
# with a soft elliptical mask, leaving every pixel outside the crops untouched.

FACE_MODEL_SIZE = 512
# A detector's box covers brows to chin; the models were trained on crops about twice that
# (hair, ears and jaw in view), so the crop is the box's long side times this, centred.
FACE_CROP_EXPAND = 2.0
# Blend weight over the crop, by normalised radius from its centre: 1 inside FACE_BLEND_INNER,
# a raised-cosine ramp to 0 at FACE_BLEND_OUTER (the crop's corners keep the original).
FACE_BLEND_INNER = 0.55
FACE_BLEND_OUTER = 0.95
# At most this many faces per image, largest first (a group photo can hold hundreds of
# detections; each costs one model run).
MAX_FACES = 32


@dataclass(frozen=True)
class FaceCrop:
    """One face: the detector's box and the square crop restored (image coordinates; the
    crop may reach past the image's edges, which are mirrored into it)."""

    box: tuple[int, int, int, int]
    x: int
    y: int
    side: int

    def to_json(self) -> dict[str, list[int]]:
        return {"box": list(self.box), "crop": [self.x, self.y, self.side, self.side]}


def face_crops(boxes: list[list[int]] | list[tuple[int, int, int, int]]) -> list[FaceCrop]:
    """Square crops around (x, y, w, h) face boxes, largest boxes first, at most MAX_FACES."""
    ordered = sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])
    crops = []
    for x, y, w, h in ordered[:MAX_FACES]:
        side = max(2, round(max(w, h) * FACE_CROP_EXPAND))
        cx, cy = x + w / 2, y + h / 2
        crops.append(FaceCrop((x, y, w, h), round(cx - side / 2), round(cy - side / 2), side))
    return crops


def read_padded(source: RegionSource, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The (h, w) region at (x, y), which may reach past the image: outside is mirrored."""
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(source.width, x + w), min(source.height, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region {(x, y, w, h)} lies outside the image")
    inside = source.read_region(x0, y0, x1 - x0, y1 - y0)
    top, left = y0 - y, x0 - x
    bottom, right = h - top - (y1 - y0), w - left - (x1 - x0)
    if top == bottom == left == right == 0:
        return inside
    # REFLECT_101 needs the pad smaller than the image; a face crop at a tiny image's edge may
    # not be, so replicate there.
    small = max(top, bottom) >= inside.shape[0] or max(left, right) >= inside.shape[1]
    border = cv2.BORDER_REPLICATE if small else cv2.BORDER_REFLECT_101
    out = cv2.copyMakeBorder(inside, top, bottom, left, right, border)
    return out.reshape(h, w, inside.shape[2])


def face_blend_weight(xs: np.ndarray, ys: np.ndarray, side: int) -> np.ndarray:
    """Blend weights (len(ys), len(xs)) float32 for crop-relative pixel coordinates."""
    half = side / 2
    nx = (xs.astype(np.float32) + 0.5 - half) / half
    ny = (ys.astype(np.float32) + 0.5 - half) / half
    r = np.sqrt(nx[None, :] ** 2 + ny[:, None] ** 2)
    t = np.clip((r - FACE_BLEND_INNER) / (FACE_BLEND_OUTER - FACE_BLEND_INNER), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


@dataclass
class _RestoredFace:
    crop: FaceCrop
    pixels: np.ndarray  # (r, r, C) restored, r = min(crop.side, model size)


@dataclass
class FaceRestore(_Tiled):
    """A face model (the user's GFPGAN or CodeFormer) over every detected face.

    Each face's crop goes to the model at its working size and comes back at
    min(crop side, working size): a crop larger than that is sampled up (bicubic) as tiles
    are written, so memory stays at one working-size image per face whatever the scan size.
    """

    model: Any  # daguerre.models.loading.LoadedModel
    stage: str = "face"
    id: str = ""
    version: str = ""
    weights_sha256: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        _take_identity(self, self.model)

    @property
    def model_size(self) -> int:
        req = self.model.size_requirements
        # A face model states its working size as its minimum (GFPGAN) or multiple (CodeFormer).
        size = max(int(req.minimum), int(req.multiple_of))
        return size if size >= 16 else FACE_MODEL_SIZE

    def prepare(self, source: RegionSource, params: Mapping[str, Any], ctx: StageContext):
        size = self.model_size
        crops = face_crops(params.get("faces", []))
        restored = []
        for crop in crops:
            pixels = read_padded(source, crop.x, crop.y, crop.side, crop.side)
            interp = cv2.INTER_AREA if crop.side > size else cv2.INTER_CUBIC
            model_in = cv2.resize(pixels, (size, size), interpolation=interp)
            out = self.model.run(model_in.reshape(size, size, pixels.shape[2]))
            kept = min(crop.side, size)
            if kept != size:
                out = cv2.resize(out, (kept, kept), interpolation=cv2.INTER_AREA)
            out = np.clip(out, 0.0, 1.0).reshape(kept, kept, pixels.shape[2])
            restored.append(_RestoredFace(crop, out.astype(np.float32)))

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            out = pixels
            for face in restored:
                out = _paste_face(out, pixels is out, tile.read, face)
            return out

        used = {
            "architecture": self.model.architecture,
            "model_size": size,
            "crop_expand": FACE_CROP_EXPAND,
            "faces": [c.to_json() for c in crops],
        }
        metrics = {"faces": len(crops), "faces_detected": len(params.get("faces", []))}
        return TileJob(TileRequirements(blend=0, tile=CLASSICAL_TILE), fn, used, metrics)


def _paste_face(out: np.ndarray, shared: bool, region: Region, face: _RestoredFace) -> np.ndarray:
    """Blend one restored face into the tile `out` (covering `region`); copies the tile first
    when `shared` (the tiler's input view must not be modified)."""
    c = face.crop
    x0, y0 = max(region.x, c.x), max(region.y, c.y)
    x1 = min(region.x + region.width, c.x + c.side)
    y1 = min(region.y + region.height, c.y + c.side)
    if x1 <= x0 or y1 <= y0:
        return out
    if shared:
        out = out.copy()
    xs = np.arange(x0, x1) - c.x  # crop-relative
    ys = np.arange(y0, y1) - c.y
    kept = face.pixels.shape[0]
    if kept == c.side:
        face_px = face.pixels[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    else:  # sample the working-size result at these pixels' centres
        f = kept / c.side
        map_x = np.broadcast_to(((xs + 0.5) * f - 0.5).astype(np.float32), (len(ys), len(xs)))
        map_y = np.broadcast_to(
            ((ys + 0.5) * f - 0.5).astype(np.float32)[:, None], (len(ys), len(xs))
        )
        face_px = cv2.remap(
            face.pixels,
            np.ascontiguousarray(map_x),
            np.ascontiguousarray(map_y),
            cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REPLICATE,
        )
        face_px = np.clip(face_px.reshape(len(ys), len(xs), -1), 0.0, 1.0)
    weight = face_blend_weight(xs, ys, c.side)[:, :, None]
    rows = slice(y0 - region.y, y1 - region.y)
    cols = slice(x0 - region.x, x1 - region.x)
    base = out[rows, cols]
    out[rows, cols] = base + weight * (face_px - base)
    return out


CLASSICAL: dict[str, type] = {
    "denoise": NlmDenoise,
    "inpaint": TeleaInpaint,
    "tone": AutoTone,
    "upscale": LanczosUpscale,
}

_cache: dict[tuple, Operator | None] = {}
_cache_lock = threading.Lock()


def resolve_operators(
    steps: tuple[str, ...], models: Mapping[str, str], device: str = "auto", ensemble: int = 1
) -> dict[str, Operator | None]:
    """Pick the operator of every pixel stage: user's model, else shipped default, else classical.

    `None` means the stage is not in `steps` or has no operator here (face with no face
    model). The damage detector comes along under "damage" (so it is part of the
    configuration's identity). Loaded models are cached per process so a worker loads each
    weights file once (again when an unpinned file is replaced). `ensemble` > 1: learned
    denoise, upscale and inpaint operators average that many flipped/turned passes
    (`with_ensemble`).
    """
    from daguerre.records import PIXEL_STAGES

    out: dict[str, Operator | None] = {}
    for stage in (*PIXEL_STAGES, DAMAGE):
        if stage != DAMAGE and stage not in steps:
            # Not run, so not loaded: a shipped colorizer must not cost every worker torch.
            out[stage] = None
            continue
        spec = models.get(stage)
        key = (stage, spec, device, _weights_version(spec))
        with _cache_lock:
            if key not in _cache:
                # A weights file replaced under the same unpinned path: drop the old model.
                for stale in [k for k in _cache if k[:3] == key[:3]]:
                    del _cache[stale]
                _cache[key] = _make_operator(stage, spec, device)
            out[stage] = with_ensemble(_cache[key], ensemble)
    return out


def _weights_version(spec: str | None) -> str | None:
    """The version of the file an unpinned user spec names, so a long-lived worker reloads
    weights replaced under the same path or key; None for pinned (`#sha256=`), shipped or
    classical specs, whose content cannot change, and for sources that cannot be read now
    (loading them then reports why)."""
    if spec is None or spec == CLASSICAL_SPEC or "#sha256=" in spec:
        return None
    from daguerre.models.registry import SHIPPED
    from daguerre.storage import StorageError, uri_version

    if any(d.id == spec for d in SHIPPED):
        return None
    try:
        return uri_version(spec)
    except StorageError:
        return None


def with_ensemble(op: Any, passes: int) -> Any:
    """`op` with its learned models run as a geometric self-ensemble of `passes` (1, 2, 4, 8):
    about that many times slower, a little better (BENCHMARKS.md). Classical operators, and
    stages where outputs are not pixel-aligned, are returned as they are."""
    if passes == 1:
        return op
    # torch: only when asked for
    from daguerre.models.inference import ENSEMBLE_PASSES
    from daguerre.models.loading import ENSEMBLE_TASKS

    if passes not in ENSEMBLE_PASSES:
        raise ValueError(f"ensemble must be one of {ENSEMBLE_PASSES}, got {passes}")
    if isinstance(op, LearnedOperator) and op.stage in ENSEMBLE_TASKS:
        return replace(op, ensemble=passes)
    if isinstance(op, OperatorChoice):
        by_value = {v: with_ensemble(o, passes) for v, o in op.by_value.items()}
        return replace(op, by_value=by_value, fallback=with_ensemble(op.fallback, passes))
    return op


CLASSICAL_SPEC = "classical"


def stage_available(stage: str, models: Mapping[str, str]) -> bool:
    """Whether `stage` has an operator here (the user's model, a shipped one or a classical
    one), without loading anything."""
    from daguerre.models.registry import TASKS, default_for

    spec = models.get(stage)
    if spec is not None and spec != CLASSICAL_SPEC:
        return True
    if stage in CLASSICAL:
        return True
    return spec is None and stage in TASKS and default_for(stage) is not None


def damage_detector(
    models: Mapping[str, str], device: str = "auto"
) -> ClassicalDamage | LearnedDamage:
    """The damage detector: the user's model, else the shipped one, else the classical one."""
    found = resolve_operators((), models, device)[DAMAGE]
    assert isinstance(found, ClassicalDamage | LearnedDamage)
    return found


def _make_operator(stage: str, user_spec: str | None, device: str) -> Any:
    task_name = stage
    if stage == DAMAGE:
        return _damage_detector(user_spec, device)
    if user_spec == CLASSICAL_SPEC:
        # The archivist's choice: the classical algorithm even where a learned default exists.
        if stage not in CLASSICAL:
            raise ValueError(f"no classical operator for {stage}")
        return CLASSICAL[stage]()
    from daguerre.models.registry import TASKS, default_for, shipped_scales

    user_op: LearnedOperator | None = None
    if user_spec is not None:
        from daguerre.models.loading import load_user_model, parse_model_spec

        spec = parse_model_spec(f"{task_name}={user_spec}")
        model = load_user_model(spec.task, spec.source, spec.sha256, device)
        if stage == "face":
            return FaceRestore(model)
        user_op = LearnedOperator(stage, model)
        if stage == "denoise" and model.in_channels == 1:
            return _grey_denoiser_beside_colour(user_op, device)
        if stage != "upscale":
            return user_op
    if stage == "upscale":
        return _upscale_operator(user_op, shipped_scales("upscale"), device)
    default = default_for(task_name) if task_name in TASKS else None
    if default is not None:
        # Only now: torch costs ~0.5 GB of memory, classical stages need none of it.
        from daguerre.models.loading import load_model

        op = LearnedOperator(stage, load_model(default, device=device))
        grey = default_for(task_name, in_channels=1) if stage == "denoise" else None
        if grey is not None and grey is not default:
            return denoise_choice(op, LearnedOperator(stage, load_model(grey, device=device)))
        return op
    cls = CLASSICAL.get(stage)
    return cls() if cls is not None else None


def _grey_denoiser_beside_colour(grey: LearnedOperator, device: str) -> Operator:
    """A one-band denoiser the user named serves grey images; colour ones keep the shipped
    colour model (a grey net run band by band would ignore their colour noise), or the grey
    net band by band where no colour model ships."""
    from daguerre.models.loading import load_model
    from daguerre.models.registry import default_for

    colour = default_for("denoise", in_channels=3)
    if colour is None:
        return grey
    return denoise_choice(LearnedOperator("denoise", load_model(colour, device=device)), grey)


def _upscale_operator(
    user_op: LearnedOperator | None, scales: tuple[int, ...], device: str
) -> Operator:
    """The user's model serves its factor; shipped models the others; Lanczos the rest."""
    by_scale: dict[int, Operator] = {}
    if scales:
        from daguerre.models.loading import load_model
        from daguerre.models.registry import default_for

        for scale in scales:
            descriptor = default_for("upscale", scale=scale)
            assert descriptor is not None
            by_scale[scale] = LearnedOperator("upscale", load_model(descriptor, device=device))
    if user_op is not None:
        by_scale[int(user_op.model.scale)] = user_op
    return upscale_choice(by_scale) if by_scale else LanczosUpscale()


def _damage_detector(user_spec: str | None, device: str) -> ClassicalDamage | LearnedDamage:
    if user_spec == CLASSICAL_SPEC:
        return ClassicalDamage()
    if user_spec is not None:
        from daguerre.models.loading import load_user_model, parse_model_spec

        spec = parse_model_spec(f"{DAMAGE}={user_spec}")
        return LearnedDamage(load_user_model(DAMAGE, spec.source, spec.sha256, device))
    from daguerre.models.registry import default_for

    default = default_for(DAMAGE)
    if default is None:
        return ClassicalDamage()
    from daguerre.models.loading import load_model

    return LearnedDamage(load_model(default, device=device))

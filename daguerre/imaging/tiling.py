"""The one tiling module every pixel stage goes through, classical or learned.

An operator declares what it needs (`TileRequirements`: context, blend, size multiple, minimum,
scale); `plan_tiles` turns an image size into a grid of tiles; `apply_tiled` streams the tiles
from a source (anything with `read_region`) through the operator into a sink (anything with
`write`), holding only the tile in flight plus two thin blend bands. Pure numpy: no pyvips, no
Prefect; torch is only looked at to recognise a GPU out-of-memory error.

Geometry, along each axis (input pixels; the output is the same times `scale`):

    cells    [0, e1) [e1, e2) ... [e_{n-1}, L)      all `cell` long but the last (shorter)
    window   cell k plus the band [e_{k+1}, e_{k+1} + blend) it shares with cell k+1
    read     window plus `context` on both sides, aligned to `multiple_of`, clamped to the image

A tile's output is cropped to its window and weighted: 1 inside, a smoothstep ramp across the
band it shares with a neighbour (the two ramps sum to one). When `context` covers the
operator's receptive field every tile computes the untiled result exactly and the ramps blend
equal values; when it does not, the ramps hide the seam. Output cells are final as soon as
their tile is done (row-major order), and all cells but the last row/column have the same
size, so a sink can lay them out in a regular grid (pyvips `arrayjoin`).

Out of memory on a tile (torch CUDA OOM or MemoryError): the tile is split and retried, and
later tiles start at the size that worked. Any other error propagates.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

DEFAULT_TILE = 1024  # longest read side of a tile, input pixels
DEFAULT_BLEND = 8
# Overrides every operator's preferred tile size (memory-constrained workers, tests).
TILE_ENV = "DAGUERRE_TILE"


@dataclass(frozen=True)
class Region:
    """A rectangle of pixels: x, y of the top-left corner, width, height."""

    x: int
    y: int
    width: int
    height: int

    def scaled(self, s: int) -> Region:
        return Region(self.x * s, self.y * s, self.width * s, self.height * s)

    def shifted(self, dx: int, dy: int) -> Region:
        return Region(self.x + dx, self.y + dy, self.width, self.height)

    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices of this region in an array whose origin is (0, 0)."""
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)

    def relative_to(self, outer: Region) -> tuple[slice, slice]:
        """(rows, cols) slices of this region inside an array holding `outer`."""
        return self.shifted(-outer.x, -outer.y).slices()

    @property
    def area(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class TileRequirements:
    """What an operator needs from the tiler.

    context: input px a tile needs on each side beyond what it outputs (the receptive field
        radius); tiled equals untiled when this covers the operator's support.
    blend: input px over which neighbouring tiles' outputs cross-fade (0 = butt joints).
    multiple_of: tile starts (and sizes, except at the image's end) are multiples of it.
    minimum: smallest tile side the operator accepts (tiles grow towards it when the image
        allows; smaller images go through as they are and the operator pads).
    scale: output px per input px (1 for restoration, 2/4 for upscalers).
    tile: preferred longest read side in input px (memory and speed policy).
    whole: the operator cannot be tiled; it gets the whole image as one tile.
    """

    context: int = 0
    blend: int = DEFAULT_BLEND
    multiple_of: int = 1
    minimum: int = 1
    scale: int = 1
    tile: int = DEFAULT_TILE
    whole: bool = False

    def __post_init__(self) -> None:
        if self.context < 0 or self.blend < 0:
            raise ValueError(f"context and blend must be >= 0: {self}")
        if self.multiple_of < 1 or self.minimum < 1 or self.scale < 1 or self.tile < 1:
            raise ValueError(f"multiple_of, minimum, scale and tile must be >= 1: {self}")

    @property
    def smallest_tile(self) -> int:
        """The smallest read side that still leaves one pixel of cell per tile."""
        return max(2 * self.context + self.blend + 2 * (self.multiple_of - 1) + 1, self.minimum)


@dataclass(frozen=True)
class Span:
    """One tile along one axis (input pixels): the cell it finalises, its window, its read."""

    cell_start: int
    cell_end: int
    window_end: int  # cell_end + blend, clamped to the image (cell_end for the last tile)
    read_start: int
    read_end: int


@dataclass(frozen=True)
class Tile:
    """One tile: grid position and its regions, in input pixels of the whole image."""

    row: int
    col: int
    read: Region  # pixels handed to the operator
    window: Region  # area whose output this tile contributes to
    cell: Region  # area this tile finalises

    def shifted(self, dx: int, dy: int) -> Tile:
        return replace(
            self,
            read=self.read.shifted(dx, dy),
            window=self.window.shifted(dx, dy),
            cell=self.cell.shifted(dx, dy),
        )


def _align_down(v: int, m: int) -> int:
    return (v // m) * m


def _align_up(v: int, m: int) -> int:
    return -(-v // m) * m


def plan_axis(length: int, req: TileRequirements, tile: int | None = None) -> tuple[Span, ...]:
    """Tiles along one axis of `length` px with reads of at most `tile` px (req.tile default).

    Cells are all `ceil(length / n)` long except the last, which is shorter by less than n px
    (uniform cells make a regular output grid); n is the fewest tiles whose reads fit.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    tile = req.tile if tile is None else tile
    m, c, b = req.multiple_of, req.context, req.blend
    if req.whole or length <= tile:
        n = 1
    else:
        # A read holds context + cell + blend + context, plus up to m - 1 px of alignment at
        # each end.
        usable = tile - 2 * c - b - 2 * (m - 1)
        if usable < max(b, 1):
            raise ValueError(
                f"tile of {tile} px is too small for context {c}, blend {b} and multiple of {m}"
                f" (needs at least {req.smallest_tile + b} px)"
            )
        n = math.ceil(length / usable)
    cell = math.ceil(length / n)
    n = math.ceil(length / cell)  # never an empty last cell
    spans = []
    for k in range(n):
        start, end = k * cell, min((k + 1) * cell, length)
        window_end = length if k == n - 1 else min(end + b, length)
        read_start = _align_down(max(0, start - c), m)
        read_end = min(_align_up(window_end + c, m), length)
        short = req.minimum - (read_end - read_start)
        if short > 0:  # grow towards the minimum where the image allows
            read_end = min(length, read_end + short)
            read_start = _align_down(max(0, read_end - req.minimum), m)
        spans.append(Span(start, end, window_end, read_start, read_end))
    return tuple(spans)


@dataclass(frozen=True)
class TilePlan:
    """A grid of tiles covering a width x height image, in row-major order."""

    width: int
    height: int
    requirements: TileRequirements
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def scale(self) -> int:
        return self.requirements.scale

    @property
    def out_width(self) -> int:
        return self.width * self.scale

    @property
    def out_height(self) -> int:
        return self.height * self.scale

    @property
    def cell_width(self) -> int:
        """Width of every cell but the last column's (input px)."""
        return self.cols[0].cell_end - self.cols[0].cell_start

    @property
    def cell_height(self) -> int:
        return self.rows[0].cell_end - self.rows[0].cell_start

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def tile(self, row: int, col: int) -> Tile:
        ry, cx = self.rows[row], self.cols[col]
        return Tile(
            row=row,
            col=col,
            read=Region(
                cx.read_start,
                ry.read_start,
                cx.read_end - cx.read_start,
                ry.read_end - ry.read_start,
            ),
            window=Region(
                cx.cell_start,
                ry.cell_start,
                cx.window_end - cx.cell_start,
                ry.window_end - ry.cell_start,
            ),
            cell=Region(
                cx.cell_start,
                ry.cell_start,
                cx.cell_end - cx.cell_start,
                ry.cell_end - ry.cell_start,
            ),
        )

    def __iter__(self) -> Iterator[Tile]:
        for row in range(len(self.rows)):
            for col in range(len(self.cols)):
                yield self.tile(row, col)

    def read_pixels(self) -> int:
        """Input pixels read over all tiles (>= width * height: the overhead of context)."""
        return sum(t.read.area for t in self)


def plan_tiles(width: int, height: int, req: TileRequirements, tile: int | None = None) -> TilePlan:
    """Plan the tiles of a width x height image for an operator's requirements."""
    return TilePlan(width, height, req, plan_axis(height, req, tile), plan_axis(width, req, tile))


# --------------------------------------------------------------------------- blending


def ramp(length: int) -> np.ndarray:
    """Rising smoothstep weights of `length` samples in (0, 1); ramp + ramp[::-1] == 1."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _axis_bands(span: Span, prev: Span | None, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Output-scale weights of one tile along one axis over the ends of its window:
    (rising over the band shared with the previous tile, falling over the next's band).
    Everywhere between them the weight is one."""
    rising = ramp((prev.window_end - prev.cell_end) * s) if prev is not None else ramp(0)
    falling = 1.0 - ramp((span.window_end - span.cell_end) * s)
    return rising, falling


def _weigh(win: np.ndarray, ys: tuple[np.ndarray, np.ndarray], xs: tuple[np.ndarray, np.ndarray]):
    """Multiply the window's blend bands by their weights, in place (corners get both)."""
    (top, bottom), (left, right) = ys, xs
    if top.size:
        win[: top.size] *= top[:, None, None]
    if bottom.size:
        win[win.shape[0] - bottom.size :] *= bottom[:, None, None]
    if left.size:
        win[:, : left.size] *= left[None, :, None]
    if right.size:
        win[:, win.shape[1] - right.size :] *= right[None, :, None]


# --------------------------------------------------------------------------- sources, sinks


class RegionSource(Protocol):
    """Pixels readable by rectangle: float32 (h, w, bands) in [0, 1]."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def bands(self) -> int: ...

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray: ...


class TileSink(Protocol):
    """Receives final output cells, each once, in row-major order of the tile grid."""

    def write(self, x: int, y: int, pixels: np.ndarray) -> None: ...


class ArraySource:
    """An in-memory image as a RegionSource (reads are views: operators must not write)."""

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3:
            raise ValueError(f"pixels must be (H, W, C), got {pixels.shape}")
        self.pixels = pixels

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def bands(self) -> int:
        return int(self.pixels.shape[2])

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if x < 0 or y < 0 or x + w > self.width or y + h > self.height:
            raise ValueError(f"region {(x, y, w, h)} outside {self.width}x{self.height}")
        return self.pixels[y : y + h, x : x + w]


class ArraySink:
    """Assembles the output in memory (small images, tests, OOM sub-tiles)."""

    def __init__(self, width: int, height: int, dtype: np.dtype | type = np.float32) -> None:
        self.width, self.height, self.dtype = width, height, np.dtype(dtype)
        self.pixels: np.ndarray | None = None

    def write(self, x: int, y: int, pixels: np.ndarray) -> None:
        if self.pixels is None:
            if pixels.shape[:2] == (self.height, self.width) and pixels.dtype == self.dtype:
                self.pixels = pixels  # one cell is the whole output: the tiler's own array
                return
            # Cells cover the output exactly once: no need to clear it first.
            self.pixels = np.empty((self.height, self.width, *pixels.shape[2:]), self.dtype)
        self.pixels[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels

    def result(self) -> np.ndarray:
        if self.pixels is None:
            raise RuntimeError("nothing was written")
        return self.pixels


# --------------------------------------------------------------------------- running


TileFn = Callable[[np.ndarray, Tile], np.ndarray]


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU (torch CUDA) or host out-of-memory error: worth retrying on a smaller tile."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass
class TileStats:
    """What a tiled run did: tiles run, OOM splits, input px read, smallest tile used."""

    tiles: int = 0
    splits: int = 0
    read_pixels: int = 0
    tile_limit: int | None = None  # longest read side that fit after an OOM, if any
    extra: dict[str, float] = field(default_factory=dict)


class _Runner:
    def __init__(self, fn: TileFn, req: TileRequirements, stats: TileStats) -> None:
        self.fn, self.req, self.stats = fn, req, stats

    def run(self, pixels: np.ndarray, tile: Tile) -> np.ndarray:
        """fn on one tile; on OOM split it (recursively) and blend the pieces."""
        limit = self.stats.tile_limit
        longest = max(tile.read.width, tile.read.height)
        if limit is None or longest <= limit or self.req.whole:
            try:
                out = self.fn(pixels, tile)
                self.stats.tiles += 1
                return out
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
                if not is_out_of_memory(exc):
                    raise
                # Halve, but not below the smallest tile that still makes progress.
                smaller = max(longest // 2, self.req.smallest_tile + self.req.blend)
                if self.req.whole or smaller >= longest:
                    raise
                self._free()
                self.stats.splits += 1
                self.stats.tile_limit = smaller if limit is None else min(limit, smaller)
        # Split: the tile's pixels are an image of their own, tiled with the same requirements.
        sub_plan = plan_tiles(
            tile.read.width, tile.read.height, self.req, tile=self.stats.tile_limit
        )
        sink = ArraySink(sub_plan.out_width, sub_plan.out_height)
        _apply(
            ArraySource(pixels),
            lambda p, t: self.run(p, t.shifted(tile.read.x, tile.read.y)),
            sub_plan,
            sink,
        )
        return sink.result()

    @staticmethod
    def _free() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _apply(source: RegionSource, fn: TileFn, plan: TilePlan, sink: TileSink) -> None:
    s = plan.scale
    out_w = plan.out_width
    band_cur: np.ndarray | None = None  # previous row's contributions to this row's top band
    for iy, ry in enumerate(plan.rows):
        wy = _axis_bands(ry, plan.rows[iy - 1] if iy else None, s)
        last_row = iy == len(plan.rows) - 1
        band_next: np.ndarray | None = None
        left: np.ndarray | None = None  # previous tile's contributions to this tile's left band
        for ix, cx in enumerate(plan.cols):
            tile = plan.tile(iy, ix)
            pixels = source.read_region(*_xywh(tile.read))
            out = fn(pixels, tile)
            expected = (tile.read.height * s, tile.read.width * s)
            if out.ndim != 3 or out.shape[:2] != expected:
                raise ValueError(
                    f"operator returned {out.shape} for a {tile.read.height}x{tile.read.width} "
                    f"tile at scale {s}; expected {expected} x channels"
                )
            rows, cols = tile.window.scaled(s).relative_to(tile.read.scaled(s))
            acc = out[rows, cols]
            # Weighed and summed in place, unless that would write into the source's pixels.
            if (
                acc.dtype != np.float32
                or not acc.flags.writeable
                or np.may_share_memory(out, pixels)
            ):
                acc = acc.astype(np.float32, copy=True)
            _weigh(acc, wy, _axis_bands(cx, plan.cols[ix - 1] if ix else None, s))
            cell = tile.cell.scaled(s)
            ch, cw = cell.height, cell.width
            if band_cur is not None:
                acc[: band_cur.shape[0], :cw] += band_cur[:, cell.x : cell.x + cw]
            if left is not None:
                acc[:, : left.shape[1]] += left
            sink.write(cell.x, cell.y, acc[:ch, :cw])
            left = acc[:, cw:].copy() if acc.shape[1] > cw else None
            if not last_row and acc.shape[0] > ch:
                if band_next is None:
                    band_next = np.zeros((acc.shape[0] - ch, out_w, acc.shape[2]), np.float32)
                band_next[:, cell.x : cell.x + cw] += acc[ch:, :cw]
        band_cur = band_next


def _xywh(r: Region) -> tuple[int, int, int, int]:
    return r.x, r.y, r.width, r.height


def apply_tiled(
    source: RegionSource,
    fn: TileFn,
    req: TileRequirements,
    sink: TileSink,
    *,
    tile: int | None = None,
) -> TileStats:
    """Run `fn` over `source` tile by tile into `sink`; returns what it did.

    fn(pixels, tile) gets the tile's read region (float32 (h, w, bands), a view it must not
    modify) and returns (h * scale, w * scale, channels). The sink receives each output cell
    once, final, in row-major order. `tile` (else $DAGUERRE_TILE, else req.tile) bounds the
    longest read side. Only the tile in flight and two blend bands (blend *
    scale rows of the output width) are held in memory.
    """
    if tile is None and os.environ.get(TILE_ENV):
        # Never so small that context and alignment leave tiles next to no cell.
        tile = max(int(os.environ[TILE_ENV]), 2 * req.smallest_tile + req.blend)
    plan = plan_tiles(source.width, source.height, req, tile)
    stats = TileStats(read_pixels=plan.read_pixels())
    _apply(source, _Runner(fn, req, stats).run, plan, sink)
    return stats


def tile_array(
    pixels: np.ndarray, fn: TileFn, req: TileRequirements, *, tile: int | None = None
) -> np.ndarray:
    """`apply_tiled` on an in-memory image into an in-memory result (float32)."""
    source = ArraySource(pixels)
    sink = ArraySink(source.width * req.scale, source.height * req.scale)
    apply_tiled(source, fn, req, sink, tile=tile)
    return sink.result()


def iter_blocks(source: RegionSource, size: int) -> Iterator[tuple[Region, np.ndarray]]:
    """Non-overlapping blocks of at most size x size px covering the source, row-major.

    For statistics over a whole image (histograms) one block at a time.
    """
    for y in range(0, source.height, size):
        for x in range(0, source.width, size):
            w, h = min(size, source.width - x), min(size, source.height - y)
            yield Region(x, y, w, h), source.read_region(x, y, w, h)


def seam_profile(pixels: np.ndarray, axis: int = 1) -> np.ndarray:
    """Mean absolute second difference across `axis` (columns by default), per position.

    A seam shows as a spike at the tile border; on a smooth gradient the profile is flat.
    """
    lum = np.asarray(pixels, np.float64)
    if lum.ndim == 3:
        lum = lum.mean(axis=2)
    d2 = np.abs(np.diff(lum, n=2, axis=axis))
    return d2.mean(axis=1 - axis)

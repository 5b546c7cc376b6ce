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

Writing in place: an operator whose tile function is a `TileWriter` (it fills an array it is
handed) and that needs no blend can have each tile's output written straight into the
assembled image when the sink is a `RegionSink` (one that lends views of its pixels, like
`ArraySink`), which saves a copy of every output pixel. The tile's whole output, context
included, lands in the sink; the margin above and left of its cell, which holds earlier tiles'
final cells, is put back afterwards (the margins below and right are written again by later
tiles); the writer's pointwise `finish` (clipping) then runs once per row of tiles over whole
output rows. Other sinks (on disk) get cells through `write` as before.

Out of memory on a tile (torch CUDA OOM or MemoryError): the tile is split and retried, and
later tiles start at the size that worked. Any other error propagates.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

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
    tile_width: preferred read width, for operators that run faster on wide reads (row
        strips); None means `tile`. An explicit tile bound (DAGUERRE_TILE, out-of-memory
        splits) applies to both sides.
    whole: the operator cannot be tiled; it gets the whole image as one tile.
    """

    context: int = 0
    blend: int = DEFAULT_BLEND
    multiple_of: int = 1
    minimum: int = 1
    scale: int = 1
    tile: int = DEFAULT_TILE
    tile_width: int | None = None
    whole: bool = False

    def __post_init__(self) -> None:
        if self.context < 0 or self.blend < 0:
            raise ValueError(f"context and blend must be >= 0: {self}")
        if self.multiple_of < 1 or self.minimum < 1 or self.scale < 1 or self.tile < 1:
            raise ValueError(f"multiple_of, minimum, scale and tile must be >= 1: {self}")
        if self.tile_width is not None and self.tile_width < 1:
            raise ValueError(f"tile_width must be >= 1: {self}")

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
    """Plan the tiles of a width x height image for an operator's requirements; `tile`, when
    given, bounds both read sides (else req.tile the height, req.tile_width or req.tile the
    width)."""
    tile_x = tile if tile is not None else (req.tile_width or req.tile)
    return TilePlan(width, height, req, plan_axis(height, req, tile), plan_axis(width, req, tile_x))


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


@runtime_checkable
class RegionSink(TileSink, Protocol):
    """A sink that can also lend a writable view of its output, for tiles written in place."""

    def region(self, x: int, y: int, w: int, h: int, channels: int) -> np.ndarray | None:
        """Float32 (h, w, channels) view of output px [y, y + h) x [x, x + w), or None when
        the sink cannot lend one (cells then come through `write`). What the tiler leaves in
        a cell's pixels is that cell's output, as if written."""
        ...


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

    def region(self, x: int, y: int, w: int, h: int, channels: int) -> np.ndarray | None:
        """A view of the output to write a tile into (float32 sinks only)."""
        if x < 0 or y < 0 or x + w > self.width or y + h > self.height:
            raise ValueError(f"region {(x, y, w, h)} outside {self.width}x{self.height}")
        if self.dtype != np.float32:
            return None
        if self.pixels is None:
            # Cells cover the output exactly once: no need to clear it first.
            self.pixels = np.empty((self.height, self.width, channels), self.dtype)
        elif self.pixels.shape[2:] != (channels,):
            return None
        return self.pixels[y : y + h, x : x + w]

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
WriteFn = Callable[[np.ndarray, Tile, np.ndarray], None]
FinishFn = Callable[[np.ndarray], object]


class TileWriter:
    """A tile function that writes its output into an array it is handed, rather than
    returning a new one, so the tiler can have it write into the sink's image.

    write(pixels, tile, out): pixels as for a `TileFn`; out is float32 (h * scale,
    w * scale, channels), channels defaulting to the input's bands. out may be a strided
    view into a larger image (rows of whole pixels, as OpenCV takes for `dst`); write must
    fill every element and must not read it. Called as a plain `TileFn` (tilers of blended
    tiles, sinks that lend no view, OOM sub-tiles) it writes into one scratch array it
    reuses, valid until the next call: the tiler copies each tile's output away before it
    asks for the next.

    finish(out), optional: a pointwise, idempotent step on output pixels done in place
    (clipping to [0, 1]). Written in place, it runs once per row of tiles on the sink's
    rows of final cells, contiguous memory where a pass costs about half what it does over
    tile-shaped views; otherwise on each tile's output after `write`.
    """

    def __init__(
        self,
        write: WriteFn,
        scale: int,
        channels: int | None = None,
        finish: FinishFn | None = None,
    ) -> None:
        if scale < 1 or (channels is not None and channels < 1):
            raise ValueError(f"scale and channels must be >= 1, got {scale}, {channels}")
        self.write, self.scale, self.channels, self.finish = write, scale, channels, finish
        self._scratch: np.ndarray | None = None

    def out_channels(self, pixels: np.ndarray) -> int:
        return self.channels or int(pixels.shape[2])

    def __call__(self, pixels: np.ndarray, tile: Tile) -> np.ndarray:
        h, w = pixels.shape[:2]
        shape = (h * self.scale, w * self.scale, self.out_channels(pixels))
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = None  # let the old one go before the new one is allocated
            self._scratch = np.empty(shape, np.float32)
        self.write(pixels, tile, self._scratch)
        if self.finish is not None:
            self.finish(self._scratch)
        return self._scratch


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
    in_place: int = 0  # tiles a TileWriter wrote straight into the sink (counted in tiles)
    extra: dict[str, float] = field(default_factory=dict)


class _Runner:
    def __init__(self, fn: TileFn, req: TileRequirements, stats: TileStats) -> None:
        self.fn, self.req, self.stats = fn, req, stats
        self.writer = fn if isinstance(fn, TileWriter) else None

    def _fits(self, tile: Tile) -> bool:
        limit = self.stats.tile_limit
        return limit is None or max(tile.read.width, tile.read.height) <= limit or self.req.whole

    def _shrink(self, tile: Tile, exc: Exception) -> bool:
        """After `exc` on `tile`: lower the tile limit and say True when it is an OOM worth
        splitting for, else False (the caller re-raises)."""
        if not is_out_of_memory(exc):
            return False
        # Halve, but not below the smallest tile that still makes progress.
        longest = max(tile.read.width, tile.read.height)
        smaller = max(longest // 2, self.req.smallest_tile + self.req.blend)
        if self.req.whole or smaller >= longest:
            return False
        self._free()
        self.stats.splits += 1
        limit = self.stats.tile_limit
        self.stats.tile_limit = smaller if limit is None else min(limit, smaller)
        return True

    def run(self, pixels: np.ndarray, tile: Tile) -> np.ndarray:
        """fn on one tile; on OOM split it (recursively) and blend the pieces."""
        if self._fits(tile):
            try:
                out = self.fn(pixels, tile)
                self.stats.tiles += 1
                return out
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
                if not self._shrink(tile, exc):
                    raise
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

    def write_in_place(self, pixels: np.ndarray, tile: Tile, s: int, sink: TileSink) -> int:
        """The writer's output for one tile straight into the sink's pixels (tiles without
        blend only); returns its channels, or 0 when the sink lends no view, the tile is above
        the size an earlier OOM left or runs out of memory now: it then goes through `run`."""
        writer = self.writer
        if writer is None or not isinstance(sink, RegionSink) or not self._fits(tile):
            return 0
        channels = writer.out_channels(pixels)
        read, cell = tile.read.scaled(s), tile.cell.scaled(s)
        view = sink.region(*_xywh(read), channels)
        if view is None:
            return 0
        # The output of the read's margin is inexact near its edge (the operator saw no
        # context there), and the margin above the cell and left of it holds earlier tiles'
        # final cells: keep those pixels and put them back. Below and right, later tiles
        # write their own cells.
        top, left = cell.y - read.y, cell.x - read.x
        above = view[:top].copy() if top else None
        beside = view[top : top + cell.height, :left].copy() if left else None
        try:
            writer.write(pixels, tile, view)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
            if not self._shrink(tile, exc):
                raise
            return 0
        finally:
            if above is not None:
                view[:top] = above
            if beside is not None:
                view[top : top + cell.height, :left] = beside
        self.stats.tiles += 1
        self.stats.in_place += 1
        return channels

    def finish_rows(self, sink: TileSink, y: int, height: int, width: int, channels: int) -> None:
        """The writer's `finish` on output rows [y, y + height) of the sink, once final."""
        finish = None if self.writer is None else self.writer.finish
        if finish is not None and isinstance(sink, RegionSink):
            rows = sink.region(0, y, width, height, channels)
            if rows is not None:
                finish(rows)

    @staticmethod
    def _free() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _apply(
    source: RegionSource,
    fn: TileFn,
    plan: TilePlan,
    sink: TileSink,
    runner: _Runner | None = None,
) -> None:
    """Tiles of `plan` through fn into sink; with a runner whose fn is a TileWriter, unblended
    tiles go straight into a RegionSink where it lends a view."""
    s = plan.scale
    out_w = plan.out_width
    # Without blend there are no bands to carry: a cell is final as the writer leaves it.
    placer = runner if runner is not None and plan.requirements.blend == 0 else None
    band_cur: np.ndarray | None = None  # previous row's contributions to this row's top band
    for iy, ry in enumerate(plan.rows):
        in_place = 0  # output channels of this row's tiles written in place (0: none)
        wy = _axis_bands(ry, plan.rows[iy - 1] if iy else None, s)
        last_row = iy == len(plan.rows) - 1
        band_next: np.ndarray | None = None
        left: np.ndarray | None = None  # previous tile's contributions to this tile's left band
        for ix, cx in enumerate(plan.cols):
            tile = plan.tile(iy, ix)
            pixels = source.read_region(*_xywh(tile.read))
            if placer is not None:
                written = placer.write_in_place(pixels, tile, s, sink)
                if written:
                    in_place = written
                    continue
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
        if placer is not None and in_place:
            # This row's cells are final: finish them in one pass over whole output rows.
            y0, y1 = ry.cell_start * s, ry.cell_end * s
            placer.finish_rows(sink, y0, y1 - y0, out_w, in_place)


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
    scale rows of the output width) are held in memory. A `TileWriter` fn with req.blend 0
    writes into a `RegionSink`'s pixels in place (stats.in_place counts those tiles).
    """
    if isinstance(fn, TileWriter) and fn.scale != req.scale:
        raise ValueError(f"TileWriter scale {fn.scale} != requirements scale {req.scale}")
    if tile is None and os.environ.get(TILE_ENV):
        # Never so small that context and alignment leave tiles next to no cell.
        tile = max(int(os.environ[TILE_ENV]), 2 * req.smallest_tile + req.blend)
    plan = plan_tiles(source.width, source.height, req, tile)
    stats = TileStats(read_pixels=plan.read_pixels())
    runner = _Runner(fn, req, stats)
    _apply(source, runner.run, plan, sink, runner)
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

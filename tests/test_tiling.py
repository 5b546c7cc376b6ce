"""The tiling module: geometry on awkward sizes, exact tiling of every stage, seams, OOM."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from daguerre.imaging import classical
from daguerre.imaging.tiling import (
    ArraySink,
    ArraySource,
    TileRequirements,
    TileWriter,
    apply_tiled,
    plan_axis,
    plan_tiles,
    ramp,
    seam_profile,
    tile_array,
)
from daguerre.operators import (
    AutoTone,
    ChromaTransfer,
    LanczosUpscale,
    LearnedOperator,
    NlmDenoise,
    StageContext,
    TeleaInpaint,
    run_operator,
)


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo crop with noise: texture, edges and flat areas, float32 (h, w, 3)."""
    photo = data.astronaut()[:h, :w].astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    return np.clip(photo + rng.normal(0, 0.04, photo.shape), 0, 1).astype(np.float32)


def _scratches(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 3 + 2, 5 : w - 5] = True  # a long horizontal scratch across tiles
    mask[10 : h - 10, w // 2 : w // 2 + 3] = True  # a vertical one
    mask[h - 20 : h - 17, 30:33] = True  # a speck
    return mask


# ----------------------------------------------------------------------------- geometry


def _check_axis(length: int, req: TileRequirements, tile: int) -> None:
    spans = plan_axis(length, req, tile)
    assert spans[0].cell_start == 0 and spans[-1].cell_end == length
    sizes = [s.cell_end - s.cell_start for s in spans]
    assert all(size >= 1 for size in sizes)
    assert all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.cell_end == b.cell_start
        assert a.window_end == min(a.cell_end + req.blend, length)
    assert spans[-1].window_end == length
    for s in spans:
        assert 0 <= s.read_start <= max(0, s.cell_start - req.context)
        assert s.read_end >= min(length, s.window_end + req.context)
        assert s.read_end <= length
        assert s.read_start % req.multiple_of == 0
        if s.read_end < length:
            assert (s.read_end - s.read_start) % req.multiple_of == 0
        if length >= req.minimum:
            assert s.read_end - s.read_start >= req.minimum
        if len(spans) > 1 and length >= req.minimum and req.minimum <= tile:
            assert s.read_end - s.read_start <= tile
    if len(spans) > 1:  # the fewest tiles: one fewer would not fit the reads
        usable = tile - 2 * req.context - req.blend - 2 * (req.multiple_of - 1)
        assert len(spans) <= -(-length // usable)


@pytest.mark.parametrize("length", [1, 2, 17, 33, 63, 64, 65, 97, 127, 251, 997, 1009, 4093, 10007])
@pytest.mark.parametrize(
    "req, tile",
    [
        (TileRequirements(), 64),
        (TileRequirements(context=13, blend=8), 64),
        (TileRequirements(context=16, blend=16, multiple_of=8, minimum=32), 128),
        (TileRequirements(context=4, blend=0, scale=4), 40),
        (TileRequirements(context=2, blend=4, multiple_of=4, minimum=100), 256),
    ],
)
def test_plan_axis_on_awkward_lengths(length: int, req: TileRequirements, tile: int) -> None:
    _check_axis(length, req, tile)


@pytest.mark.parametrize("width, height", [(1, 1), (17, 33), (33, 17), (997, 3), (1, 1009)])
def test_plan_covers_the_image_once(width: int, height: int) -> None:
    req = TileRequirements(context=5, blend=6, multiple_of=2)
    plan = plan_tiles(width, height, req, tile=48)
    covered = np.zeros((height, width), np.int32)
    for t in plan:
        rows, cols = t.cell.slices()
        covered[rows, cols] += 1
        assert t.read.x <= t.window.x and t.read.y <= t.window.y
        assert t.read.x + t.read.width >= t.window.x + t.window.width
    assert (covered == 1).all()


def test_a_tile_larger_than_the_image_is_one_tile() -> None:
    plan = plan_tiles(17, 33, TileRequirements(context=16, blend=16), tile=4096)
    assert len(plan) == 1
    (t,) = list(plan)
    assert (t.read.width, t.read.height) == (17, 33) and t.cell == t.read == t.window


def test_whole_operators_get_one_tile_and_too_small_tiles_are_refused() -> None:
    assert len(plan_tiles(5000, 3000, TileRequirements(whole=True), tile=64)) == 1
    with pytest.raises(ValueError, match="too small"):
        plan_tiles(500, 500, TileRequirements(context=30, blend=8), tile=64)


def test_ramps_sum_to_one() -> None:
    for n in (1, 2, 7, 32):
        r = ramp(n)
        assert np.all((r > 0) & (r < 1))
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_identity_through_blended_tiles_is_the_identity(scale: int) -> None:
    img = np.random.default_rng(0).random((101, 67, 3)).astype(np.float32)
    req = TileRequirements(context=3, blend=10, scale=scale)

    def nearest(p, t):
        return np.repeat(np.repeat(p, scale, axis=0), scale, axis=1)

    out = tile_array(img, nearest, req, tile=40)
    np.testing.assert_allclose(out, nearest(img, None), atol=2e-6)


def test_sink_gets_each_cell_once_in_a_regular_grid() -> None:
    writes: list[tuple[int, int, tuple[int, ...]]] = []

    class Recorder(ArraySink):
        def write(self, x, y, pixels):
            writes.append((x, y, pixels.shape))
            super().write(x, y, pixels)

    img = np.random.default_rng(1).random((70, 95, 1)).astype(np.float32)
    req = TileRequirements(context=2, blend=4, scale=2)
    sink = Recorder(190, 140)
    stats = apply_tiled(
        ArraySource(img), lambda p, t: np.repeat(np.repeat(p, 2, 0), 2, 1), req, sink, tile=30
    )
    plan = plan_tiles(95, 70, req, tile=30)
    assert stats.tiles == len(plan) == len(writes)
    assert [(x, y) for x, y, _ in writes] == sorted(
        {(x, y) for x, y, _ in writes}, key=lambda p: (p[1], p[0])
    )
    cw, ch = plan.cell_width * 2, plan.cell_height * 2
    for x, y, shape in writes:
        assert x % cw == 0 and y % ch == 0
        assert shape[1] == cw or x + shape[1] == 190
        assert shape[0] == ch or y + shape[0] == 140


# ----------------------------------------------------------------------------- every stage


def _tiled_vs_whole(op, img, params, ctx, tile):
    from daguerre.imaging.tiling import ArraySink

    scale = int(params.get("scale", 1))
    sink = ArraySink(img.shape[1] * scale, img.shape[0] * scale)
    run = run_operator(op, ArraySource(img), sink, params, ctx, tile=tile)
    assert run.stats.tiles > 4  # really tiled
    return sink.result(), run


def test_nlm_tiled_equals_untiled() -> None:
    img = _picture(150, 170)
    tiled, run = _tiled_vs_whole(NlmDenoise(), img, {"sigma": 10.0}, StageContext(bit_depth=8), 80)
    whole = classical.nlm_denoise(img, 10.0, bit_depth=8)
    assert np.abs(tiled - whole).max() < 1 / 255
    assert np.abs(tiled - whole).max() < 1e-5  # in fact exact: the context covers the search
    assert run.parameters["search_window"] == classical.NLM_SEARCH_WINDOW


def test_telea_tiled_equals_untiled() -> None:
    img = _picture(160, 190)
    mask = _scratches(160, 190)
    ctx = StageContext(damage_mask=mask)
    tiled, run = _tiled_vs_whole(TeleaInpaint(), img, {"radius": 3}, ctx, 96)
    whole = classical.telea_inpaint(img, mask, radius=3)
    assert np.abs(tiled - whole).max() < 1 / 255
    assert run.metrics["masked_pixels"] == int(mask.sum())
    # Unmasked pixels come back as they were (to float rounding of the blend weights, far
    # below one 16-bit step).
    np.testing.assert_allclose(tiled[~mask], img[~mask], atol=1e-6)


def test_auto_tone_tiled_equals_untiled() -> None:
    img = 0.25 + 0.4 * _picture(130, 150)
    tiled, run = _tiled_vs_whole(AutoTone(), img, {}, StageContext(), 40)
    whole = classical.auto_tone(img)
    assert np.abs(tiled - whole).max() < 1 / 255
    assert run.parameters["applied"]


@pytest.mark.parametrize("scale", [2, 4])
def test_lanczos_tiled_equals_untiled(scale: int) -> None:
    img = _picture(90, 77)
    tiled, _ = _tiled_vs_whole(LanczosUpscale(), img, {"scale": scale}, StageContext(), 40)
    whole = classical.lanczos_upscale(img, scale)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 1e-5


class _NoViews:
    """A sink that lends no views (like the on-disk one): cells come through write."""

    def __init__(self, width: int, height: int) -> None:
        self.inner = ArraySink(width, height)
        self.writes = 0

    def write(self, x, y, pixels):
        self.writes += 1
        self.inner.write(x, y, pixels)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [(61, 83, 24), (97, 41, 31), (30, 200, 57), (1, 37, 16), (45, 29, 4096)],
)
def test_lanczos_writes_tiles_in_place_exactly(scale: int, h: int, w: int, tile: int) -> None:
    img = np.random.default_rng(h * w).random((h, w, 3), dtype=np.float32)  # rings: clipping
    whole = classical.lanczos_upscale(img, scale)
    params, ctx = {"scale": scale}, StageContext()
    sink = ArraySink(w * scale, h * scale)
    run = run_operator(LanczosUpscale(), ArraySource(img), sink, params, ctx, tile=tile)
    req = LanczosUpscale().prepare(ArraySource(img), params, ctx).requirements
    n = len(plan_tiles(w, h, req, tile=tile))
    assert run.stats.tiles == run.stats.in_place == n  # every tile went straight into the sink
    assert (n == 1) == (tile > max(h, w))
    assert sink.result().shape == whole.shape
    assert np.abs(sink.result() - whole).max() < 1e-5
    # A sink without views gets the same pixels through write, cell by cell.
    other = _NoViews(w * scale, h * scale)
    run = run_operator(LanczosUpscale(), ArraySource(img), other, params, ctx, tile=tile)
    assert run.stats.in_place == 0 and other.writes == run.stats.tiles == n
    np.testing.assert_array_equal(other.inner.result(), sink.result())


def test_lanczos_in_place_on_one_band_and_through_apply() -> None:
    img = _picture(53, 71).mean(axis=2, keepdims=True)
    got = LanczosUpscale().apply(img, {"scale": 2}, StageContext()).pixels
    np.testing.assert_array_equal(got, classical.lanczos_upscale(img, 2))
    sink = ArraySink(142, 106)
    run = run_operator(
        LanczosUpscale(), ArraySource(img), sink, {"scale": 2}, StageContext(), tile=20
    )
    assert run.stats.in_place == run.stats.tiles > 4
    assert np.abs(sink.result() - classical.lanczos_upscale(img, 2)).max() < 1e-5


def test_a_writer_that_runs_out_of_memory_in_place_is_split() -> None:
    img = _picture(90, 110)

    def write(p, t, out):
        if max(p.shape[:2]) > 30 and (t.row, t.col) == (1, 1):  # too big for memory
            raise MemoryError("fake")
        classical.lanczos_upscale(p, 2, out=out, clip=False)

    def clip(out):
        np.clip(out, 0, 1, out=out)

    req = TileRequirements(context=6, blend=0, scale=2)
    sink = ArraySink(220, 180)
    stats = apply_tiled(ArraySource(img), TileWriter(write, 2, finish=clip), req, sink, tile=40)
    assert stats.splits == 1 and stats.tile_limit is not None and stats.tile_limit < 40
    assert 0 < stats.in_place < stats.tiles  # the rest went through the split, via write
    assert np.abs(sink.result() - classical.lanczos_upscale(img, 2)).max() < 1e-5
    with pytest.raises(ValueError, match="scale"):
        apply_tiled(ArraySource(img), TileWriter(write, 4), req, ArraySink(220, 180))


def test_in_place_margins_do_not_overwrite_neighbouring_cells() -> None:
    """In place, a tile's margin output lands on its neighbours' cells and is put back."""
    img = np.random.default_rng(3).random((40, 50, 1), dtype=np.float32)

    def write(p, t, out):  # a deliberately wrong margin: the tile index everywhere
        out[...] = t.row * 10 + t.col

    req = TileRequirements(context=5, blend=0)
    out = tile_array(img, TileWriter(write, 1), req, tile=20)
    plan = plan_tiles(50, 40, req, tile=20)
    for t in plan:
        assert (out[t.cell.slices()] == t.row * 10 + t.col).all()


def _tiny_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    from daguerre.models.arch import denoise as denoise_arch
    from daguerre.models.loading import load_user_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = denoise_arch.FFDNetLike(in_channels=3, channels=16, layers=4)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return load_user_model("denoise", str(path), None, "cpu")


def test_learned_model_tiled_equals_untiled(tmp_path) -> None:
    model = _tiny_model(tmp_path)
    img = _picture(150, 173)
    op = LearnedOperator("denoise", model)
    tiled, run = _tiled_vs_whole(op, img, {"sigma": 12.0}, StageContext(), 96)
    whole = model.run(img, noise_sigma=12.0)
    assert np.abs(tiled - whole).max() < 1 / 255
    assert run.parameters["sigma"] == 12.0


def test_chroma_transfer_tiles_exactly() -> None:
    grey = _picture(120, 140).mean(axis=2, keepdims=True)
    view = np.random.default_rng(0).random((30, 35, 3)).astype(np.float32)
    transfer = ChromaTransfer(view, 140, 120)
    req = TileRequirements(blend=0)
    whole = tile_array(grey, transfer.apply, req, tile=1000)
    tiled = tile_array(grey, transfer.apply, req, tile=37)
    assert whole.shape == (120, 140, 3)
    assert np.abs(tiled - whole).max() < 1e-5
    # The lightness is the original's; only the chroma came from the view.
    import cv2

    light = cv2.cvtColor(whole, cv2.COLOR_RGB2Lab)[:, :, 0]
    source = cv2.cvtColor(np.repeat(grey, 3, axis=2), cv2.COLOR_RGB2Lab)[:, :, 0]
    assert np.abs(light - source).mean() < 1.0


# ----------------------------------------------------------------------------- seams


def test_no_step_at_tile_borders_on_a_gradient() -> None:
    h, w = 64, 400
    gradient = np.tile(np.linspace(0.1, 0.9, w, dtype=np.float32), (h, 1))[:, :, None]
    req = TileRequirements(context=0, blend=32)

    # A deliberately tile-dependent operator: each tile brightens by its column index.
    def shifting(p, t):
        return p + np.float32(0.01 * t.col)

    hard = tile_array(gradient, shifting, TileRequirements(blend=0), tile=100)
    soft = tile_array(gradient, shifting, req, tile=100)
    interior = np.median(seam_profile(gradient))
    assert seam_profile(hard).max() > 0.005  # without blending: a visible 0.01 step
    assert seam_profile(soft).max() < interior + 1e-4  # blended: the curvature of a smoothstep

    # An exact operator leaves no trace at all.
    up = tile_array(
        gradient,
        lambda p, t: classical.lanczos_upscale(p, 2),
        TileRequirements(context=6, scale=2),
        tile=64,
    )
    whole = classical.lanczos_upscale(gradient, 2)
    assert np.abs(seam_profile(up) - seam_profile(whole)).max() < 1e-5


# ----------------------------------------------------------------------------- OOM


def test_out_of_memory_splits_the_tile_and_retries() -> None:
    torch = pytest.importorskip("torch")
    img = _picture(140, 150)
    seen: list[int] = []

    def fragile(p, t):
        seen.append(max(p.shape[:2]))
        if max(p.shape[:2]) > 64:
            raise torch.cuda.OutOfMemoryError("fake CUDA OOM")
        return classical.nlm_denoise(p, 8.0)

    req = TileRequirements(context=15, blend=8)
    sink = ArraySink(150, 140)
    stats = apply_tiled(ArraySource(img), fragile, req, sink, tile=128)
    assert stats.splits >= 1 and stats.tile_limit is not None and stats.tile_limit <= 64
    assert max(seen) > 64 and seen[-1] <= 64
    # Later tiles start at the size that worked: one failed try, not one per tile.
    assert sum(s > 64 for s in seen) == 1
    whole = classical.nlm_denoise(img, 8.0)
    assert np.abs(sink.result() - whole).max() < 1e-5


def test_other_errors_propagate_and_oom_on_the_smallest_tile_too() -> None:
    torch = pytest.importorskip("torch")
    img = _picture(100, 100)

    def broken(p, t):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        tile_array(img, broken, TileRequirements(), tile=64)

    def always_oom(p, t):
        raise torch.cuda.OutOfMemoryError("fake CUDA OOM")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        tile_array(img, always_oom, TileRequirements(context=8, blend=8), tile=64)


def test_wide_tiles_make_row_strips_unless_a_bound_is_given() -> None:
    req = TileRequirements(context=4, blend=0, tile=100, tile_width=400)
    plan = plan_tiles(380, 250, req)
    assert len(plan.cols) == 1 and len(plan.rows) == 3  # full-width strips
    bounded = plan_tiles(380, 250, req, tile=100)
    assert len(bounded.cols) > 1  # DAGUERRE_TILE / out-of-memory bounds hold on both sides
    with pytest.raises(ValueError):
        TileRequirements(tile_width=0)

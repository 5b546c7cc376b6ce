"""Large-image machinery on small images: lazy masters, tiled intermediates, fidelity.

Tiles are forced small ($DAGUERRE_TILE) so a few-hundred-pixel image goes through the same
multi-tile code path as a 20,000 px scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile

from daguerre.config import RestoreConfig
from daguerre.imaging import classical
from daguerre.imaging.detect import damage_mask, detect
from daguerre.imaging.io import ImageDecodeError, decode
from daguerre.imaging.large import (
    MaskFile,
    TiffSink,
    access_pixels,
    detect_source,
    open_master,
    preservation_image,
    probe_file,
    write_preservation,
)
from daguerre.imaging.tiling import ArraySource
from daguerre.records import PIXEL_STAGES
from daguerre.tasks.io import derivative_key, split_page
from daguerre.tasks.stages import detect_stage, inspect_master, pixel_stage, store_stage

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Archive</dc:creator>'
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
)


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    image = pyvips.Image.black(8, 8, bands=3).copy(interpretation="srgb")
    return bytes(image.icc_export(output_profile="srgb").get("icc-profile-data"))


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth picture with noise and thin dark/bright scratches, float32 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.06 * np.sin(xx / 37) * np.cos(yy / 53) + 0.05 * (xx + yy) / (h + w)
    img = np.stack([base, base * 0.95 + 0.02, base * 0.9 + 0.04], axis=2)
    img += np.random.default_rng(seed).normal(0, 3 / 255, img.shape)
    img[h // 3 : h // 3 + 2, 10 : w - 10] = 0.02  # a long dark scratch across tiles
    img[20 : h - 20, w // 2 : w // 2 + 2] = 0.98  # and a bright one
    return np.clip(img, 0, 1).astype(np.float32)


def _save_tiff16(path: Path, pixels: np.ndarray, **fields) -> None:
    array = np.rint(pixels * 65535).astype(np.uint16)
    image = pyvips.Image.new_from_array(array).copy(interpretation="rgb16").copy()
    icc = fields.pop("icc", None)
    if icc is not None:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    if "xmp" in fields:
        image.set_type(pyvips.GValue.blob_type, "xmp-data", fields.pop("xmp"))
    ppi = fields.pop("ppi", None)
    if ppi:
        image = image.copy(xres=ppi / 25.4, yres=ppi / 25.4)
    image.tiffsave(str(path), tile=True, compression="deflate", resunit="inch")


# ----------------------------------------------------------------------------- sink, master


def test_tiff_sink_joins_uneven_cells_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for bands, fmt, top in ((3, "ushort", 65535), (1, "uchar", 255)):
        img = rng.random((300, 517, bands)).astype(np.float32)
        sink = TiffSink(tmp_path / f"cells-{fmt}", fmt)
        for y in range(0, 300, 128):
            for x in range(0, 517, 200):
                sink.write(x, y, img[y : y + 128, x : x + 200])
        out = sink.finish(tmp_path / f"joined-{fmt}.tif")
        assert not list((tmp_path / f"cells-{fmt}").iterdir())  # cells deleted
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            assert page.is_tiled and tif.is_bigtiff
            data = page.asarray().reshape(300, 517, bands)
        np.testing.assert_array_equal(data, np.rint(img * top).astype(data.dtype))


def test_master_opens_lazily_and_refuses_decompression_bombs(tmp_path: Path) -> None:
    pixels = _photo(120, 160)
    path = tmp_path / "scan.tif"
    _save_tiff16(path, pixels)
    master = open_master(path)
    assert (master.info.width, master.info.height, master.info.bit_depth) == (160, 120, 16)
    region = master.source().read_region(30, 20, 50, 40)
    np.testing.assert_allclose(region, pixels[20:60, 30:80], atol=1 / 65535)
    with pytest.raises(ImageDecodeError, match="too large"):
        open_master(path, max_pixels=160 * 120 - 1)


def test_master_applies_orientation_and_converts_cmyk(tmp_path: Path) -> None:
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, :5] = 255
    image = pyvips.Image.new_from_array(array).copy(interpretation="srgb").copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    image.jpegsave(str(tmp_path / "rotated.jpg"), Q=95)
    master = open_master(tmp_path / "rotated.jpg")
    whole = decode((tmp_path / "rotated.jpg").read_bytes())
    src = master.source()
    assert (src.width, src.height) == (10, 30)
    np.testing.assert_array_equal(src.read_region(0, 0, 10, 30), whole.pixels)

    cmyk = (pyvips.Image.black(6, 6, bands=4) + [0, 0, 0, 0]).cast("uchar")
    cmyk.copy(interpretation="cmyk").tiffsave(str(tmp_path / "cmyk.tif"))
    master = open_master(tmp_path / "cmyk.tif")
    assert master.info.colour_space == "cmyk" and master.source().bands == 3
    assert master.source().read_region(0, 0, 6, 6).min() > 0.9


def test_corrupt_pixels_fail_loudly_when_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = pyvips.Image.new_from_array(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    jpeg = data.copy(interpretation="srgb").jpegsave_buffer()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    master = open_master(tmp_path / "cut.jpg")  # the header is fine
    with pytest.raises(ImageDecodeError, match="JPEG"):
        master.source().read_region(0, 0, 64, 64)


def test_probe_file_counts_pages(tmp_path: Path) -> None:
    pages = [pyvips.Image.black(40, 30, bands=3) + k * 50 for k in range(3)]
    multi = pyvips.Image.arrayjoin(pages, across=1).cast("uchar").copy(interpretation="srgb")
    multi = multi.copy()
    multi.set_type(pyvips.GValue.gint_type, "page-height", 30)
    multi.tiffsave(str(tmp_path / "multi.tif"))
    assert probe_file(tmp_path / "multi.tif").pages == 3
    second = open_master(tmp_path / "multi.tif", page=1).source()
    assert second.height == 30 and abs(second.read_region(0, 0, 40, 30).mean() - 50 / 255) < 1e-6
    assert split_page("a/multi.tif#page=2") == ("a/multi.tif", 2)
    assert derivative_key("a/multi.tif#page=2", "restored.tif") == "a/multi.tif.page-2.restored.tif"
    assert derivative_key("a/multi.tif", "restored.tif") == "a/multi.tif.restored.tif"


# ----------------------------------------------------------------------------- detection


def test_detection_of_a_small_image_equals_detect(tmp_path: Path) -> None:
    pixels = _photo(200, 260)
    sink = TiffSink(tmp_path / "cells", "uchar")
    detection, stats = detect_source(ArraySource(pixels), None, sink)
    whole = detect(pixels)
    mask = sink.finish(tmp_path / "mask.tif")
    assert stats is not None and stats.tiles == 1
    assert detection.to_metrics() == whole.to_metrics()
    stored = MaskFile(mask)
    np.testing.assert_array_equal(stored.read_mask(0, 0, 260, 200), whole.damage_mask)
    assert stored.count() == int(whole.damage_mask.sum())


def test_tiled_damage_mask_agrees_with_the_whole_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DAGUERRE_TILE", "300")
    pixels = _photo(700, 900)
    sink = TiffSink(tmp_path / "cells", "uchar")
    detection, stats = detect_source(ArraySource(pixels), None, sink)
    assert stats is not None and stats.tiles > 1
    tiled = MaskFile(sink.finish(tmp_path / "mask.tif")).read_mask(0, 0, 900, 700)
    whole = damage_mask(pixels)
    assert whole.sum() > 1000
    iou = (tiled & whole).sum() / (tiled | whole).sum()
    assert iou > 0.97
    assert detection.damage_coverage == pytest.approx(tiled.mean())


# ----------------------------------------------------------------------------- through the tasks


def _restore_by_tasks(tmp_path: Path, name: str, stages: dict[str, dict], **cfg_fields):
    # Classical operators: the expected results below are computed with them.
    cfg_fields.setdefault(
        "models",
        {
            "damage": "classical",
            "denoise": "classical",
            "inpaint": "classical",
            "upscale": "classical",
        },
    )
    cfg = RestoreConfig(
        source=str(tmp_path / "masters"),
        dest=str(tmp_path / "out"),
        catalog_url=f"sqlite:///{tmp_path / 'unused.sqlite'}",
        **cfg_fields,
    )
    (asset,) = inspect_master.fn(cfg.source, name)
    assert asset.error is None, asset
    detected = detect_stage.fn(cfg, 1, asset)
    for stage in PIXEL_STAGES:
        params = stages.get(stage)
        detected.plan[stage] = {"run": params is not None, "reason": "test", "params": params}
    previous = detected
    steps = []
    for order, stage in enumerate(PIXEL_STAGES, start=1):
        previous = pixel_stage.fn(cfg, 1, stage, order, asset, detected, previous)
        steps.append(previous.step)
    stored = store_stage.fn(cfg, 1, len(PIXEL_STAGES) + 1, asset, detected, previous)
    return cfg, asset, detected, steps, stored


def _quantized(a: np.ndarray) -> np.ndarray:
    return (np.rint(np.clip(a, 0, 1) * 65535) / 65535).astype(np.float32)


def test_16_bit_tiff_restored_tile_by_tile_keeps_depth_profile_and_metadata(
    tmp_path: Path, monkeypatch, srgb_icc: bytes
) -> None:
    monkeypatch.setenv("DAGUERRE_TILE", "160")
    pixels = _photo(260, 330)
    (tmp_path / "masters").mkdir()
    _save_tiff16(tmp_path / "masters" / "scan.tif", pixels, icc=srgb_icc, xmp=XMP, ppi=300)
    stages = {"denoise": {"sigma": 6.0}, "inpaint": {"radius": 3}, "upscale": {"scale": 2}}
    cfg, asset, detected, steps, stored = _restore_by_tasks(tmp_path, "scan.tif", stages)
    assert detected.mask is not None
    assert [s.stage for s in steps if s.status == "applied"] == ["denoise", "inpaint", "upscale"]
    assert all(s.metrics["tiles"] > 1 for s in steps if s.status == "applied")

    derivatives = {d.kind: d for d in stored.derivatives}
    preservation = Path(derivatives["preservation"].uri)
    image = pyvips.Image.new_from_file(str(preservation))
    assert (image.width, image.height, image.bands, str(image.format)) == (660, 520, 3, "ushort")
    assert bytes(image.get("icc-profile-data")) == srgb_icc
    xmp = bytes(image.get("xmp-data"))  # the master's XMP, merged with our provenance
    assert b"<dc:creator>Archive</dc:creator>" in xmp and b"<daguerre:steps>" in xmp
    assert image.xres * 25.4 == pytest.approx(600, rel=1e-3)  # resolution follows the upscale
    with tifffile.TiffFile(preservation) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].compression == 8  # deflate
    # The same stages on the whole image in memory, with 16-bit steps between them.
    mask_path = Path(detected.mask.uri)
    mask = MaskFile(mask_path).read_mask(0, 0, 330, 260)
    source = decode((tmp_path / "masters" / "scan.tif").read_bytes()).pixels
    expected = _quantized(classical.nlm_denoise(source, 6.0, bit_depth=16))
    expected = _quantized(classical.telea_inpaint(expected, mask, radius=3))
    expected = _quantized(classical.lanczos_upscale(expected, 2))
    got = image.numpy().astype(np.float32) / 65535
    assert np.abs(got - expected).max() < 1 / 255
    assert np.abs(got - expected).max() <= 1.5 / 65535  # in fact one 16-bit level at most
    access = pyvips.Image.new_from_file(derivatives["access"].uri)
    assert max(access.width, access.height) <= cfg.access_long_edge
    assert derivatives["damage-mask"].format == "png"


def test_jpeg_exif_and_alpha_reach_the_preservation_derivative(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DAGUERRE_TILE", "160")
    (tmp_path / "masters").mkdir()
    rgb = np.rint(_photo(150, 200) * 255).astype(np.uint8)
    image = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb").copy()
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "A. Photographer")
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd2-DateTimeOriginal", "1931:05:04 12:00:00")
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    image.jpegsave(str(tmp_path / "masters" / "print.jpg"), Q=95)
    _, _, _, _, stored = _restore_by_tasks(
        tmp_path, "print.jpg", {"upscale": {"scale": 2}}, access_format="webp"
    )
    preservation = next(d for d in stored.derivatives if d.kind == "preservation")
    assert (preservation.width, preservation.height) == (300, 400)  # upright, then x2
    with tifffile.TiffFile(preservation.uri) as tif:
        page = tif.pages[0]
        assert page.tags["Artist"].value == "A. Photographer"
        assert page.tags["ExifTag"].value["DateTimeOriginal"] == "1931:05:04 12:00:00"
        assert page.tags["BitsPerSample"].value == (8, 8, 8)  # an 8-bit master stays 8-bit
        assert page.tags.get("Orientation") is None or page.tags["Orientation"].value == 1

    # Alpha: a 16-bit RGBA PNG keeps a resampled alpha band.
    rgba = np.dstack([np.rint(_photo(90, 120) * 65535), np.full((90, 120), 30000)])
    png = pyvips.Image.new_from_array(rgba.astype(np.uint16)).copy(interpretation="rgb16")
    png.pngsave(str(tmp_path / "masters" / "clip.png"))
    _, _, _, _, stored = _restore_by_tasks(tmp_path, "clip.png", {"upscale": {"scale": 2}})
    preservation = next(d for d in stored.derivatives if d.kind == "preservation")
    out = pyvips.Image.new_from_file(preservation.uri)
    assert (out.width, out.height, out.bands, str(out.format)) == (240, 180, 4, "ushort")
    assert abs(out[3].avg() - 30000) < 2


def test_preservation_can_be_pyramidal(tmp_path: Path) -> None:
    colour = pyvips.Image.new_from_array(np.rint(_photo(600, 700) * 65535).astype(np.uint16))
    image = preservation_image(colour.copy(interpretation="rgb16"), bit_depth=16)
    path = write_preservation(image, tmp_path / "pyramid.tif", pyramid=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) > 1 or len(tif.pages) > 1
    pixels, alpha = access_pixels(colour, None, 100)
    assert max(pixels.shape[:2]) == 100 and alpha is None


# ----------------------------------------------------------------------------- colorization


class _FakeColorizer:
    """Stands in for a colorization model: tints the grey view (a model sees only the view)."""

    model_id = "fake-colorizer"
    version = "0"
    weights_sha256 = None
    device = "cpu"
    architecture = "fake"
    takes_noise_level = False
    scale = 1
    tiling = "supported"
    receptive_overlap = 0

    def __init__(self) -> None:
        self.views: list[tuple[int, ...]] = []

    def run(self, pixels, noise_sigma=None, mask=None):
        self.views.append(pixels.shape)
        grey = pixels.mean(axis=2, keepdims=True)
        return np.clip(np.concatenate([grey * 1.1, grey * 0.9, grey * 0.7], axis=2), 0, 1)


def test_colorization_works_on_a_view_and_keeps_full_resolution_lightness(monkeypatch) -> None:
    import cv2

    from daguerre import operators
    from daguerre.imaging.tiling import ArraySink

    grey = _photo(300, 400).mean(axis=2, keepdims=True)
    model = _FakeColorizer()
    op = operators.LearnedOperator("colorize", model)
    monkeypatch.setattr(operators, "COLORIZE_LONG_EDGE", 100)
    whole = op.apply(grey, {}, operators.StageContext()).pixels
    sink = ArraySink(400, 300)
    run = operators.run_operator(op, ArraySource(grey), sink, {}, operators.StageContext(), tile=90)
    assert run.stats.tiles > 4 and model.views[-1] == (75, 100, 1)  # the model saw the view
    assert whole.shape == (300, 400, 3)
    assert np.abs(sink.result() - whole).max() < 1e-5
    lightness = cv2.cvtColor(whole, cv2.COLOR_RGB2Lab)[:, :, 0]
    original = cv2.cvtColor(np.repeat(grey, 3, axis=2), cv2.COLOR_RGB2Lab)[:, :, 0]
    assert np.abs(lightness - original).mean() < 1.0  # detail from the original, not the view
    r, g, b = (whole[:, :, k].mean() for k in range(3))
    assert r > g > b  # the view's tint

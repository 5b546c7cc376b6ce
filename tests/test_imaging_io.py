"""Decoding and encoding of whole in-memory images (daguerre.imaging.io)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import pyvips

from daguerre.imaging.io import (
    ImageDecodeError,
    array_to_npy_bytes,
    decode,
    encode_access,
    encode_mask_png,
    encode_tiff,
    npy_bytes_to_array,
    probe,
    sniff_format,
)


def _levels(rng: np.random.Generator, shape: tuple[int, ...], bit_depth: int) -> np.ndarray:
    """Random float32 pixels sitting exactly on the integer levels of bit_depth."""
    top = 2**bit_depth - 1
    return (rng.integers(0, top + 1, size=shape) / top).astype(np.float32)


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    image = pyvips.Image.black(8, 8, bands=3).copy(interpretation="srgb")
    return bytes(image.icc_export(output_profile="srgb").get("icc-profile-data"))


def _vips_png(array: np.ndarray, interpretation: str) -> bytes:
    return pyvips.Image.new_from_array(array).copy(interpretation=interpretation).pngsave_buffer()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_tiff_round_trip_is_bit_exact(bit_depth, channels, with_alpha):
    rng = np.random.default_rng(bit_depth * 10 + channels)
    pixels = _levels(rng, (37, 53, channels), bit_depth)
    alpha = _levels(rng, (37, 53), bit_depth) if with_alpha else None

    data = encode_tiff(pixels, bit_depth=bit_depth, alpha=alpha)
    out = decode(data)

    assert out.info.format == "tiff"
    assert out.info.bit_depth == bit_depth
    assert out.info.bands == channels
    assert out.info.has_alpha is with_alpha
    assert out.info.colour_space == ("grey" if channels == 1 else ("srgb", "rgb16")[bit_depth > 8])
    assert out.pixels.dtype == np.float32 and out.pixels.shape == pixels.shape
    np.testing.assert_array_equal(out.pixels, pixels)
    if with_alpha:
        np.testing.assert_array_equal(out.alpha, alpha)
    else:
        assert out.alpha is None
    # re-encoding the decoded pixels gives the same samples
    again = decode(encode_tiff(out.pixels, bit_depth=bit_depth, alpha=out.alpha))
    assert again.pixels.tobytes() == out.pixels.tobytes()


def test_tiff_is_tiled_deflate_with_predictor():
    data = encode_tiff(np.zeros((300, 280, 3), np.float32), bit_depth=16)
    image = pyvips.Image.new_from_buffer(data, "")
    assert image.get("tile-width") == 256 and image.get("tile-height") == 256
    # IFD entries (little-endian): tag 259 Compression = 8 (deflate), 317 Predictor = 2
    assert b"\x03\x01\x03\x00\x01\x00\x00\x00\x08\x00" in data
    assert b"\x3d\x01\x03\x00\x01\x00\x00\x00\x02\x00" in data


@pytest.mark.parametrize(
    ("dtype", "interpretation", "channels", "bit_depth"),
    [
        (np.uint8, "b-w", 1, 8),
        (np.uint8, "srgb", 3, 8),
        (np.uint8, "srgb", 4, 8),  # RGBA
        (np.uint16, "grey16", 1, 16),
        (np.uint16, "rgb16", 3, 16),
        (np.uint16, "grey16", 2, 16),  # grey + alpha
    ],
)
def test_png_decodes_bit_exactly(dtype, interpretation, channels, bit_depth):
    rng = np.random.default_rng(channels)
    top = np.iinfo(dtype).max
    array = rng.integers(0, top + 1, size=(21, 34, channels), dtype=dtype)
    out = decode(_vips_png(array, interpretation))
    colour = channels - (1 if channels in (2, 4) else 0)
    assert out.info.format == "png"
    assert out.info.bit_depth == bit_depth
    assert out.info.bands == colour
    assert out.info.has_alpha is (channels in (2, 4))
    np.testing.assert_array_equal(out.pixels, array[:, :, :colour] / np.float32(top))
    if channels in (2, 4):
        np.testing.assert_array_equal(out.alpha, array[:, :, -1] / np.float32(top))


def test_icc_profile_and_ppi_survive_encode_tiff(srgb_icc):
    pixels = _levels(np.random.default_rng(0), (16, 16, 3), 16)
    data = encode_tiff(pixels, bit_depth=16, icc_profile=srgb_icc, ppi=600)
    info = probe(data)
    assert info.icc_profile == srgb_icc
    assert info.ppi == pytest.approx(600, abs=1e-3)
    out = decode(data)
    assert out.icc_profile == srgb_icc


def test_encode_tiff_without_metadata_has_no_icc_or_ppi():
    info = probe(encode_tiff(np.zeros((8, 8, 1), np.float32), bit_depth=8))
    assert info.icc_profile is None and info.ppi is None


def test_encode_tiff_refuses_mismatched_profile(srgb_icc):
    with pytest.raises(ValueError, match="does not match"):
        encode_tiff(np.zeros((8, 8, 1), np.float32), bit_depth=8, icc_profile=srgb_icc)
    with pytest.raises(ValueError, match="bit_depth"):
        encode_tiff(np.zeros((8, 8, 3), np.float32), bit_depth=12)


def test_probe_reads_header_facts():
    array = np.zeros((10, 20, 3), np.uint8)
    image = pyvips.Image.new_from_array(array).copy(interpretation="srgb", xres=300 / 25.4)
    info = probe(image.copy(yres=300 / 25.4).pngsave_buffer())
    assert (info.format, info.width, info.height, info.bands) == ("png", 20, 10, 3)
    assert info.ppi == pytest.approx(300)
    assert info.pages == 1


def test_exif_orientation_is_applied():
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, :5] = 255  # white band on the left
    image = pyvips.Image.new_from_array(array).copy(interpretation="srgb")
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # rotate 90 degrees clockwise
    data = image.jpegsave_buffer(Q=95)
    assert (probe(data).width, probe(data).height) == (10, 30)
    out = decode(data)
    assert out.pixels.shape == (30, 10, 3)
    assert out.pixels[:5].mean() > 0.9 and out.pixels[10:].mean() < 0.1  # now on top


def test_palette_and_cmyk_become_rgb():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 4, size=(12, 12, 3), dtype=np.uint8) * 80
    palette = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb")
    out = decode(palette.pngsave_buffer(palette=True))
    assert out.pixels.shape == (12, 12, 3)
    np.testing.assert_allclose(out.pixels, rgb / 255.0, atol=2 / 255)

    cmyk = pyvips.Image.black(6, 6, bands=4) + [0, 0, 0, 0]  # white paper
    data = cmyk.cast("uchar").copy(interpretation="cmyk").tiffsave_buffer()
    out = decode(data)
    assert out.info.colour_space == "cmyk" and out.info.bands == 4
    assert out.pixels.shape == (6, 6, 3)
    assert out.pixels.min() > 0.9
    assert out.icc_profile is None or out.icc_profile[16:20] == b"RGB "


def test_jpeg2000_decodes_through_opencv():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jp2", bgr, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 1000])
    assert ok
    data = bytes(buffer)
    assert sniff_format(data) == "jp2"
    info = probe(data)
    assert (info.width, info.height, info.bands, info.bit_depth) == (48, 64, 3, 8)
    out = decode(data)
    np.testing.assert_array_equal(out.pixels, bgr[:, :, ::-1] / np.float32(255))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [(".jpg", "jpeg"), (".png", "png"), (".tif", "tiff"), (".webp", "webp"), (".gif", "gif")],
)
def test_sniff_format(fmt, expected):
    data = pyvips.Image.black(4, 4).cast("uchar").write_to_buffer(fmt)
    assert sniff_format(data) == expected


def test_sniff_format_rejects_non_images():
    assert sniff_format(b"") is None
    assert sniff_format(b"just some text\nwith lines\n") is None
    assert sniff_format(b"1,2,3\n4,5,6\n") is None


# ----------------------------------------------------------------------------- bad input


def _jpeg(size: int = 128) -> bytes:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return pyvips.Image.new_from_array(array).copy(interpretation="srgb").jpegsave_buffer(Q=90)


def test_zero_bytes():
    with pytest.raises(ImageDecodeError, match=r"^empty file \(0 bytes\)$"):
        decode(b"")
    with pytest.raises(ImageDecodeError, match=r"^empty file \(0 bytes\)$"):
        probe(b"")


def test_text_file():
    with pytest.raises(ImageDecodeError, match="^not a recognised image format$"):
        decode(b"Dear archivist,\nthis is not a photograph.\n")


def test_truncated_jpeg():
    data = _jpeg()
    probe(data[: len(data) // 2])  # the header alone is readable ...
    with pytest.raises(ImageDecodeError, match="^truncated or corrupt JPEG: .+"):
        decode(data[: len(data) // 2])  # ... but decode reads every pixel


def test_tiff_with_valid_header_and_garbage():
    data = encode_tiff(np.zeros((32, 32, 3), np.float32), bit_depth=8)
    bad = data[:8] + b"\x5a" * 2000
    assert sniff_format(bad) == "tiff"
    with pytest.raises(ImageDecodeError, match="^corrupt TIFF: .+"):
        decode(bad)


def test_tiff_with_corrupt_compressed_tiles():
    rng = np.random.default_rng(2)
    data = bytearray(encode_tiff(rng.random((256, 256, 3), dtype=np.float32), bit_depth=8))
    data[2000 : len(data) // 2] = b"\x55" * (len(data) // 2 - 2000)
    with pytest.raises(ImageDecodeError, match="^corrupt TIFF: .+"):
        decode(bytes(data))


def test_too_large():
    with pytest.raises(
        ImageDecodeError, match="^image too large: 16384 pixels exceeds the limit of 1000$"
    ):
        decode(_jpeg(128), max_pixels=1000)


# ----------------------------------------------------------------------------- access copies


def test_access_jpeg_shrinks_and_flattens_alpha_on_white():
    pixels = np.zeros((300, 200, 3), np.float32)
    alpha = np.zeros((300, 200), np.float32)  # fully transparent black
    info = probe(encode_access(pixels, alpha=alpha, long_edge=150))
    assert (info.format, info.width, info.height, info.bit_depth) == ("jpeg", 100, 150, 8)
    assert not info.has_alpha
    assert decode(encode_access(pixels, alpha=alpha, long_edge=150)).pixels.min() > 0.95


def test_access_never_enlarges_and_webp_keeps_alpha():
    pixels = np.full((40, 30, 1), 0.5, np.float32)
    assert probe(encode_access(pixels, long_edge=2048)).width == 30
    alpha = np.ones((40, 30), np.float32)
    alpha[:10] = 0.25  # libwebp drops an alpha channel that is fully opaque
    info = probe(encode_access(np.repeat(pixels, 3, 2), alpha=alpha, fmt="webp", long_edge=None))
    assert (info.format, info.width, info.height, info.has_alpha) == ("webp", 30, 40, True)


def test_access_converts_through_icc_profile(srgb_icc):
    pixels = np.full((16, 16, 3), 0.5, np.float32)
    out = decode(encode_access(pixels, icc_profile=srgb_icc, quality=95))
    assert out.info.icc_profile is not None  # sRGB embedded
    np.testing.assert_allclose(out.pixels, 0.5, atol=3 / 255)  # sRGB -> sRGB is identity


# ----------------------------------------------------------------------------- masks, npy


def test_mask_png():
    mask = np.zeros((9, 11), bool)
    mask[2:4, 3:8] = True
    data = encode_mask_png(mask)
    out = decode(data)
    assert out.info.format == "png" and out.info.bit_depth == 8 and out.info.bands == 1
    raw = pyvips.Image.new_from_buffer(data, "").numpy()
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(raw == 255, mask)


def test_npy_round_trip():
    a = np.random.default_rng(0).random((5, 6, 3), dtype=np.float32)
    b = npy_bytes_to_array(array_to_npy_bytes(a))
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        array_to_npy_bytes(np.array([{"a": 1}], dtype=object))


def test_access_converts_wide_gamut_to_srgb():
    image = pyvips.Image.black(8, 8, bands=3).copy(interpretation="srgb")
    display_p3 = bytes(image.icc_export(output_profile="p3").get("icc-profile-data"))
    pixels = np.full((16, 16, 3), [0.7, 0.4, 0.2], np.float32)
    out = decode(encode_access(pixels, icc_profile=display_p3, quality=98)).pixels[8, 8]
    # the same colour needs more saturated sRGB values
    assert out[0] > 0.72 and out[2] < 0.18

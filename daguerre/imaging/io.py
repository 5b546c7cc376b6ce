"""Decode and encode whole images held in memory.

Pixel convention (see docs): float32 (H, W, C) with C in {1, 3}, values in [0, 1]; alpha
travels separately as (H, W) float32 or None. Decoding fails loudly with ImageDecodeError on
empty, unknown, truncated or corrupt data: a restoration built on a half-decoded master would
silently bake grey blocks into the archive.

libvips does the work; JPEG 2000 (absent from the pyvips wheel) and BMP fall back to OpenCV.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyvips

# Never let a crafted file reach the loaders libvips marks untrusted (ImageMagick, PDF, ...).
pyvips.block_untrusted_set(True)

DEFAULT_MAX_PIXELS = 500_000_000

# vips band format -> bits per sample.
_BIT_DEPTH = {
    "uchar": 8,
    "char": 8,
    "ushort": 16,
    "short": 16,
    "uint": 32,
    "int": 32,
    "float": 32,
    "double": 64,
    "complex": 64,
    "dpcomplex": 128,
}
_INTEGER_MAX = {
    "uchar": 255.0,
    "char": 127.0,
    "ushort": 65535.0,
    "short": 32767.0,
    "uint": 4294967295.0,
    "int": 2147483647.0,
}
_COLOUR_SPACE = {
    "b-w": "grey",
    "grey16": "grey",
    "srgb": "srgb",
    "rgb": "rgb",
    "rgb16": "rgb16",
    "scrgb": "scrgb",
    "cmyk": "cmyk",
    "lab": "lab",
    "labs": "lab",
    "labq": "lab",
    "lch": "lch",
    "cmc": "cmc",
    "xyz": "xyz",
    "yxy": "yxy",
    "hsv": "hsv",
    "oklab": "oklab",
    "oklch": "oklch",
}
# Formats we read with a format-specific libvips loader (gives better error messages).
_VIPS_LOADERS = {
    "jpeg": "jpegload_buffer",
    "png": "pngload_buffer",
    "tiff": "tiffload_buffer",
    "webp": "webpload_buffer",
    "gif": "gifload_buffer",
    "heif": "heifload_buffer",
}
# Formats libvips cannot read here; OpenCV can.
_CV2_FORMATS = frozenset({"jp2", "j2k", "bmp"})
# libvips loaders that accept text: a CSV or matrix file is not a photograph.
_NOT_IMAGES = frozenset({"csv", "matrix"})
_FORMAT_LABEL = {"jpeg": "JPEG", "tiff": "TIFF", "jp2": "JPEG 2000", "j2k": "JPEG 2000"}
# libvips TIFF decoding errors are reported only as warnings, so TIFF needs the strict level.
_FAIL_ON = {"tiff": "warning"}


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; the message is short and meant for people."""


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about an image. width/height are after EXIF orientation is applied."""

    format: str
    width: int
    height: int
    bands: int  # colour bands, alpha excluded
    bit_depth: int  # bits per sample from the header band format
    colour_space: str  # 'grey', 'srgb', 'rgb16', 'cmyk', 'lab', ...
    has_alpha: bool
    icc_profile: bytes | None = field(repr=False)
    ppi: float | None
    pages: int = 1


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Decoded pixels: float32 (H, W, C), C in {1, 3}, in [0, 1]; alpha (H, W) or None.

    `icc_profile` describes `pixels`: the master's profile, or the sRGB profile when the
    master was converted to RGB (CMYK, Lab), or None (assume sRGB / grey gamma 2.2).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    info: ImageInfo
    icc_profile: bytes | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- sniffing


def _jp2_magic(data: bytes) -> str | None:
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return "jp2"
    if data[:4] == b"\xff\x4f\xff\x51":
        return "j2k"
    return None


def sniff_format(data: bytes) -> str | None:
    """Image format from the content ('jpeg', 'png', 'tiff', ...), or None if not an image."""
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if (jp2 := _jp2_magic(head)) is not None:
        return jp2
    if head[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "heif"
    loader = _vips_loader_name(data)
    if loader is None:
        return None
    fmt = loader.removeprefix("VipsForeignLoad").removesuffix("Buffer").lower()
    fmt = {"nsgif": "gif", "jp2k": "jp2", "jpegxl": "jxl"}.get(fmt, fmt)
    return None if fmt in _NOT_IMAGES else fmt


def _vips_loader_name(data: bytes) -> str | None:
    if not data:
        return None
    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(data, len(data))
    if pointer == pyvips.ffi.NULL:
        return None
    return pyvips.ffi.string(pointer).decode()


def _sniff_or_raise(data: bytes) -> str:
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("not a recognised image format")
    return fmt


# --------------------------------------------------------------------------- errors


_NOISE_LINES = (
    "unable to",
    "load error",
    "buffer is not in a known format",
    "vips__tiff_openin_source",
)


def _reason(err: Exception) -> str:
    """The informative part of a libvips error: first distinct causes, prefixes dropped."""
    reasons: list[str] = []
    for raw in str(err).splitlines():
        line = raw.strip()
        if not line or any(noise in line for noise in _NOISE_LINES):
            continue
        # "VipsJpeg: premature end" -> "premature end"
        head, sep, tail = line.partition(": ")
        if sep and (" " not in head or head == "source input"):
            line = tail
        if line not in reasons:
            reasons.append(line)
    text = "; ".join(reasons[:2]) or "the decoder could not read it"
    return text if len(text) <= 200 else text[:197] + "..."


def _corrupt(fmt: str, err: Exception) -> ImageDecodeError:
    if fmt == "jpeg":
        return ImageDecodeError(f"truncated or corrupt JPEG: {_reason(err)}")
    return ImageDecodeError(f"corrupt {_FORMAT_LABEL.get(fmt, fmt.upper())}: {_reason(err)}")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    n = width * height
    if n > max_pixels:
        raise ImageDecodeError(f"image too large: {n} pixels exceeds the limit of {max_pixels}")


# --------------------------------------------------------------------------- libvips path


def _open_vips(data: bytes, fmt: str) -> pyvips.Image:
    """Open the header with the loader for fmt; no pixels are read yet."""
    fail_on = _FAIL_ON.get(fmt, "truncated")
    try:
        loader = _VIPS_LOADERS.get(fmt)
        if loader is not None:
            return getattr(pyvips.Image, loader)(data, fail_on=fail_on)
        return pyvips.Image.new_from_buffer(data, "", fail_on=fail_on)
    except pyvips.Error as err:
        raise _corrupt(fmt, err) from err


def _vips_ppi(image: pyvips.Image) -> float | None:
    # libvips reports 1 pixel/mm when the file carries no resolution; nobody scans at 25.4 ppi.
    xres = float(image.xres)
    if xres <= 0 or abs(xres - 1.0) < 1e-9:
        return None
    return round(xres * 25.4, 4)


def _vips_field(image: pyvips.Image, name: str):
    return image.get(name) if image.get_typeof(name) != 0 else None


def _vips_info(image: pyvips.Image, fmt: str) -> ImageInfo:
    interpretation = str(image.interpretation)
    has_alpha = bool(image.hasalpha())
    bands = image.bands - (1 if has_alpha else 0)
    colour_space = _COLOUR_SPACE.get(interpretation)
    if colour_space is None:  # 'multiband' and friends: judge by the band count
        colour_space = "grey" if bands == 1 else ("srgb" if bands == 3 else interpretation)
    icc = _vips_field(image, "icc-profile-data")
    pages = _vips_field(image, "n-pages")
    width, height = image.width, image.height
    orientation = _vips_field(image, "orientation")
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees once autorot is applied
        width, height = height, width
    return ImageInfo(
        format=fmt,
        width=width,
        height=height,
        bands=bands,
        bit_depth=_BIT_DEPTH.get(str(image.format), 32),
        colour_space=colour_space,
        has_alpha=has_alpha,
        icc_profile=bytes(icc) if icc is not None else None,
        ppi=_vips_ppi(image),
        pages=int(pages) if pages else 1,
    )


def vips_colour(
    image: pyvips.Image, info: ImageInfo
) -> tuple[pyvips.Image, pyvips.Image | None, bytes | None]:
    """Lazily: (colour image in grey/RGB, alpha band or None, ICC profile of the colour image).

    EXIF orientation is applied; CMYK goes to sRGB through its profile (the embedded one, else
    libvips' built-in CMYK profile), Lab and friends to RGB, odd multiband keeps what can be
    shown. No pixel is read.
    """
    image = image.autorot()
    alpha_img = image[image.bands - 1] if info.has_alpha else None
    colour = image.extract_band(0, n=info.bands) if info.has_alpha else image
    icc = info.icc_profile
    if info.colour_space == "cmyk":
        colour = colour.icc_transform(
            "srgb", input_profile="cmyk", embedded=True, depth=16 if info.bit_depth > 8 else 8
        )
        icc = _vips_field(colour, "icc-profile-data")
        icc = bytes(icc) if icc is not None else None
    elif info.colour_space not in ("grey", "srgb", "rgb", "rgb16", "scrgb") and info.bands >= 3:
        colour = colour.colourspace("rgb16" if info.bit_depth > 8 else "srgb")
        icc = None
    elif info.bands == 2 or info.bands > 3:  # odd multiband: keep what we can show
        colour = colour[0] if info.bands == 2 else colour.extract_band(0, n=3)
    return colour, alpha_img, icc


def sample_max(band_format: str) -> float:
    """The value that means 1.0 for a vips band format (1.0 for float formats)."""
    return _INTEGER_MAX.get(band_format, 1.0)


def _vips_pixels(
    image: pyvips.Image, info: ImageInfo
) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Convert a vips image to (pixels, alpha, icc of pixels); reads every pixel."""
    colour, alpha_img, icc = vips_colour(image, info)
    pixels = scale_to_unit(colour.numpy(), str(colour.format))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    alpha = None
    if alpha_img is not None:
        alpha = scale_to_unit(alpha_img.numpy(), str(alpha_img.format))
        alpha = alpha.reshape(alpha.shape[:2])
    return pixels, alpha, icc


def scale_to_unit(array: np.ndarray, band_format: str) -> np.ndarray:
    top = _INTEGER_MAX.get(band_format)
    out = array.astype(np.float32)
    if top is not None:
        out /= np.float32(top)
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------- OpenCV path


def _jp2_header(data: bytes) -> tuple[int, int, int, int, bytes | None] | None:
    """(width, height, components, bits, icc) from a JP2 file or J2K codestream header."""
    try:
        if data[:4] == b"\xff\x4f\xff\x51":  # SOC then SIZ marker
            xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
            (csiz,) = struct.unpack(">H", data[40:42])
            bits = (data[42] & 0x7F) + 1
            return xsiz - xo, ysiz - yo, csiz, bits, None
        at = data.find(b"ihdr")
        if at < 0:
            return None
        height, width, comps = struct.unpack(">IIH", data[at + 4 : at + 14])
        bits = (data[at + 14] & 0x7F) + 1
        icc = None
        colr = data.find(b"colr")
        if colr >= 0 and data[colr + 4] == 2:  # method 2: restricted ICC profile follows
            box_len = struct.unpack(">I", data[colr - 4 : colr])[0]
            icc = bytes(data[colr + 7 : colr - 4 + box_len]) or None
        return width, height, comps, bits, icc
    except (struct.error, IndexError):
        return None


def _cv2_info(data: bytes, fmt: str) -> ImageInfo:
    header = _jp2_header(data) if fmt in ("jp2", "j2k") else None
    if header is None:
        decoded = _cv2_decode(data, fmt)
        height, width = decoded.shape[:2]
        comps = 1 if decoded.ndim == 2 else decoded.shape[2]
        bits = 16 if decoded.dtype == np.uint16 else (32 if decoded.dtype == np.float32 else 8)
        icc = None
    else:
        width, height, comps, bits, icc = header
        bits = 8 if bits <= 8 else (16 if bits <= 16 else 32)
    has_alpha = comps in (2, 4)
    bands = comps - (1 if has_alpha else 0)
    return ImageInfo(
        format="jp2" if fmt == "j2k" else fmt,
        width=width,
        height=height,
        bands=bands,
        bit_depth=bits,
        colour_space="grey" if bands == 1 else ("rgb16" if bits == 16 else "srgb"),
        has_alpha=has_alpha,
        icc_profile=icc,
        ppi=None,
        pages=1,
    )


def _cv2_decode(data: bytes, fmt: str) -> np.ndarray:
    try:
        out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise _corrupt(fmt, err) from err
    if out is None:
        raise _corrupt(fmt, ValueError("truncated or corrupt data"))
    return out


def _cv2_pixels(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 2:
        array = array[:, :, None]
    band_format = {np.dtype(np.uint8): "uchar", np.dtype(np.uint16): "ushort"}.get(
        array.dtype, "float"
    )
    unit = scale_to_unit(array, band_format)
    channels = unit.shape[2]
    alpha = unit[:, :, -1].copy() if channels in (2, 4) else None
    if channels >= 3:  # OpenCV is BGR(A)
        pixels = np.ascontiguousarray(unit[:, :, 2::-1])
    else:
        pixels = np.ascontiguousarray(unit[:, :, :1])
    return pixels, alpha


# Public names for the lazy (file-based) path in daguerre.imaging.large.
CV2_FORMATS = _CV2_FORMATS
corrupt_error = _corrupt
check_size = _check_size
vips_info = _vips_info


def fail_level(fmt: str) -> str:
    """libvips fail_on level for a format (TIFF errors are only warnings in libvips)."""
    return _FAIL_ON.get(fmt, "truncated")


# --------------------------------------------------------------------------- public decode


def probe(data: bytes) -> ImageInfo:
    """Header facts without decoding pixels. Raises ImageDecodeError."""
    fmt = _sniff_or_raise(data)
    if fmt in _CV2_FORMATS:
        return _cv2_info(data, fmt)
    return _vips_info(_open_vips(data, fmt), fmt)


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode the first page, EXIF orientation applied, reading (and checking) every pixel.

    Palette and CMYK/Lab images become RGB, 16-bit samples are scaled by 65535.
    Raises ImageDecodeError for empty, unknown, oversized, truncated or corrupt data.
    """
    fmt = _sniff_or_raise(data)
    if fmt in _CV2_FORMATS:
        info = _cv2_info(data, fmt)
        _check_size(info.width, info.height, max_pixels)
        pixels, alpha = _cv2_pixels(_cv2_decode(data, fmt))
        return DecodedImage(pixels=pixels, alpha=alpha, info=info, icc_profile=info.icc_profile)
    image = _open_vips(data, fmt)
    info = _vips_info(image, fmt)
    _check_size(info.width, info.height, max_pixels)
    try:
        pixels, alpha, icc = _vips_pixels(image, info)
    except pyvips.Error as err:
        raise _corrupt(fmt, err) from err
    return DecodedImage(pixels=pixels, alpha=alpha, info=info, icc_profile=icc)


# --------------------------------------------------------------------------- encoding


def _check_pixels(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got {pixels.shape}")
    if alpha is not None and np.shape(alpha) != pixels.shape[:2]:
        raise ValueError(f"alpha shape {np.shape(alpha)} does not match pixels {pixels.shape}")
    return pixels


def _check_icc(icc_profile: bytes | None, channels: int) -> None:
    """Refuse a profile whose colour space contradicts the pixels (e.g. CMYK on RGB)."""
    if icc_profile is None:
        return
    if len(icc_profile) < 20:
        raise ValueError("ICC profile too short")
    space = icc_profile[16:20]
    expected = b"GRAY" if channels == 1 else b"RGB "
    if space != expected:
        raise ValueError(
            f"ICC profile colour space {space.decode('latin-1').strip()!r} does not match "
            f"{channels}-channel pixels"
        )


check_icc = _check_icc


def _quantize(a: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 8:
        return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if bit_depth == 16:
        return np.rint(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)
    raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def _to_vips(
    pixels: np.ndarray, alpha: np.ndarray | None, bit_depth: int
) -> tuple[pyvips.Image, str]:
    """Integer vips image (colour + optional alpha band) and its interpretation."""
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[:, :, None]], axis=2)
    array = _quantize(planes, bit_depth)
    grey = pixels.shape[2] == 1
    if bit_depth == 8:
        interpretation = "b-w" if grey else "srgb"
    else:
        interpretation = "grey16" if grey else "rgb16"
    image = pyvips.Image.new_from_array(array).copy(interpretation=interpretation)
    return image, interpretation


def _set_icc(image: pyvips.Image, icc_profile: bytes | None) -> pyvips.Image:
    image = image.copy()
    if icc_profile is not None:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", bytes(icc_profile))
    return image


def encode_tiff(
    pixels: np.ndarray,
    *,
    bit_depth: int,
    alpha: np.ndarray | None = None,
    icc_profile: bytes | None = None,
    ppi: float | None = None,
) -> bytes:
    """Tiled (256 px), deflate + horizontal predictor TIFF at 8 or 16 bits per sample.

    The ICC profile is embedded and the resolution written in pixels per inch when given.
    """
    pixels = _check_pixels(pixels, alpha)
    _check_icc(icc_profile, pixels.shape[2])
    image, _ = _to_vips(pixels, alpha, bit_depth)
    if ppi is not None:
        if ppi <= 0:
            raise ValueError(f"ppi must be positive, got {ppi}")
        image = image.copy(xres=ppi / 25.4, yres=ppi / 25.4)
    image = _set_icc(image, icc_profile)
    return image.tiffsave_buffer(
        tile=True,
        tile_width=256,
        tile_height=256,
        compression="deflate",
        predictor="horizontal",
        resunit="inch",
        keep="icc" if icc_profile is not None else "none",
    )


def _shrink(
    pixels: np.ndarray, alpha: np.ndarray | None, long_edge: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lanczos-shrink so the long edge is at most long_edge; never enlarges."""
    height, width = pixels.shape[:2]
    if long_edge is None or max(height, width) <= long_edge:
        return pixels, alpha
    if long_edge < 1:
        raise ValueError(f"long_edge must be >= 1, got {long_edge}")
    scale = long_edge / max(height, width)
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[:, :, None]], axis=2)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(planes, dtype=np.float32))
    if alpha is not None:  # premultiply so transparent pixels do not bleed colour
        image = image.premultiply(max_alpha=1.0)
    image = image.resize(scale, kernel="lanczos3")
    if alpha is not None:
        image = image.unpremultiply(max_alpha=1.0)
    out = np.clip(image.numpy().astype(np.float32), 0.0, 1.0)
    if out.ndim == 2:
        out = out[:, :, None]
    channels = pixels.shape[2]
    return out[:, :, :channels], (out[:, :, channels] if alpha is not None else None)


def encode_access(
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    long_edge: int | None = 2048,
    fmt: str = "jpeg",
    quality: int = 90,
    icc_profile: bytes | None = None,
) -> bytes:
    """8-bit sRGB access copy, JPEG or WebP, long edge at most long_edge (never enlarged).

    With an ICC profile the pixels are converted to sRGB through it (and the sRGB profile is
    embedded); without one they are taken as sRGB already. JPEG flattens alpha onto white.
    """
    if fmt not in ("jpeg", "webp"):
        raise ValueError(f"fmt must be 'jpeg' or 'webp', got {fmt!r}")
    pixels = _check_pixels(pixels, alpha)
    _check_icc(icc_profile, pixels.shape[2])
    pixels, alpha = _shrink(pixels, alpha, long_edge)
    if icc_profile is not None:
        # Convert from 16 bits so the transform does not band.
        image, _ = _to_vips(pixels, alpha, 16)
        image = _set_icc(image, icc_profile)
        try:
            image = image.icc_transform("srgb", embedded=True, intent="relative", depth=8)
        except pyvips.Error as err:
            raise ValueError(f"ICC profile could not be applied: {_reason(err)}") from err
        keep = "icc"
    else:
        image, _ = _to_vips(pixels, alpha, 8)
        keep = "none"
    if fmt == "jpeg":
        if image.hasalpha():
            image = image.flatten(background=[255.0] * (image.bands - 1))
        return image.jpegsave_buffer(Q=quality, optimize_coding=True, keep=keep)
    return image.webpsave_buffer(Q=quality, keep=keep)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """An (H, W) mask as an 8-bit greyscale PNG: 255 where set, 0 elsewhere."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    array = np.where(mask.astype(bool), np.uint8(255), np.uint8(0))
    image = pyvips.Image.new_from_array(array).copy(interpretation="b-w")
    return image.pngsave_buffer(compression=9, bitdepth=8, keep="none")


def array_to_npy_bytes(a: np.ndarray) -> bytes:
    """Serialise an array to .npy bytes (no pickle), for intermediates between stages."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(a), allow_pickle=False)
    return buffer.getvalue()


def npy_bytes_to_array(b: bytes) -> np.ndarray:
    """Inverse of array_to_npy_bytes; refuses pickled object arrays."""
    return np.load(io.BytesIO(b), allow_pickle=False)

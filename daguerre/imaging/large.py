"""Images too large to hold: lazy masters, tiled TIFF intermediates, derivatives, detection.

libvips reads lazily, so a 20,000 x 20,000 master costs only the regions asked for. Python
cannot stream tiles into a libvips writer (libvips #2859), so `TiffSink` writes each finished
output cell to its own small file and, at the end, lets libvips `arrayjoin` them (row by row,
then the rows) into one tiled BigTIFF. Bit depth and colour come from headers and profiles,
never from pixel values.

Pixel convention as everywhere: regions come out as float32 (h, w, C) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyvips

from daguerre.imaging import io as imgio
from daguerre.imaging.detect import (
    ANALYSIS_LONG_EDGE,
    DAMAGE_CONTEXT,
    Detection,
    analyse_colour,
    contrast,
    damage_mask,
    detect_faces,
    sharpness,
)
from daguerre.imaging.embed import embed_jpeg, embed_webp
from daguerre.imaging.io import ImageDecodeError, ImageInfo
from daguerre.imaging.noise import sampled_noise_sigma
from daguerre.imaging.tiffexif import IMAGE_DESCRIPTION, SOFTWARE, update_first_ifd
from daguerre.imaging.tiling import RegionSource, Tile, TileRequirements, TileStats, apply_tiled

# Loads are not worth caching here (every region is read once) and a cached load of a path
# whose file was replaced would serve stale pixels.
pyvips.cache_set_max(0)

# Metadata blobs carried from the master to the preservation derivative.
METADATA_FIELDS = ("exif-data", "xmp-data", "iptc-data")
# Above this many uncompressed bytes a TIFF must be BigTIFF (4 GiB offsets), with a margin.
BIGTIFF_BYTES = 3 << 30
# Damage detection reaches DAMAGE_CONTEXT px beyond a pixel (long paths aside); a mask is
# binary, so tiles butt without blending.
MASK_REQUIREMENTS = TileRequirements(context=DAMAGE_CONTEXT, blend=0, tile=2048)
# Loaders that take a page argument.
_PAGED = frozenset({"tiff", "gif", "webp", "heif"})


# --------------------------------------------------------------------------- sources


class VipsSource:
    """A lazy libvips image as a RegionSource: reads decode only the region asked for.

    `fmt` names the file format in error messages; a decoding error while reading becomes an
    ImageDecodeError (a corrupt tile must fail the stage, never yield grey pixels).
    """

    def __init__(self, image: pyvips.Image, fmt: str = "tiff") -> None:
        self.image = image
        self.fmt = fmt
        self.band_format = str(image.format)

    @property
    def width(self) -> int:
        return int(self.image.width)

    @property
    def height(self) -> int:
        return int(self.image.height)

    @property
    def bands(self) -> int:
        return int(self.image.bands)

    def _unit(self, image: pyvips.Image) -> np.ndarray:
        try:
            array = image.numpy()
        except pyvips.Error as err:
            raise imgio.corrupt_error(self.fmt, err) from err
        out = imgio.scale_to_unit(array, str(image.format))
        return out[:, :, None] if out.ndim == 2 else out

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._unit(self.image.crop(x, y, w, h))

    def view(self, long_edge: int) -> np.ndarray:
        """The whole image shrunk (box filter, then Lanczos) to at most long_edge px."""
        longest = max(self.width, self.height)
        if longest <= long_edge:
            return self.read_region(0, 0, self.width, self.height)
        return self._unit(self.image.resize(long_edge / longest))


class MaskFile:
    """A damage mask stored as an 8-bit TIFF (0 / 255): read by region as (h, w) bool."""

    def __init__(self, path: Path) -> None:
        self.image = pyvips.Image.new_from_file(str(path))

    @property
    def width(self) -> int:
        return int(self.image.width)

    @property
    def height(self) -> int:
        return int(self.image.height)

    def read_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        array = self.image.crop(x, y, w, h).numpy()
        return (array.reshape(h, w) if array.ndim == 3 else array) > 127

    def count(self) -> int:
        """Number of set pixels (streams the mask once)."""
        return int(round(self.image.avg() * self.width * self.height / 255.0))


# --------------------------------------------------------------------------- masters


@dataclass(eq=False)
class Master:
    """A master opened lazily: header facts, colour and alpha as lazy libvips images.

    `colour` is grey or RGB (orientation applied, CMYK/Lab converted) with the file's sample
    format; `icc_profile` describes it. `metadata` holds the EXIF/XMP/IPTC blobs, `description`
    a TIFF's ImageDescription tag (None when absent).
    """

    info: ImageInfo
    colour: pyvips.Image
    alpha: pyvips.Image | None
    icc_profile: bytes | None = field(repr=False)
    metadata: dict[str, bytes] = field(default_factory=dict, repr=False)
    description: str | None = None

    def source(self) -> VipsSource:
        return VipsSource(self.colour, self.info.format)


def sniff_file(path: Path) -> str | None:
    """Image format of a file from its first bytes (see io.sniff_format), or None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return None
    return imgio.sniff_format(head)


def _blob(image: pyvips.Image, name: str) -> bytes | None:
    return bytes(image.get(name)) if image.get_typeof(name) != 0 else None


def _open_vips_file(path: Path, fmt: str, page: int) -> pyvips.Image:
    options: dict[str, object] = {"fail_on": imgio.fail_level(fmt), "access": "random"}
    if page and fmt in _PAGED:
        options["page"] = page
    elif page:
        raise ImageDecodeError(f"{fmt.upper()} files have one page; page {page} asked for")
    try:
        return pyvips.Image.new_from_file(str(path), **options)
    except pyvips.Error as err:
        raise imgio.corrupt_error(fmt, err) from err


def probe_file(path: Path, page: int = 0) -> ImageInfo:
    """Header facts of an image file without decoding its pixels. Raises ImageDecodeError."""
    fmt = sniff_file(path)
    if fmt is None:
        size = Path(path).stat().st_size
        raise ImageDecodeError(
            "empty file (0 bytes)" if size == 0 else "not a recognised image format"
        )
    if fmt in imgio.CV2_FORMATS:
        return imgio.probe(Path(path).read_bytes())
    return imgio.vips_info(_open_vips_file(path, fmt, page), fmt)


def open_master(path: Path, *, max_pixels: int = imgio.DEFAULT_MAX_PIXELS, page: int = 0) -> Master:
    """Open an image file lazily (page `page` of a multi-page file). Raises ImageDecodeError.

    The pixel limit is checked on the header, before any pixel is decoded. JPEG 2000 and BMP
    (not in the libvips wheel) are decoded whole through OpenCV.
    """
    fmt = sniff_file(path)
    if fmt is None:
        size = Path(path).stat().st_size
        raise ImageDecodeError(
            "empty file (0 bytes)" if size == 0 else "not a recognised image format"
        )
    if fmt in imgio.CV2_FORMATS:
        decoded = imgio.decode(Path(path).read_bytes(), max_pixels=max_pixels)
        colour = pyvips.Image.new_from_array(np.ascontiguousarray(decoded.pixels))
        alpha = None
        if decoded.alpha is not None:
            alpha = pyvips.Image.new_from_array(np.ascontiguousarray(decoded.alpha))
        return Master(decoded.info, colour, alpha, decoded.icc_profile)
    image = _open_vips_file(path, fmt, page)
    info = imgio.vips_info(image, fmt)
    imgio.check_size(info.width, info.height, max_pixels)
    try:
        colour, alpha, icc = imgio.vips_colour(image, info)
    except pyvips.Error as err:
        raise imgio.corrupt_error(fmt, err) from err
    metadata = {name: blob for name in METADATA_FIELDS if (blob := _blob(image, name))}
    description = None
    if image.get_typeof("image-description") != 0:
        description = str(image.get("image-description"))
    return Master(info, colour, alpha, icc, metadata, description)


# --------------------------------------------------------------------------- sinks


def _quantize(pixels: np.ndarray, band_format: str) -> np.ndarray:
    if band_format == "ushort":
        return np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if band_format == "uchar":
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"band_format must be ushort or uchar, got {band_format!r}")


_DTYPES = {"ushort": np.dtype(np.uint16), "uchar": np.dtype(np.uint8)}


class TiffSink:
    """Collects final output cells on disk and streams them into one tiled TIFF.

    Cells arrive once each (the tiler's contract), are quantized to `band_format` ('ushort':
    16-bit, exact to 1/65535 for 8- and 16-bit sources; 'uchar' for masks) and written raw to
    `folder`. `finish` reads them back one band of TIFF tiles at a time and writes a tiled,
    deflate-compressed BigTIFF, then deletes them: memory holds one band (256 rows of the
    output width), whatever the image size.

    Why not libvips' arrayjoin of the cells: measured here, every joined input costs libvips
    about 1 MB until the write ends, so memory grows with the number of cells (~0.5 GB for
    a 40,000 px square). The TIFF written here is read back lazily by libvips.
    """

    def __init__(self, folder: Path, band_format: str = "ushort") -> None:
        if band_format not in _DTYPES:
            raise ValueError(f"band_format must be ushort or uchar, got {band_format!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.band_format = band_format
        self.dtype = _DTYPES[band_format]
        self.cells: dict[tuple[int, int], tuple[Path, int, int]] = {}  # (y, x) -> (path, h, w)
        self.width = self.height = self.bands = 0

    def write(self, x: int, y: int, pixels: np.ndarray) -> None:
        array = _quantize(pixels, self.band_format)
        if array.ndim == 2:
            array = array[:, :, None]
        path = self.folder / f"cell-{y}-{x}.raw"
        np.ascontiguousarray(array).tofile(path)
        self.cells[(y, x)] = (path, array.shape[0], array.shape[1])
        self.width = max(self.width, x + array.shape[1])
        self.height = max(self.height, y + array.shape[0])
        self.bands = array.shape[2]

    def _rows(self, y0: int, y1: int, out: np.ndarray) -> None:
        """Fill out[: y1 - y0, : width] with output rows [y0, y1) read from the cells."""
        bands, item = self.bands, self.dtype.itemsize
        for (y, x), (path, h, w) in self.cells.items():
            a, b = max(y0, y), min(y1, y + h)
            if a >= b:
                continue
            rows = np.fromfile(
                path, self.dtype, count=(b - a) * w * bands, offset=(a - y) * w * bands * item
            )
            out[a - y0 : b - y0, x : x + w] = rows.reshape(b - a, w, bands)

    def finish(self, path: Path, *, tile: int = 256, compress: int | None = 1) -> Path:
        """Write the cells as a tiled BigTIFF at `path` (deflate at level `compress` with the
        horizontal predictor; None: uncompressed) and delete them."""
        import tifffile

        if not self.cells:
            raise RuntimeError("nothing was written")
        width, height, bands = self.width, self.height, self.bands
        padded = -(-width // tile) * tile

        def tiles():
            band = np.zeros((tile, padded, bands), self.dtype)
            for y0 in range(0, height, tile):
                band[:] = 0
                self._rows(y0, min(height, y0 + tile), band)
                for x0 in range(0, padded, tile):
                    chunk = band[:, x0 : x0 + tile]
                    yield chunk[:, :, 0] if bands == 1 else chunk

        options: dict[str, object] = {}
        if compress is not None:
            options = {"compression": "zlib", "compressionargs": {"level": compress}}
            options["predictor"] = True
        tifffile.imwrite(
            path,
            data=tiles(),
            shape=(height, width) if bands == 1 else (height, width, bands),
            dtype=self.dtype,
            tile=(tile, tile),
            bigtiff=True,
            photometric="rgb" if bands == 3 else "minisblack",
            metadata=None,
            **options,
        )
        self.discard()
        return Path(path)

    def discard(self) -> None:
        for cell, _, _ in self.cells.values():
            cell.unlink(missing_ok=True)
        self.cells.clear()


# --------------------------------------------------------------------------- detection


def _mask_tile(pixels: np.ndarray, tile: Tile) -> np.ndarray:
    return damage_mask(pixels)


def detect_source(
    source: VipsSource | RegionSource,
    info: ImageInfo | None,
    mask_sink: TiffSink | None = None,
    mask_job: tuple[TileRequirements, Callable[[np.ndarray, Tile], np.ndarray]] | None = None,
) -> tuple[Detection, TileStats | None]:
    """detect() for an image of any size: statistics on a downscaled view, noise on
    full-resolution samples, the damage mask tile by tile at full resolution into mask_sink.

    `mask_job` is the damage detector's tile requirements and its function of one tile
    (returning an (h, w) bool mask); None is the classical detector. The returned Detection
    has damage_mask=None (the mask went to the sink); images of up to ANALYSIS_LONG_EDGE px and
    one mask tile give exactly what detect() gives.
    """
    if hasattr(source, "view"):
        view = source.view(ANALYSIS_LONG_EDGE)
    else:
        from daguerre.imaging.detect import analysis_view

        view = analysis_view(source.read_region(0, 0, source.width, source.height))
    colour = analyse_colour(view)
    scale = source.width / view.shape[1]
    faces = [
        (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
        for x, y, w, h in detect_faces(view)
    ]
    stats = None
    masked = 0
    if mask_sink is not None:
        counter = _Counter()

        requirements, mask_fn = mask_job or (MASK_REQUIREMENTS, _mask_tile)

        def fn(pixels: np.ndarray, tile: Tile) -> np.ndarray:
            out = np.asarray(mask_fn(pixels, tile), np.float32).reshape(pixels.shape[:2])[
                :, :, None
            ]
            rows, cols = tile.cell.relative_to(tile.read)
            counter.n += int(out[rows, cols].sum())
            return out

        stats = apply_tiled(source, fn, requirements, mask_sink)
        masked = counter.n
    total = source.width * source.height
    detection = Detection(
        colour_kind=colour.kind,
        mean_chroma=colour.mean_chroma,
        hue_deg=colour.hue_deg,
        noise_sigma=sampled_noise_sigma(source.read_region, source.height, source.width),
        sharpness=sharpness(view),
        contrast=contrast(view),
        width=source.width,
        height=source.height,
        ppi=info.ppi if info is not None else None,
        damage_coverage=masked / total if total else 0.0,
        faces=sorted(faces),
        bit_depth=info.bit_depth if info is not None else None,
        bands=int(source.bands),
        damage_mask=None,
    )
    return detection, stats


class _Counter:
    n = 0


# --------------------------------------------------------------------------- derivatives


def _to_depth(image: pyvips.Image, bit_depth: int) -> pyvips.Image:
    """Samples of any format as 8- or 16-bit integers (scaled by the format's maximum)."""
    target = {8: "uchar", 16: "ushort"}.get(bit_depth)
    if target is None:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    current = str(image.format)
    if current == target:
        return image
    top = 255.0 if bit_depth == 8 else 65535.0
    scaled = image.linear(top / imgio.sample_max(current), 0.0)
    return scaled.round("rint").clamp(min=0.0, max=top).cast(target)


def _resized_alpha(alpha: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Alpha resampled to width x height: bilinear up (no ringing), area down."""
    if (alpha.width, alpha.height) == (width, height):
        return alpha
    sx, sy = width / alpha.width, height / alpha.height
    kernel = "linear" if sx * sy >= 1 else "lanczos3"
    out = alpha.resize(sx, vscale=sy, kernel=kernel)
    if (out.width, out.height) != (width, height):  # rounding: pad or trim by a pixel
        out = out.gravity("north-west", width, height, extend="copy")
    return out


def preservation_image(
    colour: pyvips.Image,
    *,
    bit_depth: int,
    alpha: pyvips.Image | None = None,
    icc_profile: bytes | None = None,
    ppi: float | None = None,
    metadata: dict[str, bytes] | None = None,
) -> pyvips.Image:
    """The preservation derivative as a lazy image: source bit depth, alpha resampled to the
    output size, ICC profile, resolution and XMP/IPTC (and EXIF, see write_preservation)."""
    if icc_profile is not None:
        imgio.check_icc(icc_profile, colour.bands)
    image = _to_depth(colour, bit_depth)
    if alpha is not None:
        alpha = _to_depth(_resized_alpha(alpha, image.width, image.height), bit_depth)
        image = image.bandjoin(alpha)
    bands = colour.bands
    interpretation = ("b-w" if bands == 1 else "srgb") if bit_depth == 8 else None
    interpretation = interpretation or ("grey16" if bands == 1 else "rgb16")
    image = image.copy(interpretation=interpretation)
    if ppi is not None:
        if ppi <= 0:
            raise ValueError(f"ppi must be positive, got {ppi}")
        image = image.copy(xres=ppi / 25.4, yres=ppi / 25.4)
    image = image.copy()
    if icc_profile is not None:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", bytes(icc_profile))
    for name, blob in (metadata or {}).items():
        if name in ("xmp-data", "iptc-data"):
            image.set_type(pyvips.GValue.blob_type, name, bytes(blob))
    return image


def write_preservation(
    image: pyvips.Image,
    path: Path,
    *,
    pyramid: bool = False,
    exif: bytes | None = None,
    description: str | None = None,
    software: str | None = None,
) -> Path:
    """Tiled (256 px) deflate + predictor TIFF, BigTIFF when large, optionally pyramidal.

    The EXIF blob, which libvips does not write into TIFFs, is appended as an EXIF IFD;
    `description` and `software` become the ImageDescription and Software tags (over the
    master's).
    """
    raw = image.width * image.height * image.bands * (2 if str(image.format) == "ushort" else 1)
    image.tiffsave(
        str(path),
        tile=True,
        tile_width=256,
        tile_height=256,
        compression="deflate",
        predictor="horizontal",
        bigtiff=raw * (1.34 if pyramid else 1.0) > BIGTIFF_BYTES,
        pyramid=pyramid,
        resunit="inch",
        keep="icc:xmp:iptc",
    )
    text = {IMAGE_DESCRIPTION: description, SOFTWARE: software}
    text = {tag: value for tag, value in text.items() if value}
    if exif or text:
        update_first_ifd(Path(path), exif, text)
    return Path(path)


def write_access(
    pixels: np.ndarray,
    path: Path,
    *,
    alpha: np.ndarray | None = None,
    fmt: str = "jpeg",
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    extended_xmp: bytes | None = None,
) -> Path:
    """The access copy (io.encode_access, not resized again) with EXIF and XMP added to the
    encoded file (embed.py: no second encoding). WebP takes no extended XMP (no size limit).
    """
    data = imgio.encode_access(
        pixels, alpha=alpha, long_edge=None, fmt=fmt, icc_profile=icc_profile
    )
    if fmt == "jpeg":
        data = embed_jpeg(data, exif=exif, xmp=xmp, extended_xmp=extended_xmp)
    else:
        if extended_xmp is not None:
            raise ValueError("extended XMP is a JPEG construct; give WebP the whole packet")
        data = embed_webp(data, exif=exif, xmp=xmp)
    Path(path).write_bytes(data)
    return Path(path)


def access_pixels(
    colour: pyvips.Image, alpha: pyvips.Image | None, long_edge: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image shrunk (never enlarged) to at most long_edge px, as float32 pixels and alpha.

    Alpha is premultiplied while resampling so transparent pixels do not bleed colour.
    """
    top = imgio.sample_max(str(colour.format))
    image = colour.cast("float").linear(1.0 / top, 0.0)
    bands = colour.bands
    if alpha is not None:
        alpha = _resized_alpha(alpha, colour.width, colour.height)
        a = alpha.cast("float").linear(1.0 / imgio.sample_max(str(alpha.format)), 0.0)
        image = image.bandjoin(a)
    longest = max(colour.width, colour.height)
    if long_edge is not None and longest > long_edge:
        if long_edge < 1:
            raise ValueError(f"long_edge must be >= 1, got {long_edge}")
        if alpha is not None:
            image = image.premultiply(max_alpha=1.0)
        image = image.resize(long_edge / longest, kernel="lanczos3")
        if alpha is not None:
            image = image.unpremultiply(max_alpha=1.0)
    out = np.clip(image.numpy().astype(np.float32), 0.0, 1.0)
    if out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out[:, :, :bands]), (
        out[:, :, bands] if alpha is not None else None
    )


def write_mask_png(mask_path: Path, path: Path, *, xmp: bytes | None = None) -> Path:
    """The damage mask TIFF as an 8-bit greyscale PNG (255 where damaged), streamed, with the
    XMP packet `xmp` (an iTXt chunk) when given."""
    image = pyvips.Image.new_from_file(str(mask_path), access="sequential")
    image = image.copy(interpretation="b-w")
    keep = "none"
    if xmp:
        image = image.copy()
        image.set_type(pyvips.GValue.blob_type, "xmp-data", bytes(xmp))
        keep = "xmp"
    image.pngsave(str(path), compression=6, bitdepth=8, keep=keep)
    return Path(path)

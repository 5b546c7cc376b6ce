"""Put EXIF and XMP into an encoded JPEG or WebP without re-encoding it: bytes in, bytes out.

The access copy is encoded by `daguerre.imaging.io.encode_access` (pixels only); its metadata
is added here at the container level, so the compressed image data is untouched.

JPEG: APP1 segments after SOI (and after a JFIF APP0): EXIF ("Exif\\0\\0" + TIFF), XMP
("http://ns.adobe.com/xap/1.0/\\0" + packet, at most 65504 bytes) and, for a larger packet,
extended XMP (Adobe XMP spec part 3: GUID, full length, offset, chunk). WebP: the extended
format (VP8X header with the EXIF/XMP flags) with "EXIF" and "XMP " chunks after the image.
Segments or chunks of the same kinds already there are replaced.
"""

from __future__ import annotations

import hashlib
import struct

JPEG_EXIF_HEADER = b"Exif\x00\x00"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
JPEG_EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
# Payload bytes of an APP segment (the length field counts itself).
_SEGMENT_MAX = 65533
_EXTENDED_CHUNK = 65400  # what Adobe writers use; header + chunk stays under _SEGMENT_MAX
_SOS, _APP0, _APP1 = 0xDA, 0xE0, 0xE1


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > _SEGMENT_MAX:
        raise ValueError(f"APP segment payload of {len(payload)} bytes exceeds {_SEGMENT_MAX}")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _ours(marker: int, payload: bytes) -> bool:
    """An APP1 segment of a kind we write (and so replace)."""
    return marker == _APP1 and payload.startswith(
        (JPEG_EXIF_HEADER, JPEG_XMP_HEADER, JPEG_EXTENDED_XMP_HEADER)
    )


def embed_jpeg(
    data: bytes,
    *,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    extended_xmp: bytes | None = None,
) -> bytes:
    """The JPEG `data` with EXIF (with or without its "Exif\\0\\0" prefix), XMP and extended XMP.

    `extended_xmp` needs `xmp`, whose `xmpNote:HasExtendedXMP` must be the extended packet's
    MD5 in uppercase hex (see provenance_metadata.jpeg_xmp). Raises ValueError for data that
    is not a JPEG or an EXIF/XMP too large for its segment.
    """
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    if extended_xmp is not None and xmp is None:
        raise ValueError("extended XMP needs a main XMP packet")
    head: list[bytes] = []  # a leading JFIF APP0 stays first
    kept: list[bytes] = []
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at byte {at}")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == _SOS:
            break
        (length,) = struct.unpack_from(">H", data, at + 2)
        segment = data[at : at + 2 + length]
        if not _ours(marker, segment[4:]):
            (head if marker == _APP0 and not kept and not head else kept).append(segment)
        at += 2 + length
    new: list[bytes] = []
    if exif:
        payload = exif if exif.startswith(JPEG_EXIF_HEADER) else JPEG_EXIF_HEADER + exif
        new.append(_segment(_APP1, payload))
    if xmp:
        new.append(_segment(_APP1, JPEG_XMP_HEADER + xmp))
    if extended_xmp:
        guid = hashlib.md5(extended_xmp, usedforsecurity=False).hexdigest().upper().encode()
        total = struct.pack(">I", len(extended_xmp))
        for offset in range(0, len(extended_xmp), _EXTENDED_CHUNK):
            chunk = extended_xmp[offset : offset + _EXTENDED_CHUNK]
            payload = JPEG_EXTENDED_XMP_HEADER + guid + total + struct.pack(">I", offset) + chunk
            new.append(_segment(_APP1, payload))
    return b"\xff\xd8" + b"".join(head + new + kept) + data[at:]


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP (no RIFF/WEBP header)")
    chunks = []
    at = 12
    while at + 8 <= len(data):
        fourcc = data[at : at + 4]
        (size,) = struct.unpack_from("<I", data, at + 4)
        chunks.append((fourcc, data[at + 8 : at + 8 + size]))
        at += 8 + size + (size & 1)
    return chunks


def _canvas(chunks: list[tuple[bytes, bytes]]) -> tuple[int, int, bool]:
    """Width, height and alpha of a simple-format WebP (one VP8 or VP8L chunk)."""
    fourcc, payload = chunks[0]
    if fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", payload, 6)
        return width & 0x3FFF, height & 0x3FFF, False
    if fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        (bits,) = struct.unpack_from("<I", payload, 1)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    raise ValueError(f"unexpected WebP image chunk {fourcc!r}")


def embed_webp(data: bytes, *, exif: bytes | None = None, xmp: bytes | None = None) -> bytes:
    """The WebP `data` with an EXIF chunk (TIFF bytes, any "Exif\\0\\0" prefix dropped) and an
    XMP chunk, converted to the extended format (VP8X) when it was a simple one."""
    chunks = [(c, p) for c, p in _chunks(data) if c not in (b"EXIF", b"XMP ")]
    if not chunks:
        raise ValueError("WebP without an image chunk")
    if chunks[0][0] == b"VP8X":
        vp8x = bytearray(chunks[0][1])
        chunks = chunks[1:]
    else:
        width, height, alpha = _canvas(chunks)
        vp8x = bytearray(10)
        vp8x[0] = 0x10 if alpha else 0
        vp8x[4:7] = (width - 1).to_bytes(3, "little")
        vp8x[7:10] = (height - 1).to_bytes(3, "little")
    vp8x[0] &= ~0x0C & 0xFF
    if exif:
        exif = exif.removeprefix(JPEG_EXIF_HEADER)
        vp8x[0] |= 0x08
        chunks.append((b"EXIF", exif))
    if xmp:
        vp8x[0] |= 0x04
        chunks.append((b"XMP ", xmp))
    parts = [b"WEBP"]
    for fourcc, payload in [(b"VP8X", bytes(vp8x)), *chunks]:
        parts += [fourcc, struct.pack("<I", len(payload)), payload, b"\x00" * (len(payload) & 1)]
    body = b"".join(parts)
    return b"RIFF" + struct.pack("<I", len(body)) + body

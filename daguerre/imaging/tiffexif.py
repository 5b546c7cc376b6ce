"""Carry a master's EXIF into a TIFF derivative (libvips writes EXIF into JPEG/WebP, not TIFF).

The EXIF blob (as libvips reads it: optional "Exif\\0\\0", then a little TIFF structure) is
parsed; its EXIF, GPS and interoperability IFDs are appended to the end of our TIFF, together
with a copy of the TIFF's first IFD that gains the pointers and the descriptive tags (camera,
date, artist, copyright) the TIFF lacks. The header is then pointed at the new first IFD. Pixel
data and every other IFD stay where they are, so classic TIFF, BigTIFF and pyramids all work.
Orientation is not copied: the derivative's pixels are already upright. The same rewrite sets
our own ASCII tags (ImageDescription, Software: `update_first_ifd`), and `exif_blob` builds the
small EXIF of an access copy.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

EXIF_IFD, GPS_IFD, INTEROP_IFD = 34665, 34853, 40965
_POINTERS = (EXIF_IFD, GPS_IFD, INTEROP_IFD)
# First-IFD tags worth carrying when the TIFF has none of its own (never geometry, layout,
# orientation or resolution: those describe our pixels, not the master's).
_DESCRIPTIVE = (270, 271, 272, 305, 306, 315, 33432)
# type -> (struct code, size)
_TYPES = {
    1: ("B", 1),
    2: ("s", 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("II", 8),
    6: ("b", 1),
    7: ("s", 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("ii", 8),
    11: ("f", 4),
    12: ("d", 8),
    13: ("I", 4),
    16: ("Q", 8),
    17: ("q", 8),
    18: ("Q", 8),
}


@dataclass
class _Entry:
    tag: int
    type: int
    count: int
    values: bytes | tuple  # raw bytes for ASCII/UNDEFINED/BYTE, else decoded numbers
    sub: list[_Entry] | None = None  # entries of the IFD a pointer tag points to


def _parse_ifd(data: bytes, offset: int, order: str, depth: int = 0) -> list[_Entry]:
    (count,) = struct.unpack_from(order + "H", data, offset)
    entries = []
    for k in range(count):
        tag, typ, n, inline = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * k)
        if typ not in _TYPES:
            continue  # unknown type: cannot be relocated safely
        code, size = _TYPES[typ]
        length = size * n
        if length <= 4:
            raw = inline[:length]
        else:
            (at,) = struct.unpack(order + "I", inline)
            raw = data[at : at + length]
            if len(raw) < length:
                continue  # truncated value: drop the entry rather than invent bytes
        if typ in (1, 2, 6, 7):
            values: bytes | tuple = bytes(raw)
        else:
            values = struct.unpack(order + code * n, raw) if code in "HIhifdQq" else ()
            if typ in (5, 10):
                values = struct.unpack(order + code[0] * (2 * n), raw)
        entry = _Entry(tag, typ, n, values)
        if tag in _POINTERS and depth < 2 and isinstance(values, tuple) and values:
            entry.sub = _parse_ifd(data, int(values[0]), order, depth + 1)
        entries.append(entry)
    return entries


def parse_exif(blob: bytes) -> list[_Entry]:
    """The first IFD of an EXIF blob, with pointer tags' IFDs parsed into `sub`."""
    data = blob[6:] if blob.startswith(b"Exif\x00\x00") else blob
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise ValueError("not an EXIF blob (no TIFF byte order mark)")
    (first,) = struct.unpack_from(order + "I", data, 4)
    return _parse_ifd(data, first, order)


class _Writer:
    """Appends IFDs to a TIFF in its own byte order and flavour (classic or BigTIFF)."""

    def __init__(self, order: str, big: bool, start: int) -> None:
        self.order, self.big = order, big
        self.out = bytearray()
        self.start = start  # file offset of self.out[0]

    def _align(self) -> None:
        if (self.start + len(self.out)) % 2:
            self.out += b"\x00"

    def here(self) -> int:
        self._align()
        return self.start + len(self.out)

    def value_bytes(self, e: _Entry) -> bytes:
        if isinstance(e.values, bytes):
            return e.values
        code, _ = _TYPES[e.type]
        n = len(e.values)
        return struct.pack(self.order + code[0] * n, *e.values)

    def entry(self, tag: int, typ: int, count: int, raw: bytes) -> bytes:
        """One IFD entry; values that do not fit inline are appended now."""
        inline = 8 if self.big else 4
        if len(raw) <= inline:
            field = raw.ljust(inline, b"\x00")
        else:
            at = self.here()
            self.out += raw
            field = struct.pack(self.order + ("Q" if self.big else "I"), at)
        head = "HHQ" if self.big else "HHI"
        return struct.pack(self.order + head, tag, typ, count) + field

    def ifd(self, entries: list[bytes], next_ifd: int = 0) -> int:
        """Write an IFD of prepared entries (sorted by tag); returns its offset."""
        entries = sorted(entries, key=lambda b: struct.unpack_from(self.order + "H", b)[0])
        at = self.here()
        if self.big:
            self.out += struct.pack(self.order + "Q", len(entries))
            self.out += b"".join(entries) + struct.pack(self.order + "Q", next_ifd)
        else:
            self.out += struct.pack(self.order + "H", len(entries))
            self.out += b"".join(entries) + struct.pack(self.order + "I", next_ifd)
        return at

    def sub_ifd(self, entries: list[_Entry]) -> int:
        prepared = []
        for e in entries:
            if e.sub is not None:
                prepared.append(self.pointer(e.tag, self.sub_ifd(e.sub)))
            else:
                prepared.append(self.entry(e.tag, e.type, e.count, self.value_bytes(e)))
        return self.ifd(prepared)

    def pointer(self, tag: int, offset: int) -> bytes:
        if self.big:
            return self.entry(tag, 18, 1, struct.pack(self.order + "Q", offset))
        return self.entry(tag, 4, 1, struct.pack(self.order + "I", offset))


def _read_first_ifd(data: bytes, order: str, big: bool, offset: int) -> tuple[list[bytes], int]:
    """Raw entries of a TIFF IFD (values that live elsewhere keep their absolute offsets)."""
    if big:
        (count,) = struct.unpack_from(order + "Q", data, offset)
        size, base = 20, offset + 8
        entries = [data[base + size * k : base + size * (k + 1)] for k in range(count)]
        (next_ifd,) = struct.unpack_from(order + "Q", data, base + size * count)
    else:
        (count,) = struct.unpack_from(order + "H", data, offset)
        size, base = 12, offset + 2
        entries = [data[base + size * k : base + size * (k + 1)] for k in range(count)]
        (next_ifd,) = struct.unpack_from(order + "I", data, base + size * count)
    return entries, next_ifd


IMAGE_DESCRIPTION, SOFTWARE = 270, 305


def exif_text(blob: bytes | None, tag: int) -> str | None:
    """The ASCII value of `tag` in the first IFD of an EXIF blob (UTF-8 tolerated), or None."""
    if not blob:
        return None
    try:
        entries = parse_exif(blob)
    except (ValueError, struct.error):
        return None
    for e in entries:
        if e.tag == tag and isinstance(e.values, bytes):
            return e.values.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    return None


def _ascii(value: str) -> bytes:
    # EXIF ASCII is 7-bit in the standard; UTF-8 is what every current reader accepts.
    return value.encode("utf-8") + b"\x00"


def exif_blob(master_exif: bytes | None, text: Mapping[int, str]) -> bytes:
    """A small EXIF blob for an access copy: "Exif\\0\\0" + a little-endian TIFF with IFD0 only.

    IFD0 holds `text` (ASCII tags, e.g. ImageDescription and Software) and the master's
    descriptive tags (camera, date, artist, copyright) that `text` does not replace. No
    EXIF/GPS sub-IFD and no orientation: the access pixels are upright.
    """
    carried: list[_Entry] = []
    if master_exif:
        try:
            carried = [e for e in parse_exif(master_exif) if e.tag in _DESCRIPTIVE]
        except (ValueError, struct.error):
            carried = []
    writer = _Writer("<", False, 8)
    prepared = [
        writer.entry(e.tag, e.type, e.count, writer.value_bytes(e))
        for e in carried
        if e.tag not in text
    ]
    for tag, value in text.items():
        raw = _ascii(value)
        prepared.append(writer.entry(tag, 2, len(raw), raw))
    first = writer.ifd(prepared)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", first) + bytes(writer.out)


def append_exif(path: Path, blob: bytes) -> bool:
    """Append the EXIF of `blob` to the TIFF at `path` in place; False when nothing to add."""
    return update_first_ifd(path, blob)


def update_first_ifd(
    path: Path, exif: bytes | None = None, text: Mapping[int, str] | None = None
) -> bool:
    """Append the EXIF of `exif` and set the ASCII tags `text` in the TIFF at `path`, in place.

    `text` (e.g. {270: description, 305: software}) replaces those tags of the first IFD and
    wins over the master's. False when there was nothing to add.
    """
    text = dict(text or {})
    entries_exif: list[_Entry] = []
    if exif:
        try:
            entries_exif = parse_exif(exif)
        except (ValueError, struct.error):
            entries_exif = []
    if not entries_exif and not text:
        return False
    path = Path(path)
    with open(path, "r+b") as f:
        header = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(header[:2])
        if order is None:
            raise ValueError(f"{path} is not a TIFF")
        (magic,) = struct.unpack_from(order + "H", header, 2)
        big = magic == 43
        first = struct.unpack_from(order + ("Q" if big else "I"), header, 8 if big else 4)[0]
        # The first IFD and what follows it fit in the head of a tiled file's metadata; read
        # generously (entries only, never pixel data).
        f.seek(first)
        ifd_data = f.read(65536)
        entries, next_ifd = _read_first_ifd(ifd_data, order, big, 0)
        entries = [e for e in entries if struct.unpack_from(order + "H", e)[0] not in text]
        existing = {struct.unpack_from(order + "H", e)[0] for e in entries} | set(text)
        f.seek(0, 2)
        end = f.tell()
        writer = _Writer(order, big, end)
        added = []
        for tag, value in text.items():
            raw = _ascii(value)
            added.append(writer.entry(tag, 2, len(raw), raw))
        for e in entries_exif:
            if e.sub is not None and e.tag in (EXIF_IFD, GPS_IFD) and e.tag not in existing:
                added.append(writer.pointer(e.tag, writer.sub_ifd(e.sub)))
            elif e.tag in _DESCRIPTIVE and e.tag not in existing:
                added.append(writer.entry(e.tag, e.type, e.count, writer.value_bytes(e)))
        if not added:
            return False
        new_first = writer.ifd(entries + added, next_ifd)
        f.seek(end)
        f.write(writer.out)
        f.seek(8 if big else 4)
        f.write(struct.pack(order + ("Q" if big else "I"), new_first))
    return True

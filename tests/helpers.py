"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to prove masters are untouched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """The four kinds of broken master the flow must survive; name -> expected error fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    rng = np.random.default_rng(0)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    (folder / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (folder / "notes.tif").write_text("This is a text file, not a TIFF.\n")
    # A TIFF header pointing at an IFD full of garbage.
    (folder / "unreadable.tif").write_bytes(
        b"II*\x00\x08\x00\x00\x00" + bytes(rng.integers(0, 256, 512, dtype=np.uint8))
    )
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "JPEG",
        "notes.tif": "not a recognised image",
        "unreadable.tif": "TIFF",
    }

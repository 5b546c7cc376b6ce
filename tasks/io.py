"""Storage helpers shared by the tasks: where intermediates live, how pixels move between stages.

Stages exchange `ImageRef`s (a URI and a sha256); the pixels themselves go through the
destination's work area (`DEST/.daguerre/work/...`), so any worker that can reach DEST can pick
up the next stage.
"""

from __future__ import annotations

import hashlib
import posixpath

import numpy as np

from daguerre.imaging import io as imgio
from daguerre.records import AssetFacts, ImageRef
from daguerre.storage import Storage, open_storage

WORK_ROOT = ".daguerre/work"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def work_prefix(run_id: int, asset_sha256: str) -> str:
    return f"{WORK_ROOT}/run-{run_id}/{asset_sha256[:16]}"


def source_storage(source: str) -> Storage:
    # Masters are only ever opened read-only.
    return open_storage(source, read_only=True)


def dest_storage(dest: str) -> Storage:
    return open_storage(dest)


def derivative_key(relative_path: str, suffix: str) -> str:
    """`album/photo.jpg` -> `album/photo.jpg.restored.tif`: mirrors the source, never collides."""
    return f"{relative_path}.{suffix}"


def write_pixels(dest: str, key: str, pixels: np.ndarray) -> ImageRef:
    data = imgio.array_to_npy_bytes(np.ascontiguousarray(pixels, dtype=np.float32))
    storage = dest_storage(dest)
    storage.write_bytes(key, data)
    return ImageRef(
        uri=storage.uri_for(key),
        sha256=sha256_bytes(data),
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
    )


def read_master(source: str, asset: AssetFacts) -> bytes:
    return source_storage(source).read_bytes(asset.relative_path)


def read_pixels(source: str, dest: str, ref: ImageRef, asset: AssetFacts, max_pixels: int):
    """Pixels behind a reference: the decoded master, or an intermediate in the work area."""
    if ref.uri == asset.source_uri:
        return imgio.decode(read_master(source, asset), max_pixels=max_pixels).pixels
    storage = dest_storage(dest)
    key = storage.key_for(ref.uri)
    if key is None:
        raise ValueError(f"intermediate {ref.uri} is not under {dest}")
    data = storage.read_bytes(key)
    if sha256_bytes(data) != ref.sha256:
        raise OSError(f"intermediate {ref.uri} changed since it was written (sha256 mismatch)")
    return imgio.npy_bytes_to_array(data)


def relative_join(*parts: str) -> str:
    return posixpath.join(*parts)

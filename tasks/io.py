"""Storage helpers shared by the tasks: where intermediates live, how pixels move between stages.

Stages exchange `ImageRef`s (a URI and a sha256); the pixels themselves are tiled TIFFs in the
destination's work area (`DEST/.daguerre/work/...`), so any worker that can reach DEST can pick
up the next stage. Pixels are never held whole: a stage opens its input lazily from a local
file (the file itself for a local folder, a download into a scratch folder for S3), streams it
tile by tile into a scratch file and hands that file to DEST.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path

from daguerre.imaging.large import MaskFile, Master, VipsSource, open_master
from daguerre.records import PAGE_MARK as PAGE_MARK  # re-exported: tasks address pages by it
from daguerre.records import AssetFacts, ImageRef, split_page
from daguerre.records import page_path as page_path
from daguerre.storage import LocalStorage, Storage, open_storage, sha256_stream

WORK_ROOT = ".daguerre/work"
# Scratch folders of a local DEST live beside the work area (same file system: results move
# there by rename); for S3 they go to DAGUERRE_SCRATCH or the system's temporary folder.
SCRATCH_ROOT = ".daguerre/scratch"
SCRATCH_ENV = "DAGUERRE_SCRATCH"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def work_prefix(run_id: int, asset_sha256: str, page: int = 0) -> str:
    """The work-area folder of one asset in one run: page N > 0 of a multi-page master gets
    its own (`<sha>.page-N`), a sibling of page 0's, so pages never share or delete each
    other's intermediates (prefixes are folders: deleting one leaves its siblings)."""
    folder = f"{asset_sha256[:16]}.page-{page}" if page else asset_sha256[:16]
    return f"{WORK_ROOT}/run-{run_id}/{folder}"


def source_storage(source: str) -> Storage:
    # Masters are only ever opened read-only.
    return open_storage(source, read_only=True)


def dest_storage(dest: str) -> Storage:
    return open_storage(dest)


def derivative_key(relative_path: str, suffix: str) -> str:
    """`album/photo.jpg` -> `album/photo.jpg.restored.tif`: mirrors the source, never collides.

    Page N > 0 of a multi-page master: `album/scan.tif.page-N.restored.tif`.
    """
    key, page = split_page(relative_path)
    return f"{key}.page-{page}.{suffix}" if page else f"{key}.{suffix}"


def local_path(storage: Storage, key: str) -> Path | None:
    """The file behind a key when the storage is a local folder, else None."""
    return Path(storage.uri_for(key)) if isinstance(storage, LocalStorage) else None


@contextlib.contextmanager
def scratch(dest: str) -> Iterator[Path]:
    """A private temporary folder for one stage, removed afterwards."""
    storage = dest_storage(dest)
    parent = local_path(storage, SCRATCH_ROOT) if isinstance(storage, LocalStorage) else None
    if parent is None and os.environ.get(SCRATCH_ENV):
        parent = Path(os.environ[SCRATCH_ENV])
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stage-", dir=parent) as folder:
        yield Path(folder)


@contextlib.contextmanager
def fetched(storage: Storage, key: str, sha256: str | None, folder: Path) -> Iterator[Path]:
    """A local file holding `key`: the file itself for a local folder, else a download.

    With `sha256` the content is checked (streamed) before use.
    """
    path = local_path(storage, key)
    if path is None:
        path = storage.download_to(key, folder / posixpath.basename(key))
    if sha256 is not None and sha256_file(path) != sha256:
        raise OSError(f"{storage.uri_for(key)} changed since it was recorded (sha256 mismatch)")
    yield path


@contextlib.contextmanager
def master_file(source: str, asset: AssetFacts, folder: Path) -> Iterator[Path]:
    """The master as a local file, its sha256 checked against the catalog's."""
    key, _ = split_page(asset.relative_path)
    with fetched(source_storage(source), key, asset.sha256, folder) as path:
        yield path


@contextlib.contextmanager
def opened_master(
    source: str, asset: AssetFacts, folder: Path, max_pixels: int
) -> Iterator[Master]:
    _, page = split_page(asset.relative_path)
    with master_file(source, asset, folder) as path:
        yield open_master(path, max_pixels=max_pixels, page=page)


@contextlib.contextmanager
def work_file(dest: str, ref: ImageRef, folder: Path) -> Iterator[Path]:
    """An intermediate from the work area as a local file, its sha256 checked."""
    storage = dest_storage(dest)
    key = storage.key_for(ref.uri)
    if key is None:
        raise ValueError(f"intermediate {ref.uri} is not under {dest}")
    with fetched(storage, key, ref.sha256, folder) as path:
        yield path


@contextlib.contextmanager
def open_pixels(
    source: str, dest: str, ref: ImageRef, asset: AssetFacts, folder: Path, max_pixels: int
) -> Iterator[VipsSource]:
    """Pixels behind a reference, lazily: the master, or an intermediate in the work area."""
    if ref.uri == asset.source_uri:
        with opened_master(source, asset, folder, max_pixels) as master:
            yield master.source()
    else:
        with work_file(dest, ref, folder) as path:
            yield VipsSource(_load(path))


@contextlib.contextmanager
def open_mask(dest: str, ref: ImageRef, folder: Path) -> Iterator[MaskFile]:
    with work_file(dest, ref, folder) as path:
        yield MaskFile(path)


def _load(path: Path):
    import pyvips

    return pyvips.Image.new_from_file(str(path), access="random")


def put_work_file(dest: str, key: str, path: Path, width: int, height: int) -> ImageRef:
    """Hand a finished scratch file to DEST's work area; returns its reference.

    A local DEST gets it by rename (the scratch folder is on the same file system).
    """
    sha = sha256_file(path)
    storage = dest_storage(dest)
    target = local_path(storage, key)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        uri = storage.uri_for(key)
    else:
        uri = storage.write_file(key, path)
    return ImageRef(uri=uri, sha256=sha, width=width, height=height)


def relative_join(*parts: str) -> str:
    return posixpath.join(*parts)

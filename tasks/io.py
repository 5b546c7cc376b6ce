"""Storage helpers shared by the tasks: where intermediates live, how pixels move between stages.

Stages exchange `ImageRef`s (a URI and a sha256); the pixels themselves are tiled TIFFs in the
destination's work area (`DEST/.daguerre/work/...`), so any worker that can reach DEST can pick
up the next stage. Pixels are never held whole: a stage opens its input lazily from a local
file (the file itself for a local folder, a download into a scratch folder for S3), streams it
tile by tile into a scratch file and hands that file to DEST.

Masters on S3 go through a worker-local, content-addressed cache (`MasterCache`): inspect
downloads and hashes a master once, and detect, the first pixel stage and store open the
cached copy instead of downloading it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

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
# The master cache: its folder (default `daguerre-masters` under DAGUERRE_SCRATCH or the system
# temporary folder) and its size bound in bytes (0 turns the cache off).
MASTER_CACHE_ENV = "DAGUERRE_MASTER_CACHE"
MASTER_CACHE_BYTES_ENV = "DAGUERRE_MASTER_CACHE_BYTES"
MASTER_CACHE_FOLDER = "daguerre-masters"
DEFAULT_MASTER_CACHE_BYTES = 20 * 1000**3

log = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def work_prefix(run_id: int, asset_sha256: str, page: int, relative_path: str) -> str:
    """The work-area folder of one asset in one run (tasks use `asset_work_prefix`).

    `<sha[:16]>-<h>` where h is a 12-hex-digit hash of the master's relative path: two
    identical files at different paths in one run get folders of their own, so the first to
    finish cannot clean away the other's intermediates; deterministic, so an audit finds it.
    Page N > 0 of a multi-page master gets its own (`....page-N`), a sibling of page 0's, so
    pages never share or delete each other's intermediates (prefixes are folders: deleting
    one leaves its siblings).
    """
    key, _ = split_page(relative_path)
    folder = asset_sha256[:16] + "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    if page:
        folder += f".page-{page}"
    return f"{WORK_ROOT}/run-{run_id}/{folder}"


def asset_work_prefix(run_id: int, asset: AssetFacts) -> str:
    """The work-area folder of `asset` (one page of one master at one path) in run `run_id`."""
    return work_prefix(run_id, asset.sha256, asset.page, asset.relative_path)


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
    """The master as a local, read-only file whose sha256 is the catalog's.

    A local folder's file is used in place (hashed again here); an S3 master comes from the
    master cache (downloaded and verified on a miss, held so it cannot be evicted while the
    caller reads it), or, with the cache off, is downloaded into `folder` and verified.
    """
    key, _ = split_page(asset.relative_path)
    storage = source_storage(source)
    cache = master_cache() if local_path(storage, key) is None else None
    if cache is None:
        with fetched(storage, key, asset.sha256, folder) as path:
            yield path
        return
    with cache.hold(
        asset.sha256, lambda target: storage.download_to(key, target), storage.uri_for(key)
    ) as path:
        yield path


@dataclass
class InspectedFile:
    """A master being inspected: `path` to read; `keep(sha256)` offers a download to the cache."""

    path: Path
    _cache: MasterCache | None = None

    def keep(self, sha256: str) -> None:
        """Move a download into the master cache (a no-op for a local file or no cache).

        `sha256` must be the hash of `path` as computed by the caller; `path` is gone after.
        """
        if self._cache is not None and self.path.exists():
            self._cache.adopt(self.path, sha256)


@contextlib.contextmanager
def inspected_file(storage: Storage, key: str, folder: Path) -> Iterator[InspectedFile]:
    """`key` as a local file for inspection, before its sha256 is known.

    A local folder's file is used in place. An S3 object is downloaded into the master cache's
    folder (same file system: `keep` moves it into the cache by rename, so later stages find
    it without downloading again), or into `folder` when the cache is off. What is not kept is
    deleted on exit.
    """
    path = local_path(storage, key)
    if path is not None:
        yield InspectedFile(path)
        return
    cache = master_cache()
    if cache is None:
        yield InspectedFile(storage.download_to(key, folder / "master"))
        return
    with cache.staging() as target:
        storage.download_to(key, target)
        yield InspectedFile(target, cache)


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


# ------------------------------------------------------------------------------ master cache


class ContentMismatchError(OSError):
    """A download's sha256 is not the expected one (the object changed since it was hashed)."""


_ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
_STAGING_PREFIX = ".download-"
# A staging file nobody has written for this long belongs to a dead worker (S3 reads time out
# after two minutes): eviction removes it.
STALE_STAGING_S = 6 * 3600.0
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_bytes(text: str) -> int:
    """`"20000000000"`, `"20G"`, `"500M"`, `"1.5T"` (decimal units, optional `B`) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if match is None:
        raise ValueError(f"not a size in bytes: {text!r} (e.g. 20000000000, 500M, 20G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class MasterCache:
    """Downloaded masters, worker-local, content-addressed: `<root>/<sha256>`.

    Contracts:
    - An entry's content has the sha256 of its name: it is downloaded to a staging file in
      `root`, hashed, made read-only (0o444) and renamed into place; a download with another
      hash is deleted and raises `ContentMismatchError`, never cached.
    - The total size of the entries is bounded by `max_bytes`: after each insertion the
      least recently used entries (by mtime, touched on every use) are deleted until the total
      fits, except entries in use, which are skipped (a held entry larger than the bound stays
      until it is released and another insertion evicts it).
    - Safe for threads and processes sharing `root` on one machine: a key lock (filelock)
      makes a miss download once while the others wait; a holder keeps a shared `flock` on
      the entry itself, which eviction must take exclusively (non-blocking) before deleting,
      and the kernel drops it if the holder dies. Key locks are striped over 4096 lock files
      (`.locks/<sha256[:3]>.lock`): lock files cannot be deleted safely while others may wait
      on them, so one per key would pile up forever; two misses on one stripe merely wait
      for each other.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / ".locks").mkdir(mode=0o700, exist_ok=True)

    def entry(self, sha256: str) -> Path:
        if not _ENTRY_NAME.fullmatch(sha256):
            raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
        return self.root / sha256

    def _key_lock(self, sha256: str, timeout: float = -1) -> FileLock:
        return FileLock(self.root / ".locks" / f"{sha256[:3]}.lock", timeout=timeout)

    @contextlib.contextmanager
    def hold(
        self, sha256: str, download: Callable[[Path], object], what: str | None = None
    ) -> Iterator[Path]:
        """The entry for `sha256`, downloaded on a miss by `download(target)`, held until exit.

        `download` must write the whole object to `target` (a path in `root`). Raises
        `ContentMismatchError` when what it wrote does not hash to `sha256`; `what` names the
        object in that message.
        """
        path = self.entry(sha256)
        inserted = False
        with self._key_lock(sha256):
            if not path.exists():
                with self.staging() as target:
                    download(target)
                    got = sha256_file(target)
                    if got != sha256:
                        raise ContentMismatchError(
                            f"{what or 'download'} changed since it was recorded (sha256 "
                            f"mismatch: expected {sha256[:12]}..., got {got[:12]}...)"
                        )
                    self._install(target, path)
                inserted = True
            fd = self._share(path)
        try:
            if inserted:
                self.evict()
            yield path
        finally:
            os.close(fd)  # drops the shared flock

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh, private file name in `root` (same file system as the entries); whatever is
        left at that name on exit is deleted."""
        fd, name = tempfile.mkstemp(dir=self.root, prefix=_STAGING_PREFIX)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def adopt(self, path: Path, sha256: str) -> Path:
        """Move the staging file `path` (in `root`, hashed by the caller) into the cache.

        When the entry already exists the staging file is simply deleted.
        """
        entry = self.entry(sha256)
        if Path(path).parent.resolve() != self.root.resolve():
            raise ValueError(f"{path} is not a staging file of {self.root}")
        with self._key_lock(sha256):
            if entry.exists():
                os.unlink(path)
                _touch(entry)
                return entry
            self._install(Path(path), entry)
        self.evict()
        return entry

    def _install(self, staged: Path, entry: Path) -> None:
        os.chmod(staged, 0o444)  # masters are never modified, cached copies neither
        os.replace(staged, entry)
        _touch(entry)

    @staticmethod
    def _share(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            # Eviction holds an exclusive flock only with the key lock held, as we do here:
            # this never waits.
            fcntl.flock(fd, fcntl.LOCK_SH)
            _touch(path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def entries(self) -> list[tuple[Path, int, int]]:
        """(path, size, mtime_ns) of every entry, least recently used first."""
        found = []
        with os.scandir(self.root) as it:
            for item in it:
                if not _ENTRY_NAME.fullmatch(item.name):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((Path(item.path), st.st_size, st.st_mtime_ns))
        found.sort(key=lambda e: (e[2], e[0].name))
        return found

    def evict(self) -> list[Path]:
        """Delete least recently used entries not in use until the total fits; returns them."""
        removed: list[Path] = []
        with FileLock(self.root / ".locks" / "evict.lock"):
            self._sweep_staging()
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for path, size, _ in entries:
                if total <= self.max_bytes:
                    break
                if self._remove_unused(path):
                    removed.append(path)
                    total -= size
        if removed:
            log.info("master cache %s: evicted %d file(s)", self.root, len(removed))
        return removed

    def _remove_unused(self, path: Path) -> bool:
        try:
            with self._key_lock(path.name, timeout=0):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    return False
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # held by a reader
                else:
                    os.unlink(path)
                    return True
                finally:
                    os.close(fd)
        except LockTimeout:
            return False  # being downloaded or opened right now
        except OSError as exc:
            # A cache that cannot shrink must not fail the stage that happened to insert.
            log.warning("master cache: cannot evict %s: %s", path, exc)
            return False

    def _sweep_staging(self) -> None:
        deadline = time.time() - STALE_STAGING_S
        with os.scandir(self.root) as it:
            for item in it:
                if not item.name.startswith(_STAGING_PREFIX) and not (
                    item.name.startswith(f".{_STAGING_PREFIX}") and item.name.endswith(".tmp")
                ):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if item.stat(follow_symlinks=False).st_mtime < deadline:
                        os.unlink(item.path)


def _touch(path: Path) -> None:
    # mtime is the recency mark (atime is unreliable under noatime/relatime), set explicitly:
    # the kernel's "now" is coarse (a few ms), too coarse to order uses in quick succession.
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))


def master_cache_root() -> Path:
    """`$DAGUERRE_MASTER_CACHE`, else `daguerre-masters` under `$DAGUERRE_SCRATCH` or the
    system's temporary folder."""
    if os.environ.get(MASTER_CACHE_ENV):
        return Path(os.environ[MASTER_CACHE_ENV]).expanduser()
    parent = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
    return Path(parent) / MASTER_CACHE_FOLDER


def master_cache() -> MasterCache | None:
    """This worker's master cache, or None when it is off (`DAGUERRE_MASTER_CACHE_BYTES=0`) or
    its folder belongs to another user (a shared temporary folder: entries are trusted by name,
    so nobody else may be able to plant one)."""
    raw = os.environ.get(MASTER_CACHE_BYTES_ENV)
    max_bytes = parse_bytes(raw) if raw else DEFAULT_MASTER_CACHE_BYTES
    if max_bytes <= 0:
        return None
    root = master_cache_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        if root not in _FOREIGN_ROOTS_WARNED:
            _FOREIGN_ROOTS_WARNED.add(root)
            log.warning("master cache %s belongs to another user: not used", root)
        return None
    return MasterCache(root, max_bytes)


_FOREIGN_ROOTS_WARNED: set[Path] = set()

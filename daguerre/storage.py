"""One storage interface for local folders and S3 buckets (boto3).

Keys are POSIX paths relative to the storage root ("roll-12/scan-0001.tif"). A key may not be
empty, absolute, or contain "", "." or ".." segments, so nothing can escape the root. Listings
skip every key with a segment starting with "." (our work areas live in ``.daguerre/``), but such
keys can still be read, written and deleted directly.

Listings carry a version token per object (:attr:`ObjectInfo.version`), taken from the listing
itself at no extra cost, that changes whenever the object's content can have changed; callers
use it to avoid reading unchanged objects again.

Writes are atomic: a reader sees either the old object or the complete new one, never a partial
one. Read-only storages (masters) refuse every write and delete with :class:`StorageError`.

Every failure surfaces as :class:`StorageError` with a one-line message meant for a human.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024  # 1 MiB: streaming unit for hashing and copies
CONNECT_TIMEOUT_S = 5.0  # an unreachable endpoint must fail in seconds, not minutes
READ_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 3.0  # TCP probe used by S3Storage.check()
# A local file changed less than this long before it was listed gets no version token: a write
# within the same tick of a coarse file clock (a few ms on Linux, 2 s on FAT) could still
# follow unseen and leave the token as it is.
VERSION_SETTLE_NS = 2_000_000_000


class StorageError(Exception):
    """A storage operation failed; ``str(err)`` is a one-line human message."""


class ObjectNotFound(StorageError):  # noqa: N818 - reads better at call sites than ...Error
    """The key (or path) does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: ``key`` is a POSIX path relative to the storage root.

    ``version`` is an opaque token from the listing that changes whenever the content can have
    changed (with ``size``, it fingerprints the object); None when the listing cannot vouch for
    one. Tokens compare only with tokens of the same storage kind. Equality and hashing ignore
    it: an ObjectInfo is still the object (key, size).

    - Local files: ``file:ino=I,mtime=M,ctime=C`` (inode and nanosecond times). Every write
      moves mtime and ctime; ctime also moves when mtime is set back (``touch -d``, ``cp -p``,
      ``rsync -t`` over an existing file) and cannot be set by users; the inode tells a file
      renamed over another apart. None for a file changed within ``VERSION_SETTLE_NS`` of the
      listing (or with a time in the future).
    - S3: ``s3:etag=E,modified=T`` (ETag and LastModified of ListObjectsV2). The ETag follows
      the content (an MD5 for single-part uploads, per upload otherwise); LastModified moves
      with every PUT, which covers servers whose ETags are not content hashes. None when the
      listing has no ETag.
    """

    key: str
    size: int
    version: str | None = field(default=None, compare=False)


# --------------------------------------------------------------------------------------------
# helpers


def sha256_stream(fileobj: BinaryIO) -> tuple[str, int]:
    """Hash a binary stream in 1 MiB chunks; returns (hex digest, number of bytes read)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        chunk = fileobj.read(CHUNK_SIZE)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


def _file_version(st: os.stat_result, listed_at_ns: int) -> str | None:
    """The version token of a local file (see ObjectInfo), None while it has not settled."""
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    if listed_at_ns - changed < VERSION_SETTLE_NS:
        return None
    return _file_token(st)


def _file_token(st: os.stat_result) -> str:
    return f"file:ino={st.st_ino},mtime={st.st_mtime_ns},ctime={st.st_ctime_ns}"


def _s3_version(obj: dict[str, Any]) -> str | None:
    """The version token of an S3 listing entry (see ObjectInfo), None without an ETag."""
    etag = obj.get("ETag")
    if not etag:
        return None
    modified = obj.get("LastModified")
    if isinstance(modified, datetime):
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        modified = modified.astimezone(UTC).isoformat()
    return f"s3:etag={etag},modified={modified or ''}"


def _check_key(key: str) -> str:
    """Validate a key (relative POSIX path, no empty/"."/".." segments) and return it."""
    if not isinstance(key, str) or not key:
        raise StorageError(f"invalid storage key {key!r}: empty")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid storage key {key!r}: must be a relative POSIX path")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}: empty, '.' or '..' segment")
    return key


def _check_prefix(prefix: str) -> str:
    """Normalise a directory prefix ("a/b", "a/b/") to "a/b/"; empty means the whole root."""
    prefix = prefix.strip("/")
    return _check_key(prefix) + "/" if prefix else ""


def _is_hidden(key: str) -> bool:
    return any(seg.startswith(".") for seg in key.split("/"))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _current_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads; read it once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort off Linux)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on directories
    finally:
        os.close(fd)


def _local_path_from_uri(uri: str) -> Path:
    """Turn "file:///x", "~/x", "rel/x" or "/abs/x" into an absolute, normalised Path."""
    if uri.startswith("file://"):
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"unsupported file URI (remote host): {uri}")
        uri = urllib.parse.unquote(parsed.path)
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"unsupported storage URI scheme {scheme!r}: {uri}")
    if not uri:
        raise StorageError("empty storage path")
    return Path(os.path.abspath(os.path.expanduser(uri)))


def _split_s3_uri(uri: str) -> tuple[str, str]:
    """Split "s3://bucket/some/prefix/" into ("bucket", "some/prefix")."""
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"S3 URI has no bucket: {uri}")
    return bucket, prefix.strip("/")


# --------------------------------------------------------------------------------------------
# the interface


class Storage(ABC):
    """A folder or bucket prefix holding objects addressed by relative POSIX keys."""

    uri: str  # root URI: absolute local path, or s3://bucket/prefix
    read_only: bool

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """Absolute URI of ``key`` (absolute path or s3://bucket/prefix/key)."""

    @abstractmethod
    def key_for(self, uri: str) -> str | None:
        """Inverse of :meth:`uri_for`; None when ``uri`` is not strictly inside this root."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects (recursive) under the root, or under directory ``prefix``, sorted by key.

        Keys with a segment starting with "." are skipped.
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A binary stream of the object; the caller closes it (use ``with``)."""

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def version(self, key: str) -> str | None:
        """The object's version token now (as ObjectInfo.version, without the settling wait:
        for noticing a replaced object, not for fingerprints); ObjectNotFound if absent."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Atomically create or replace ``key`` with ``data``; returns its URI."""

    @abstractmethod
    def write_file(self, key: str, path: Path) -> str:
        """Atomically store the local file ``path`` (any size) at ``key``; returns its URI."""

    @abstractmethod
    def download_to(self, key: str, path: Path) -> Path:
        """Copy ``key`` to the local ``path`` (atomic, parents created); returns ``path``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under directory ``prefix`` (hidden ones too); returns the count.

        ``prefix`` is a directory: "a/b" removes "a/b/..." but not "a/bc". An empty prefix is
        refused so a bug cannot wipe a whole root.
        """

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError (one line) if the root is missing or unreachable."""

    @abstractmethod
    def ensure_exists(self) -> None:
        """Create the root folder / bucket if missing (read-only storages only check())."""

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise StorageError(f"refusing to {what} in read-only storage {self.uri}")

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"{type(self).__name__}({self.uri!r}, {mode})"


# --------------------------------------------------------------------------------------------
# local folders


class LocalStorage(Storage):
    """A local (or mounted) folder. ``root`` is made absolute but symlinks are kept as given."""

    def __init__(self, root: Path | str, read_only: bool = False) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        self.read_only = read_only
        self.uri = str(self.root)

    # -- addressing

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def uri_for(self, key: str) -> str:
        return str(self._path(key))

    def key_for(self, uri: str) -> str | None:
        try:
            path = _local_path_from_uri(uri)
        except StorageError:
            return None
        for base, candidate in ((self.root, path), (self.root.resolve(), path.resolve())):
            if candidate != base and candidate.is_relative_to(base):
                return candidate.relative_to(base).as_posix()
        return None

    # -- listing

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = _check_prefix(prefix)
        start = self.root / prefix if prefix else self.root
        if not start.is_dir():
            if not prefix:
                self.check()
            return
        real_root = self.root.resolve()
        # The start of the listing, not each stat's moment: a file changed during a long
        # listing only looks fresher, never older, than it is.
        listed_at_ns = time.time_ns()
        yield from self._walk(start, prefix, real_root, listed_at_ns)

    def _walk(
        self, directory: Path, key_prefix: str, real_root: Path, listed_at_ns: int
    ) -> Iterator[ObjectInfo]:
        """Depth-first walk yielding keys in lexicographic order.

        Sorting entries by name, with "/" appended to directories, yields global key order:
        everything under "a/" sorts exactly where "a/" sorts among its siblings. Symlinked
        directories are not descended into (no duplicates, no loops); symlinked files are
        listed only when they resolve inside the root.
        """
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except PermissionError as exc:
            raise StorageError(f"permission denied: cannot list folder {directory}") from exc
        except FileNotFoundError:
            return  # removed while listing
        except OSError as exc:
            raise StorageError(f"cannot list folder {directory}: {exc.strerror}") from exc

        def sort_name(entry: os.DirEntry[str]) -> str:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            return entry.name + "/" if is_dir else entry.name

        for entry in sorted(entries, key=sort_name):
            key = key_prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), key + "/", real_root, listed_at_ns)
                    continue
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not target.is_relative_to(real_root):
                        log.debug("skipping symlink pointing outside the root: %s", entry.path)
                        continue
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue  # broken symlink or removed while listing
            except PermissionError as exc:
                raise StorageError(f"permission denied: {entry.path}") from exc
            except OSError as exc:
                log.warning("skipping unreadable entry %s: %s", entry.path, exc)
                continue
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(key=key, size=st.st_size, version=_file_version(st, listed_at_ns))

    # -- reading

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file does not exist: {path}") from exc
        except IsADirectoryError as exc:
            raise ObjectNotFound(f"not a file: {path}") from exc
        except PermissionError as exc:
            raise StorageError(f"permission denied: cannot read {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc

    def open_read(self, key: str) -> BinaryIO:
        return self._open(key)

    def read_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            try:
                return f.read()
            except OSError as exc:
                raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def _stat(self, key: str) -> os.stat_result:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file does not exist: {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"not a file: {path}")
        return st

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def version(self, key: str) -> str | None:
        return _file_token(self._stat(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    # -- writing

    def _atomic_write(self, key: str, fill: Any) -> str:
        """Write via a hidden temp file in the target folder, fsync, rename, fsync the folder.

        ``fill(fileobj)`` writes the content. The temp name starts with "." so a crash leftover
        never shows up in list().
        """
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except PermissionError as exc:
            raise StorageError(f"permission denied: cannot write in {path.parent}") from exc
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; act like open()
            os.replace(tmp_name, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, StorageError) or not isinstance(exc, OSError):
                raise
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        _fsync_dir(path.parent)
        return str(path)

    def write_bytes(self, key: str, data: bytes) -> str:
        self._require_writable(f"write {key!r}")
        return self._atomic_write(key, lambda f: f.write(data))

    def write_file(self, key: str, path: Path) -> str:
        self._require_writable(f"write {key!r}")
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file does not exist: {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        with src:
            return self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE))

    def download_to(self, key: str, path: Path) -> Path:
        path = Path(path)
        with self._open(key) as src:
            LocalStorage(path.parent)._atomic_write(
                path.name, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE)
            )
        return path

    # -- deleting

    def delete(self, key: str) -> None:
        self._require_writable(f"delete {key!r}")
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except PermissionError as exc:
            raise StorageError(f"permission denied: cannot delete {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror}") from exc

    def delete_prefix(self, prefix: str) -> int:
        self._require_writable(f"delete {prefix!r}")
        prefix = _check_prefix(prefix)
        if not prefix:
            raise StorageError(f"refusing to delete everything in {self.uri}")
        top = self.root / prefix
        if top.is_symlink() or not top.is_dir():
            return 0
        count = 0
        try:
            # bottom-up, not following symlinks: links are removed, never their targets
            for dirpath, dirnames, filenames in os.walk(top, topdown=False):
                for name in filenames:
                    os.unlink(os.path.join(dirpath, name))
                    count += 1
                for name in dirnames:
                    sub = os.path.join(dirpath, name)
                    if os.path.islink(sub):
                        os.unlink(sub)
                    else:
                        os.rmdir(sub)
            os.rmdir(top)
        except PermissionError as exc:
            raise StorageError(f"permission denied: cannot delete under {top}") from exc
        except OSError as exc:
            raise StorageError(f"cannot delete under {top}: {exc.strerror}") from exc
        return count

    # -- root

    def check(self) -> None:
        kind = "source folder" if self.read_only else "folder"
        if not self.root.exists():
            raise StorageError(f"{kind} does not exist: {self.root}")
        if not self.root.is_dir():
            raise StorageError(f"{kind} is not a directory: {self.root}")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError(f"permission denied: cannot read {kind} {self.root}")
        if not self.read_only and not os.access(self.root, os.W_OK):
            raise StorageError(f"permission denied: cannot write folder {self.root}")

    def ensure_exists(self) -> None:
        if not self.read_only:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except PermissionError as exc:
                raise StorageError(f"permission denied: cannot create folder {self.root}") from exc
            except OSError as exc:
                raise StorageError(
                    f"cannot create folder {self.root}: {exc.strerror or exc}"
                ) from exc
        self.check()


# --------------------------------------------------------------------------------------------
# S3


_client_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_client() -> Any:
    """A shared boto3 S3 client configured from the environment.

    Honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION (else
    us-east-1) and the usual credential chain. Path-style addressing (SeaweedFS, MinIO),
    standard retries (5 attempts) and a short connect timeout. Creating boto3 clients is not
    thread-safe, so creation is locked; the client itself is thread-safe and shared per process
    and per environment (a forked worker gets its own).
    """
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    region = _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1"
    cache_key = (
        os.getpid(),
        endpoint,
        region,
        os.environ.get("AWS_PROFILE"),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    with _client_lock:
        client = _clients.get(cache_key)
        if client is None:
            config = Config(
                region_name=region,
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                max_pool_connections=32,
            )
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint, config=config)
            _clients[cache_key] = client
    return client


_CHECKSUM_FALLBACK_CODES = {
    "NotImplemented",
    "InvalidArgument",
    "InvalidRequest",
    "BadRequest",
    "BadDigest",
    "InvalidDigest",
    "XAmzContentChecksumMismatch",
    "UnsupportedChecksumAlgorithm",
}


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix`` (prefix may be empty)."""

    def __init__(
        self, bucket: str, prefix: str = "", read_only: bool = False, client: Any = None
    ) -> None:
        if not bucket or "/" in bucket:
            raise StorageError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.read_only = read_only
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._sha256_ok: bool | None = None  # does the server accept ChecksumSHA256?

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    @property
    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "AWS S3")

    # -- addressing

    def _full(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_for(self, uri: str) -> str | None:
        if not uri.startswith("s3://"):
            return None
        try:
            bucket, rest = _split_s3_uri(uri)
        except StorageError:
            return None
        if bucket != self.bucket:
            return None
        if self.prefix:
            if not rest.startswith(self.prefix + "/"):
                return None
            rest = rest[len(self.prefix) + 1 :]
        return rest or None

    # -- error mapping

    def _error(self, exc: Exception, what: str) -> StorageError:
        """Map a botocore exception to a one-line StorageError about ``what`` (a URI)."""

        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and what == self._bucket_uri):
                return StorageError(f"bucket does not exist: {self._bucket_uri}")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return ObjectNotFound(f"object does not exist: {what}")
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
                return StorageError(
                    f"permission denied: {what} (check the S3 credentials and policy)"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"S3 rejected the credentials for {what}: {code}")
            message = _one_line(err.get("Message") or exc)
            return StorageError(f"S3 error on {what}: {code or status}: {message}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "or AWS_PROFILE)"
            )
        if isinstance(exc, BotoConnectionError):
            reason = _one_line(getattr(exc, "kwargs", {}).get("error") or exc)
            # urllib3 wraps the useful part: "...: Failed to establish a new connection: [Errno
            # 111] Connection refused"
            reason = reason.rpartition("Failed to establish a new connection: ")[2] or reason
            return StorageError(f"cannot reach S3 endpoint {self.endpoint}: {reason}")
        return StorageError(f"S3 error on {what}: {_one_line(exc) or type(exc).__name__}")

    @property
    def _bucket_uri(self) -> str:
        return f"s3://{self.bucket}"

    # -- listing

    def _list_raw(self, full_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                yield from page.get("Contents", ())
        except Exception as exc:
            raise self._error(exc, self._bucket_uri) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Buffered and sorted here: SeaweedFS returns keys directory by directory ("a/x" before
        # "a-b"), not in the byte order S3 promises. About 100 bytes of memory per key.
        prefix = _check_prefix(prefix)
        base = self.prefix + "/" if self.prefix else ""
        items: list[ObjectInfo] = []
        for obj in self._list_raw(base + prefix):
            key = obj["Key"][len(base) :]
            if not key or key.endswith("/"):
                continue  # "folder" marker objects
            if _is_hidden(key):
                continue
            try:
                _check_key(key)
            except StorageError:
                log.warning("skipping S3 key that is not a clean relative path: %r", obj["Key"])
                continue
            items.append(
                ObjectInfo(key=key, size=int(obj.get("Size", 0)), version=_s3_version(obj))
            )
        items.sort(key=lambda info: info.key)
        yield from items

    # -- reading

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as exc:
            raise self._error(exc, self.uri_for(key)) from exc
        return response["Body"]

    def read_bytes(self, key: str) -> bytes:
        body = self.open_read(key)
        try:
            return body.read()
        except Exception as exc:
            raise self._error(exc, self.uri_for(key)) from exc
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self._error(exc, self.uri_for(key)) from exc
        except Exception as exc:
            raise self._error(exc, self.uri_for(key)) from exc

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(f"object does not exist: {self.uri_for(key)}")
        return int(head["ContentLength"])

    def version(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(f"object does not exist: {self.uri_for(key)}")
        return _s3_version(head)

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    # -- writing

    def write_bytes(self, key: str, data: bytes) -> str:
        """put_object is all-or-nothing; the checksum makes the server reject corrupted bodies."""
        self._require_writable(f"write {key!r}")
        full = self._full(key)
        uri = self.uri_for(key)
        data = bytes(data)
        if self._sha256_ok is not False:
            sha = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ChecksumSHA256=sha)
                self._sha256_ok = True
                return uri
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if self._sha256_ok or code not in _CHECKSUM_FALLBACK_CODES:
                    raise self._error(exc, uri) from exc
                log.info("S3 endpoint rejected ChecksumSHA256 (%s); using Content-MD5", code)
                self._sha256_ok = False
            except Exception as exc:
                raise self._error(exc, uri) from exc
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5)
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return uri

    def write_file(self, key: str, path: Path) -> str:
        """upload_file: one PUT or a multipart upload, visible only once complete."""
        self._require_writable(f"write {key!r}")
        path = Path(path)
        if not path.is_file():
            raise ObjectNotFound(f"file does not exist: {path}")
        uri = self.uri_for(key)
        full = self._full(key)
        if self._sha256_ok is not False:
            try:
                self.client.upload_file(
                    str(path), self.bucket, full, ExtraArgs={"ChecksumAlgorithm": "SHA256"}
                )
                self._sha256_ok = True
                return uri
            except Exception as exc:
                # s3transfer wraps ClientError in S3UploadFailedError (message only)
                if self._sha256_ok or not any(c in str(exc) for c in _CHECKSUM_FALLBACK_CODES):
                    raise self._error(exc, uri) from exc
                log.info("S3 endpoint rejected SHA256 checksums; uploading without")
                self._sha256_ok = False
        try:
            self.client.upload_file(str(path), self.bucket, full)
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return uri

    def download_to(self, key: str, path: Path) -> Path:
        path = Path(path)
        uri = self.uri_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        try:
            self.client.download_file(self.bucket, self._full(key), tmp_name)
            os.chmod(tmp_name, 0o666 & ~_UMASK)
            os.replace(tmp_name, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
            if isinstance(exc, Exception):
                raise self._error(exc, uri) from exc
            raise
        return path

    # -- deleting

    def delete(self, key: str) -> None:
        self._require_writable(f"delete {key!r}")
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as exc:
            raise self._error(exc, self.uri_for(key)) from exc

    def delete_prefix(self, prefix: str) -> int:
        self._require_writable(f"delete {prefix!r}")
        prefix = _check_prefix(prefix)
        if not prefix:
            raise StorageError(f"refusing to delete everything in {self.uri}")
        full_prefix = (self.prefix + "/" if self.prefix else "") + prefix
        keys = [obj["Key"] for obj in self._list_raw(full_prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise self._error(exc, f"s3://{self.bucket}/{full_prefix}") from exc
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} object(s) under s3://{self.bucket}/"
                    f"{full_prefix}, e.g. {first.get('Key')}: {first.get('Code')}"
                )
        return len(keys)

    # -- root

    def _probe_endpoint(self) -> None:
        """Fail in seconds when the endpoint does not accept TCP connections.

        The client retries connection errors with backoff (5 attempts), which is right for
        transient faults but makes a typo'd endpoint hang; one direct connect settles it.
        Skipped when a proxy is configured, since then the endpoint need not be reachable.
        """
        if any(
            os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
        ):
            return
        if getattr(self.client.meta.config, "proxies", None):
            return
        parsed = urllib.parse.urlparse(self.endpoint)
        if not parsed.hostname:
            return
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
            raise StorageError(f"cannot reach S3 endpoint {self.endpoint}: {reason}") from exc

    def check(self) -> None:
        self._probe_endpoint()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(exc, self._bucket_uri) from exc

    def ensure_exists(self) -> None:
        if self.read_only:
            self.check()
            return
        self._probe_endpoint()
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise self._error(exc, self._bucket_uri) from exc
        except Exception as exc:
            raise self._error(exc, self._bucket_uri) from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 rejects an explicit constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, self._bucket_uri) from exc
        except Exception as exc:
            raise self._error(exc, self._bucket_uri) from exc
        self.check()


# --------------------------------------------------------------------------------------------
# entry points


def open_storage(uri: str, *, read_only: bool = False) -> Storage:
    """Open ``s3://bucket/prefix`` or a local path / ``file://`` URI (made absolute)."""
    uri = uri.strip()
    if uri.startswith("s3://"):
        bucket, prefix = _split_s3_uri(uri)
        return S3Storage(bucket, prefix, read_only=read_only)
    return LocalStorage(_local_path_from_uri(uri), read_only=read_only)


def read_uri(uri: str) -> bytes:
    """The bytes of one object: a local path, ``file://`` or ``s3://bucket/key`` URI.

    Raises StorageError (ObjectNotFound when it does not exist). Other schemes are refused:
    nothing is fetched from the network but the configured S3 endpoint.
    """
    storage, key = _storage_and_key(uri)
    return storage.read_bytes(key)


def uri_version(uri: str) -> str | None:
    """The version token of one object (see ``Storage.version``): it changes when the object
    is replaced. Raises StorageError (ObjectNotFound when it does not exist)."""
    storage, key = _storage_and_key(uri)
    return storage.version(key)


def _storage_and_key(uri: str) -> tuple[Storage, str]:
    """The read-only storage holding one object's URI, and the object's key in it."""
    uri = uri.strip()
    if uri.startswith("s3://"):
        parent, _, key = uri.rstrip("/").rpartition("/")
        if not key or parent in ("s3:", "s3:/"):
            raise StorageError(f"{uri}: expected s3://BUCKET/[PREFIX/]KEY")
        return open_storage(parent, read_only=True), key
    path = _local_path_from_uri(uri)
    return open_storage(str(path.parent), read_only=True), path.name


def is_inside(inner_uri: str, outer_uri: str) -> bool:
    """True when ``inner_uri`` equals or lies under ``outer_uri`` (e.g. DEST inside SOURCE).

    S3: same bucket and segment-wise prefix containment. Local: symlinks resolved. Mixed
    kinds are never inside each other.
    """
    inner_s3, outer_s3 = inner_uri.startswith("s3://"), outer_uri.startswith("s3://")
    if inner_s3 != outer_s3:
        return False
    if inner_s3:
        inner_bucket, inner_prefix = _split_s3_uri(inner_uri)
        outer_bucket, outer_prefix = _split_s3_uri(outer_uri)
        if inner_bucket != outer_bucket:
            return False
        if not outer_prefix:
            return True
        return inner_prefix == outer_prefix or inner_prefix.startswith(outer_prefix + "/")
    inner = _local_path_from_uri(inner_uri).resolve()
    outer = _local_path_from_uri(outer_uri).resolve()
    return inner.is_relative_to(outer)

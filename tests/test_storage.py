"""Storage layer against local temp folders and a real SeaweedFS S3 server.

The S3 server comes from the session fixture ``s3_endpoint`` (tests/conftest.py, built on
tests/support/seaweedfs.py); under CI=true it errors rather than skips when it cannot start.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from daguerre import storage as storage_mod
from daguerre.storage import (
    LocalStorage,
    ObjectInfo,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageError,
    is_inside,
    open_storage,
    s3_client,
    sha256_stream,
)

BUCKET = "daguerre-storage-test"


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint: str) -> str:
    """One bucket for this module; each test works under its own random prefix."""
    S3Storage(BUCKET).ensure_exists()
    return BUCKET


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A writable, empty storage of each kind."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "dest", read_only=False)
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield S3Storage(bucket, f"runs/{uuid.uuid4().hex}", read_only=False)


def _keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


# --------------------------------------------------------------------------------------------
# behaviour shared by both kinds


def test_list_nested_sorted_and_hidden_skipped(store: Storage) -> None:
    keys = ["z.tif", "a/x.tif", "a-b.tif", "a.b.tif", "a/b/c/d.tif", "A.tif", "ü.tif"]
    hidden = [".daguerre/work/tmp.tif", "a/.hidden.tif", "a/.cache/y.tif"]
    for key in keys + hidden:
        store.write_bytes(key, key.encode())
    infos = list(store.list())
    assert [i.key for i in infos] == sorted(keys)
    assert infos[0] == ObjectInfo(key="A.tif", size=len(b"A.tif"))
    assert _keys(store, "a") == ["a/b/c/d.tif", "a/x.tif"]
    assert _keys(store, "a/b/") == ["a/b/c/d.tif"]
    assert _keys(store, "missing") == []


def test_read_write_exists_size_delete(store: Storage, tmp_path: Path) -> None:
    assert not store.exists("roll/1.tif")
    uri = store.write_bytes("roll/1.tif", b"first")
    assert uri == store.uri_for("roll/1.tif")
    assert store.key_for(uri) == "roll/1.tif"
    assert store.exists("roll/1.tif")
    assert store.read_bytes("roll/1.tif") == b"first"
    store.write_bytes("roll/1.tif", b"second version")  # replace
    assert store.size("roll/1.tif") == len(b"second version")
    with store.open_read("roll/1.tif") as f:
        assert sha256_stream(f) == (hashlib.sha256(b"second version").hexdigest(), 14)

    src = tmp_path / "big.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    store.write_file("roll/big.bin", src)
    out = store.download_to("roll/big.bin", tmp_path / "down" / "big.bin")
    assert out.read_bytes() == payload
    assert [p.name for p in out.parent.iterdir()] == ["big.bin"]  # no temp files left

    store.delete("roll/1.tif")
    store.delete("roll/1.tif")  # deleting a missing key is fine
    assert not store.exists("roll/1.tif")
    with pytest.raises(ObjectNotFound, match="does not exist"):
        store.read_bytes("roll/1.tif")
    with pytest.raises(ObjectNotFound):
        store.size("roll/1.tif")
    with pytest.raises(ObjectNotFound):
        store.download_to("roll/1.tif", tmp_path / "nothing")


def test_version_changes_when_an_object_is_replaced(store: Storage) -> None:
    uri = store.write_bytes("weights/denoise.safetensors", b"first")
    first = storage_mod.uri_version(uri)
    assert first is not None and first == store.version("weights/denoise.safetensors")
    time.sleep(0.01)  # S3 LastModified and file times move on every write
    store.write_bytes("weights/denoise.safetensors", b"retrained")
    assert storage_mod.uri_version(uri) not in (None, first)
    with pytest.raises(ObjectNotFound):
        store.version("weights/missing.safetensors")


def test_delete_prefix(store: Storage) -> None:
    for key in [".daguerre/run1/a.tif", ".daguerre/run1/sub/b.tif", ".daguerre/run10/c.tif"]:
        store.write_bytes(key, b"x")
    store.write_bytes("keep.tif", b"x")
    assert store.delete_prefix(".daguerre/run1") == 2
    assert not store.exists(".daguerre/run1/a.tif")
    assert store.exists(".daguerre/run10/c.tif")  # a directory prefix, not a string prefix
    assert store.delete_prefix("nothing/here") == 0
    with pytest.raises(StorageError, match="refusing"):
        store.delete_prefix("")
    assert _keys(store) == ["keep.tif"]


def test_invalid_keys_rejected(store: Storage) -> None:
    for bad in ["", "/abs.tif", "../up.tif", "a/../b.tif", "a//b.tif", "./a.tif", "a\\b.tif"]:
        with pytest.raises(StorageError, match="invalid storage key"):
            store.write_bytes(bad, b"x")


def test_read_only_refuses_writes(store: Storage, tmp_path: Path) -> None:
    store.write_bytes("master.tif", b"master")
    ro = open_storage(store.uri, read_only=True)
    assert ro.read_only and ro.read_bytes("master.tif") == b"master"
    src = tmp_path / "f.bin"
    src.write_bytes(b"new")
    for attempt in (
        lambda: ro.write_bytes("master.tif", b"overwrite"),
        lambda: ro.write_bytes("other.tif", b"new"),
        lambda: ro.write_file("master.tif", src),
        lambda: ro.delete("master.tif"),
        lambda: ro.delete_prefix("a"),
    ):
        with pytest.raises(StorageError, match="read-only"):
            attempt()
    assert store.read_bytes("master.tif") == b"master"
    assert _keys(store) == ["master.tif"]


# --------------------------------------------------------------------------------------------
# local specifics


def test_local_atomic_write_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = LocalStorage(tmp_path, read_only=False)
    dest.write_bytes("a/b.tif", b"old")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.tif"]
    assert (tmp_path / "a" / "b.tif").stat().st_mode & 0o777 == 0o666 & ~storage_mod._UMASK

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_mod.os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left on device"):
        dest.write_bytes("a/b.tif", b"new content")
    monkeypatch.undo()
    assert dest.read_bytes("a/b.tif") == b"old"  # the old object is untouched
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.tif"]


def test_local_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "real.tif").write_bytes(b"1234")
    (outside / "secret.tif").write_bytes(b"secret")
    (root / "inside-link.tif").symlink_to(root / "sub" / "real.tif")
    (root / "outside-link.tif").symlink_to(outside / "secret.tif")
    (root / "outside-dir").symlink_to(outside, target_is_directory=True)
    (root / "broken.tif").symlink_to(root / "nope.tif")
    src = LocalStorage(root, read_only=True)
    assert list(src.list()) == [
        ObjectInfo("inside-link.tif", 4),
        ObjectInfo("sub/real.tif", 4),
    ]


def test_local_uris_and_check(tmp_path: Path) -> None:
    src = LocalStorage(tmp_path / "missing", read_only=True)
    with pytest.raises(StorageError, match=r"^source folder does not exist: /") as err:
        src.check()
    assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="source folder does not exist"):
        list(src.list())
    dest = LocalStorage(tmp_path / "new" / "dest", read_only=False)
    dest.ensure_exists()
    dest.check()
    assert (tmp_path / "new" / "dest").is_dir()
    assert dest.uri == str(tmp_path / "new" / "dest")
    assert dest.uri_for("a/b.tif") == str(tmp_path / "new" / "dest" / "a" / "b.tif")
    assert dest.key_for("file://" + str(tmp_path / "new" / "dest" / "a" / "b.tif")) == "a/b.tif"
    assert dest.key_for(str(tmp_path / "elsewhere.tif")) is None
    assert dest.key_for(dest.uri) is None
    assert dest.key_for("s3://bucket/a.tif") is None


# --------------------------------------------------------------------------------------------
# URIs, containment, hashing


def test_open_storage_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = open_storage("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Storage) and not s3.read_only
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert s3.uri_for("a/b.tif") == "s3://bucket/some/prefix/a/b.tif"
    assert s3.key_for("s3://bucket/some/prefix/a/b.tif") == "a/b.tif"
    assert s3.key_for("s3://bucket/some/prefixed/a.tif") is None
    assert s3.key_for("s3://other/some/prefix/a.tif") is None
    bare = open_storage("s3://bucket", read_only=True)
    assert isinstance(bare, S3Storage) and bare.read_only
    assert (bare.prefix, bare.uri, bare.uri_for("x.tif")) == (
        "",
        "s3://bucket",
        "s3://bucket/x.tif",
    )

    monkeypatch.chdir(tmp_path)
    rel = open_storage("scans/roll1", read_only=True)
    assert isinstance(rel, LocalStorage) and rel.read_only
    assert rel.uri == str(tmp_path / "scans" / "roll1")
    assert open_storage(f"file://{tmp_path}/a%20b").uri == str(tmp_path / "a b")
    assert open_storage(str(tmp_path) + "/x/../y/").uri == str(tmp_path / "y")
    for bad in ["s3://", "s3:///prefix", "gs://bucket/x", "file://host/x", ""]:
        with pytest.raises(StorageError):
            open_storage(bad)


def test_is_inside(tmp_path: Path) -> None:
    assert is_inside("s3://b/src/out", "s3://b/src")
    assert is_inside("s3://b/src/", "s3://b/src")  # equal counts as inside
    assert is_inside("s3://b/anything", "s3://b")
    assert not is_inside("s3://b/src2", "s3://b/src")
    assert not is_inside("s3://b", "s3://b/src")
    assert not is_inside("s3://other/src/out", "s3://b/src")
    assert not is_inside("s3://b/src", str(tmp_path))
    (tmp_path / "src" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "src", target_is_directory=True)
    assert is_inside(str(tmp_path / "src" / "inner"), str(tmp_path / "src"))
    assert is_inside(str(tmp_path / "src"), str(tmp_path / "src"))
    assert is_inside(str(tmp_path / "link" / "inner"), str(tmp_path / "src"))  # resolved
    assert is_inside(f"file://{tmp_path}/src/new/out", str(tmp_path / "src"))
    assert not is_inside(str(tmp_path / "srcx"), str(tmp_path / "src"))
    assert not is_inside(str(tmp_path), str(tmp_path / "src"))


def test_sha256_stream() -> None:
    data = os.urandom(2 * 1024 * 1024 + 17)  # crosses the 1 MiB chunk boundary
    assert sha256_stream(io.BytesIO(data)) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_stream(io.BytesIO(b"")) == (hashlib.sha256(b"").hexdigest(), 0)


# --------------------------------------------------------------------------------------------
# S3 specifics


@pytest.mark.s3
def test_s3_check_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3 = open_storage("s3://some-bucket/x")
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"^cannot reach S3 endpoint http://127\.0\.0\.1:1") as e:
        s3.check()
    assert time.monotonic() - start < 5
    assert "\n" not in str(e.value)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        s3.ensure_exists()


@pytest.mark.s3
def test_s3_missing_bucket_and_ensure_exists(s3_endpoint: str) -> None:
    name = f"new-{uuid.uuid4().hex[:12]}"
    dest = S3Storage(name, "out")
    with pytest.raises(StorageError, match=f"^bucket does not exist: s3://{name}$"):
        dest.check()
    with pytest.raises(StorageError, match="bucket does not exist"):
        list(dest.list())
    with pytest.raises(StorageError, match="bucket does not exist"):
        S3Storage(name, read_only=True).ensure_exists()  # sources are never created
    dest.ensure_exists()
    dest.ensure_exists()  # idempotent
    dest.check()
    assert dest.write_bytes("a.tif", b"x") == f"s3://{name}/out/a.tif"
    assert _keys(dest) == ["a.tif"]


@pytest.mark.s3
def test_s3_uses_sha256_checksum_and_skips_markers(s3_bucket: str) -> None:
    dest = S3Storage(s3_bucket, f"runs/{uuid.uuid4().hex}")
    dest.write_bytes("a.tif", b"payload")
    assert dest._sha256_ok is True  # SeaweedFS accepted x-amz-checksum-sha256
    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key=f"{dest.prefix}/folder/", Body=b"")  # marker
    client.put_object(Bucket=s3_bucket, Key=f"{dest.prefix}x/outside.tif", Body=b"")
    assert _keys(dest) == ["a.tif"]


class _NoSha256Client:
    """Proxy to a real client whose put_object rejects ChecksumSHA256 like an older server."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.rejected = 0

    def put_object(self, **kwargs: object) -> object:
        if "ChecksumSHA256" in kwargs:
            self.rejected += 1
            error = {"Error": {"Code": "NotImplemented", "Message": "checksums unsupported"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        assert "ContentMD5" in kwargs
        return self._real.put_object(**kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.s3
def test_s3_falls_back_to_content_md5(s3_bucket: str) -> None:
    fake = _NoSha256Client(s3_client())
    dest = S3Storage(s3_bucket, f"runs/{uuid.uuid4().hex}", client=fake)
    dest.write_bytes("a.tif", b"one")
    dest.write_bytes("b.tif", b"two")
    assert fake.rejected == 1 and dest._sha256_ok is False  # probed once, then remembered
    assert dest.read_bytes("a.tif") == b"one" and dest.read_bytes("b.tif") == b"two"

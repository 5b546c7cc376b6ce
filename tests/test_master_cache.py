"""The worker-local master cache: content-addressed, verified, bounded, shared by threads.

Unit tests use a fake download function; the last test restores a small collection from a
real S3 server (SeaweedFS) and counts what was read from it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from daguerre.tasks.io import (
    ContentMismatchError,
    MasterCache,
    asset_work_prefix,
    master_cache,
    parse_bytes,
    work_prefix,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeRemote:
    """Objects by sha256; `download` writes one to a target path and counts the calls."""

    def __init__(self, *blobs: bytes, delay_s: float = 0.0) -> None:
        self.blobs = {_sha(b): b for b in blobs}
        self.calls: Counter[str] = Counter()
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def download(self, sha256: str, data: bytes | None = None):
        def write(target: Path) -> None:
            with self._lock:
                self.calls[sha256] += 1
            time.sleep(self.delay_s)
            target.write_bytes(self.blobs[sha256] if data is None else data)

        return write


def _leftovers(cache: MasterCache) -> list[str]:
    """Files in the cache folder other than entries and lock files (staging debris)."""
    return [p.name for p in cache.root.iterdir() if p.is_file() and len(p.name) != 64]


def test_miss_downloads_once_then_hits(tmp_path: Path) -> None:
    data = b"a master" * 100
    remote = FakeRemote(data)
    sha = _sha(data)
    cache = MasterCache(tmp_path / "cache", max_bytes=10_000)
    with cache.hold(sha, remote.download(sha)) as path:
        assert path == cache.entry(sha) and path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444  # masters are never modified
    with cache.hold(sha, remote.download(sha)) as again:
        assert again == path and again.read_bytes() == data
    assert remote.calls[sha] == 1
    assert not _leftovers(cache)


def test_hash_mismatch_is_refused_and_not_cached(tmp_path: Path) -> None:
    data = b"what the catalog hashed"
    sha = _sha(data)
    remote = FakeRemote(data)
    cache = MasterCache(tmp_path / "cache", max_bytes=10_000)
    with (
        pytest.raises(ContentMismatchError, match="s3://b/x.tif changed"),
        cache.hold(sha, remote.download(sha, b"changed since"), "s3://b/x.tif"),
    ):
        pass
    assert isinstance(ContentMismatchError("x"), OSError)
    assert not cache.entry(sha).exists()
    assert not _leftovers(cache)
    # The next attempt downloads again (and this time gets the right bytes).
    with cache.hold(sha, remote.download(sha)) as path:
        assert path.read_bytes() == data
    assert remote.calls[sha] == 2


def test_eviction_keeps_the_most_recently_used(tmp_path: Path) -> None:
    blobs = [bytes([i]) * 100 for i in range(4)]
    a, b, c, d = (_sha(x) for x in blobs)
    remote = FakeRemote(*blobs)
    cache = MasterCache(tmp_path / "cache", max_bytes=250)  # room for two
    for sha in (a, b):
        with cache.hold(sha, remote.download(sha)):
            pass
    with cache.hold(a, remote.download(a)):  # a used again: b is now the oldest
        pass
    with cache.hold(c, remote.download(c)):
        pass
    assert {p.name for p, _, _ in cache.entries()} == {a, c}
    assert sum(size for _, size, _ in cache.entries()) <= cache.max_bytes
    # A file in use is never evicted, even when it is the least recently used.
    with cache.hold(a, remote.download(a)) as held:
        os.utime(held, ns=(0, 0))  # make it the oldest by far
        with cache.hold(d, remote.download(d)):
            pass
        assert held.exists()
    assert {p.name for p, _, _ in cache.entries()} == {a, d}
    assert remote.calls == Counter({a: 1, b: 1, c: 1, d: 1})


def test_concurrent_fetch_of_one_key_downloads_once(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(256 * 1024)
    sha = _sha(data)
    remote = FakeRemote(data, delay_s=0.2)
    cache = MasterCache(tmp_path / "cache", max_bytes=10**9)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker() -> None:
        try:
            start.wait()
            # Each thread makes its own cache object, as separate tasks and processes do.
            with MasterCache(cache.root, cache.max_bytes).hold(sha, remote.download(sha)) as p:
                seen.append(p.read_bytes())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert remote.calls[sha] == 1
    assert len(seen) == 6 and all(s == data for s in seen)
    assert not _leftovers(cache)


_HOLDER = """
import sys
from pathlib import Path
from daguerre.tasks.io import MasterCache

cache = MasterCache(Path(sys.argv[1]), 10**9)
with cache.hold(sys.argv[2], lambda target: target.write_bytes(sys.argv[3].encode())):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_an_entry_held_by_another_process_is_not_evicted(tmp_path: Path) -> None:
    held_data = b"held elsewhere"
    held = _sha(held_data)
    cache = MasterCache(tmp_path / "cache", max_bytes=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(cache.root), held, held_data.decode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = b"inserted here"
        remote = FakeRemote(other)
        with cache.hold(_sha(other), remote.download(_sha(other))):
            pass  # over the bound: eviction runs, and must skip the other process's entry
        assert cache.entry(held).read_bytes() == held_data
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert cache.entry(held) in cache.evict()  # released: now it may go


def test_adopt_moves_a_staged_file_in_or_drops_a_duplicate(tmp_path: Path) -> None:
    data = b"inspected bytes"
    sha = _sha(data)
    cache = MasterCache(tmp_path / "cache", max_bytes=10_000)
    for _ in range(2):
        with cache.staging() as staged:
            staged.write_bytes(data)
            assert cache.adopt(staged, sha) == cache.entry(sha)
            assert not staged.exists()
    assert cache.entry(sha).read_bytes() == data
    with pytest.raises(ValueError, match="not a staging file"):
        cache.adopt(tmp_path / "elsewhere", sha)
    assert not _leftovers(cache)


def test_settings_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DAGUERRE_MASTER_CACHE", raising=False)
    monkeypatch.delenv("DAGUERRE_MASTER_CACHE_BYTES", raising=False)
    monkeypatch.setenv("DAGUERRE_SCRATCH", str(tmp_path / "scratch"))
    cache = master_cache()
    assert cache is not None
    assert cache.root == tmp_path / "scratch" / "daguerre-masters"
    assert cache.max_bytes == 20 * 1000**3
    monkeypatch.setenv("DAGUERRE_MASTER_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("DAGUERRE_MASTER_CACHE_BYTES", "500M")
    cache = master_cache()
    assert cache is not None and cache.root == tmp_path / "mine"
    assert cache.max_bytes == 500 * 1000**2
    monkeypatch.setenv("DAGUERRE_MASTER_CACHE_BYTES", "0")
    assert master_cache() is None
    assert parse_bytes("20G") == parse_bytes("20000000000") == 20 * 1000**3
    assert parse_bytes("1.5 TB") == 1_500_000_000_000
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_work_areas_are_per_path_not_per_content() -> None:
    from daguerre.records import AssetFacts

    sha = "ab" * 32

    def asset(path: str, page: int = 0) -> AssetFacts:
        return AssetFacts(
            source_uri=f"/a/{path}", relative_path=path, sha256=sha, bytes=1, page=page
        )

    prefixes = [
        asset_work_prefix(3, asset("a.png")),
        asset_work_prefix(3, asset("copy/a.png")),
        asset_work_prefix(3, asset("x.tif")),
        asset_work_prefix(3, asset("x.tif#page=1", page=1)),
    ]
    assert len(set(prefixes)) == 4
    assert not any(a != b and b.startswith(a + "/") for a in prefixes for b in prefixes)
    # Deterministic, so a rerun or an audit finds it; pages stay siblings of page 0.
    assert prefixes[0] == work_prefix(3, sha, 0, "a.png") == asset_work_prefix(3, asset("a.png"))
    assert prefixes[3] == prefixes[2] + ".page-1"
    assert prefixes[0].startswith(f".daguerre/work/run-3/{sha[:16]}-")


# ------------------------------------------------------------------------------ real S3

BUCKET = "master-cache"


def _write_collection(root: Path) -> None:
    import cv2

    from tests.test_multipage import write_multipage

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:48, 0:64]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    root.mkdir(parents=True)
    cv2.imwrite(str(root / "noisy.png"), noisy)
    cv2.imwrite(str(root / "flat.png"), smooth.astype(np.uint8))
    write_multipage(root / "album" / "pages.tif")  # 3 pages: 3 assets, one master


@pytest.mark.flow
@pytest.mark.s3
def test_s3_masters_are_downloaded_once_per_run(
    prefect_harness, s3_endpoint: str, tmp_path: Path, monkeypatch
) -> None:
    import botocore.client
    from prefect.context import TaskRunContext

    from daguerre.catalog import Catalog
    from daguerre.flows.restore import restore_collection
    from daguerre.records import RestorationStatus
    from daguerre.storage import S3Storage, s3_client

    staging = tmp_path / "staging"
    _write_collection(staging)
    client = s3_client()
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    masters = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        key = f"in/{path.relative_to(staging).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        masters[key] = _sha(path.read_bytes())

    gets: Counter[str] = Counter()  # GetObject requests per master key, whoever makes them
    callers: Counter[str] = Counter()  # tasks that downloaded a master
    lock = threading.Lock()
    make_api_call = botocore.client.BaseClient._make_api_call
    download_to = S3Storage.download_to

    def counting_call(self, operation_name, api_params):
        if operation_name == "GetObject" and api_params.get("Key", "").startswith("in/"):
            with lock:
                gets[api_params["Key"]] += 1
        return make_api_call(self, operation_name, api_params)

    def recording_download(self, key, path):
        ctx = TaskRunContext.get()
        with lock:
            callers[ctx.task.name if ctx else "?"] += 1
        return download_to(self, key, path)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting_call)
    monkeypatch.setattr(S3Storage, "download_to", recording_download)
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("DAGUERRE_MASTER_CACHE", str(cache_root))
    monkeypatch.delenv("DAGUERRE_MASTER_CACHE_BYTES", raising=False)

    def run(name: str):
        catalog = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
        Catalog.open(catalog)
        report = restore_collection(
            source=f"s3://{BUCKET}/in",
            dest=str(tmp_path / name),
            catalog_url=catalog,
            steps=["denoise", "tone"],
            device="cpu",
            models={"denoise": "classical"},
            access_format="none",
        )
        assert len(report.images) == 5  # two PNGs and three pages
        assert all(i.status == RestorationStatus.SUCCEEDED for i in report.images), report
        assert (tmp_path / name / "album" / "pages.tif.page-2.restored.tif").is_file()
        assert not [p for p in (tmp_path / name / ".daguerre").rglob("*") if p.is_file()]

    # Cold cache: inspect downloads each master once; detect, the pixel stages and store
    # (five assets, three of them pages of one master) read the cached copies.
    run("cold")
    assert gets == Counter(dict.fromkeys(masters, 1))
    assert callers == Counter({"inspect-master": len(masters)})
    entries = {p.name: p.stat().st_ino for p, _, _ in MasterCache(cache_root, 10**9).entries()}
    assert set(entries) == set(masters.values())

    # Warm cache, a fresh catalog and DEST so everything runs again: only inspect reads S3
    # (it cannot know the hash before reading); the cached copies are not replaced.
    gets.clear()
    callers.clear()
    run("warm")
    assert gets == Counter(dict.fromkeys(masters, 1))
    assert callers == Counter({"inspect-master": len(masters)})
    again = {p.name: p.stat().st_ino for p, _, _ in MasterCache(cache_root, 10**9).entries()}
    assert again == entries

"""Master fingerprints: a rerun reads no unchanged master; a changed one is inspected again.

Storage version tokens, then real flow runs on a local folder with a SQLite catalog (tiny
uncompressed TIFFs, so a new content can keep the old size). The S3 side is in
test_restore_s3_postgres.py, the catalog's side and its migration in test_catalog.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
from sqlalchemy import select
from typer.testing import CliRunner

from daguerre import storage
from daguerre.catalog import Catalog, Fingerprint
from daguerre.catalog.schema import Run
from daguerre.cli import app
from daguerre.records import RestorationStatus
from daguerre.storage import LocalStorage, ObjectInfo

SIZE = (24, 32)  # (H, W)


def _write_tiff(path: Path, seed: int) -> None:
    """An uncompressed RGB TIFF: every seed gives other pixels but the same file size."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), photometric="rgb")


def _versions(root: Path) -> dict[str, str | None]:
    return {info.key: info.version for info in LocalStorage(root, read_only=True).list()}


# ------------------------------------------------------------------------------ storage


def test_local_version_follows_every_change(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(storage, "VERSION_SETTLE_NS", 0)
    path = tmp_path / "a.tif"
    _write_tiff(path, 0)
    first = _versions(tmp_path)["a.tif"]
    assert first is not None and first.startswith("file:")
    assert _versions(tmp_path)["a.tif"] == first  # listing again changes nothing
    time.sleep(0.05)  # past the file clock's tick (a few ms)

    # New content, same size, mtime set back as `cp -p` or `rsync -t` would: ctime moved.
    before = path.stat()
    _write_tiff(path, 1)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = _versions(tmp_path)["a.tif"]
    assert second not in (None, first)


def test_fresh_files_get_no_version(tmp_path: Path, monkeypatch) -> None:
    _write_tiff(tmp_path / "a.tif", 0)
    monkeypatch.setattr(storage, "VERSION_SETTLE_NS", 3600 * 10**9)
    assert _versions(tmp_path) == {"a.tif": None}  # still being written, perhaps
    monkeypatch.setattr(storage, "VERSION_SETTLE_NS", 0)
    assert _versions(tmp_path)["a.tif"] is not None


def test_object_info_compares_without_version() -> None:
    assert ObjectInfo("a", 1, "v1") == ObjectInfo("a", 1) == ObjectInfo("a", 1, "v2")
    assert ObjectInfo("a", 1, "v1").version == "v1"


def test_s3_version_from_the_listing_entry() -> None:
    modified = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    token = storage._s3_version({"ETag": '"abc"', "LastModified": modified, "Size": 3})
    assert token == 's3:etag="abc",modified=2026-01-02T03:04:05+00:00'
    assert storage._s3_version({"ETag": '"abd"', "LastModified": modified}) != token
    assert storage._s3_version({"LastModified": modified}) is None


# ------------------------------------------------------------------------------ the flow


class Reads:
    """Which masters (keys under the source) inspect opened and anything hashed."""

    def __init__(self, monkeypatch, source: Path) -> None:
        import daguerre.tasks.io as io
        import daguerre.tasks.stages as stages

        self.inspected: Counter[str] = Counter()
        self.hashed: Counter[str] = Counter()
        self._lock = threading.Lock()
        opened, hashing = stages.inspected_file, io.sha256_file

        def inspected_file(store, key, folder):
            with self._lock:
                self.inspected[key] += 1
            return opened(store, key, folder)

        def sha256_file(path):
            path = Path(path)
            if path.is_relative_to(source):
                with self._lock:
                    self.hashed[path.relative_to(source).as_posix()] += 1
            return hashing(path)

        monkeypatch.setattr(stages, "inspected_file", inspected_file)
        monkeypatch.setattr(stages, "sha256_file", sha256_file)
        monkeypatch.setattr(io, "sha256_file", sha256_file)

    def clear(self) -> None:
        self.inspected.clear()
        self.hashed.clear()


@pytest.fixture
def collection(prefect_harness, tmp_path: Path, monkeypatch):
    """Three tiny masters, a sidecar and a broken file; versions trusted at once."""
    monkeypatch.setattr(storage, "VERSION_SETTLE_NS", 0)
    source = tmp_path / "masters"
    for seed, key in enumerate(("a.tif", "b.tif", "roll/c.tif")):
        _write_tiff(source / key, seed)
    (source / "notes.xml").write_text("<notes/>\n")
    (source / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Catalog.open(catalog)
    return source, tmp_path / "restored", catalog


def _run(source: Path, dest: Path, catalog: str, **extra):
    from daguerre.flows.restore import restore_collection

    return restore_collection(
        source=str(source),
        dest=str(dest),
        catalog_url=catalog,
        steps=["tone"],
        device="cpu",
        access_format="none",
        **extra,
    )


def _statuses(report) -> dict[str, RestorationStatus]:
    return {image.path: image.status for image in report.images}


GOOD = ("a.tif", "b.tif", "roll/c.tif")
ALL = (*GOOD, "bad.jpg", "notes.xml")


def test_rerun_reads_no_unchanged_master(collection, monkeypatch) -> None:
    source, dest, catalog = collection
    reads = Reads(monkeypatch, source)

    first = _run(source, dest, catalog)
    assert _statuses(first) == {
        **dict.fromkeys(GOOD, RestorationStatus.SUCCEEDED),
        "bad.jpg": RestorationStatus.FAILED,
    }
    assert set(reads.inspected) == set(ALL)
    assert (first.masters, first.masters_reused, first.masters_inspected) == (5, 0, 5)

    # Nothing changed: no master is opened or hashed but the broken one (a failure is always
    # inspected again: another worker or decoder may read it).
    reads.clear()
    second = _run(source, dest, catalog)
    assert _statuses(second) == {
        **dict.fromkeys(GOOD, RestorationStatus.SKIPPED),
        "bad.jpg": RestorationStatus.FAILED,
    }
    assert reads.inspected == Counter({"bad.jpg": 1})
    assert set(reads.hashed) == {"bad.jpg"}
    assert (second.masters_reused, second.masters_inspected) == (4, 1)
    with Catalog(catalog)._begin() as session:
        run = session.get(Run, second.run_id)
        assert run.config["rehash"] is False
        assert run.summary["fingerprints_reused"] == 4
        assert run.summary["masters_inspected"] == 1

    # New content of the same size: a.tif with a new mtime, b.tif with its old mtime put back
    # (only its ctime tells). Both are inspected and restored again; c.tif is not read.
    for key, seed in (("a.tif", 10), ("b.tif", 11)):
        path = source / key
        before = path.stat()
        _write_tiff(path, seed)
        mtime = before.st_mtime_ns + (10**9 if key == "a.tif" else 0)
        os.utime(path, ns=(before.st_atime_ns, mtime))
        assert path.stat().st_size == before.st_size
    reads.clear()
    third = _run(source, dest, catalog)
    assert _statuses(third) == {
        "a.tif": RestorationStatus.SUCCEEDED,
        "b.tif": RestorationStatus.SUCCEEDED,
        "roll/c.tif": RestorationStatus.SKIPPED,
        "bad.jpg": RestorationStatus.FAILED,
    }
    assert set(reads.inspected) == {"a.tif", "b.tif", "bad.jpg"}
    assert "roll/c.tif" not in reads.hashed
    assert third.fixity_mismatches == []


def test_rehash_inspects_every_master_and_reports_silent_changes(collection, monkeypatch) -> None:
    source, dest, catalog = collection
    _run(source, dest, catalog)
    reads = Reads(monkeypatch, source)

    # Pretend a.tif's bytes had another hash when last seen under the same size and version:
    # what bit rot, or a tool that put every time back, would look like.
    cat = Catalog(catalog)
    uri = str(source / "a.tif")
    (stored,) = cat.fingerprints([uri]).values()
    cat.record_fingerprints([stored.model_copy(update={"sha256": "0" * 64})])

    result = CliRunner().invoke(
        app,
        [
            "restore",
            str(source),
            str(dest),
            "--catalog",
            catalog,
            "--steps",
            "tone",
            "--device",
            "cpu",
            "--access-format",
            "none",
            "--rehash",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output  # bad.jpg fails, as always
    assert reads.inspected == Counter(dict.fromkeys(ALL, 1))
    assert result.output.count("already done") == len(GOOD)
    with cat._begin() as session:
        run = session.scalars(select(Run).order_by(Run.id.desc()).limit(1)).one()
        assert run.config["rehash"] is True
        assert run.summary["fingerprints_reused"] == 0
        assert run.summary["fixity_mismatches"] == ["a.tif"]
    # The fingerprint now holds what the file really hashes to.
    assert cat.fingerprints([uri])[uri].sha256 != "0" * 64
    assert isinstance(stored, Fingerprint)

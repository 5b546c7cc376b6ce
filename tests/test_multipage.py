"""Multi-page TIFF masters: each page that is a scan of its own is an asset.

Inspection, the catalog's page identity and its migration, and the real flow end to end on a
local folder with a SQLite catalog (restore, rerun, audit). Images are tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from alembic import command
from sqlalchemy import text
from typer.testing import CliRunner

from daguerre.catalog import Catalog, MatchKind, db
from daguerre.catalog.schema import Asset
from daguerre.cli import app
from daguerre.records import AssetFacts, DerivativeFacts, RestorationStatus, split_page
from daguerre.tasks.io import derivative_key, work_prefix
from daguerre.tasks.stages import inspect_master, scan_pages

CFG = "c" * 64
RGB_SIZE = (48, 64)  # (H, W)
GREY_SIZE = (30, 40)


def _pages(seed: int) -> list[np.ndarray]:
    """Two RGB 8-bit pages of different content, then one 16-bit grey page of another size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : RGB_SIZE[0], 0 : RGB_SIZE[1]]
    first = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    second = rng.integers(0, 256, (*RGB_SIZE, 3), dtype=np.uint8)
    grey = rng.integers(0, 65536, GREY_SIZE, dtype=np.uint16)
    return [first, second, grey]


def write_multipage(path: Path, *, seed: int = 0, thumbnail_at: int | None = None) -> None:
    """A 3-page TIFF; with `thumbnail_at`, a reduced-resolution subfile (NewSubfileType=1)
    is written before that page index (`len(pages)`: at the end)."""
    pages = _pages(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for index, page in enumerate([*pages, None]):
            if index == thumbnail_at:
                tif.write(pages[0][::4, ::4], photometric="rgb", subfiletype=1)
            if page is not None:
                tif.write(page, photometric="rgb" if page.ndim == 3 else "minisblack")


# ------------------------------------------------------------------------------ inspection


def test_inspect_gives_one_asset_per_page(tmp_path: Path) -> None:
    write_multipage(tmp_path / "album" / "x.tif")
    assets = inspect_master.fn(str(tmp_path), "album/x.tif")
    assert [a.page for a in assets] == [0, 1, 2]
    assert [a.relative_path for a in assets] == [
        "album/x.tif",
        "album/x.tif#page=1",
        "album/x.tif#page=2",
    ]
    assert [(a.width, a.height, a.bands, a.bit_depth) for a in assets] == [
        (64, 48, 3, 8),
        (64, 48, 3, 8),
        (40, 30, 1, 16),
    ]
    # The file's facts are shared: one master, one hash, one URI.
    assert len({(a.sha256, a.source_uri, a.bytes) for a in assets}) == 1
    assert all(a.error is None and a.format == "tiff" for a in assets)
    assert [split_page(a.relative_path) for a in assets] == [
        ("album/x.tif", 0),
        ("album/x.tif", 1),
        ("album/x.tif", 2),
    ]


@pytest.mark.parametrize("thumbnail_at, kept", [(1, [0, 2, 3]), (3, [0, 1, 2])])
def test_reduced_resolution_subfiles_are_not_assets(
    tmp_path: Path, thumbnail_at: int, kept: list[int]
) -> None:
    write_multipage(tmp_path / "t.tif", thumbnail_at=thumbnail_at)
    assert scan_pages(tmp_path / "t.tif", 4) == kept
    assets = inspect_master.fn(str(tmp_path), "t.tif")
    assert [a.page for a in assets] == kept
    assert [a.width for a in assets] == [64, 64, 40]  # never the 16x12 thumbnail


def test_old_subfile_type_and_masks_are_skipped_and_page_0_always_kept(tmp_path: Path) -> None:
    pixels = _pages(0)[0]
    with tifffile.TiffWriter(tmp_path / "old.tif") as tif:
        tif.write(pixels, photometric="rgb")
        tif.write(pixels[::4, ::4], photometric="rgb", extratags=[(255, "H", 1, 2, True)])
        tif.write(np.zeros(RGB_SIZE, bool), photometric="minisblack", subfiletype=4)
    assert scan_pages(tmp_path / "old.tif", 3) == [0]
    # A file whose every page is flagged reduced is still one asset (its first page).
    with tifffile.TiffWriter(tmp_path / "only-thumbs.tif") as tif:
        tif.write(pixels, photometric="rgb", subfiletype=1)
        tif.write(pixels[::2, ::2], photometric="rgb", subfiletype=1)
    assert scan_pages(tmp_path / "only-thumbs.tif", 2) == [0]


def test_inspect_single_page_non_image_and_broken(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "one.tif", _pages(1)[1], photometric="rgb")
    (one,) = inspect_master.fn(str(tmp_path), "one.tif")
    assert (one.page, one.relative_path, one.width, one.error) == (0, "one.tif", 64, None)
    (tmp_path / "README.txt").write_text("not an image\n")
    assert inspect_master.fn(str(tmp_path), "README.txt") == []
    (tmp_path / "empty.tif").write_bytes(b"")
    (empty,) = inspect_master.fn(str(tmp_path), "empty.tif")
    assert empty.page == 0 and "empty" in (empty.error or "")


def test_pages_have_their_own_names_and_work_areas() -> None:
    sha = "ab" * 32
    assert derivative_key("x.tif", "restored.tif") == "x.tif.restored.tif"
    assert derivative_key("x.tif#page=2", "restored.tif") == "x.tif.page-2.restored.tif"
    prefixes = [work_prefix(7, sha, page, "x.tif") for page in (0, 1, 10)]
    assert prefixes[0].startswith(f".daguerre/work/run-7/{sha[:16]}-")
    assert len(set(prefixes)) == 3
    # Work areas are folders: none may lie inside another (cleaning one would wipe another).
    assert not any(a != b and b.startswith(a + "/") for a in prefixes for b in prefixes)
    # An odd file name that merely contains the mark is its own key.
    assert split_page("odd#page=two.tif") == ("odd#page=two.tif", 0)


# ------------------------------------------------------------------------------ catalog


def _page_facts(page: int) -> AssetFacts:
    return AssetFacts(
        source_uri="/archive/x.tif",
        relative_path="x.tif" if page == 0 else f"x.tif#page={page}",
        sha256="f" * 64,
        bytes=1234,
        page=page,
        width=64,
        height=48,
    )


def _derivative(page: int) -> DerivativeFacts:
    name = derivative_key(_page_facts(page).relative_path, "restored.tif")
    return DerivativeFacts(uri=f"/dest/{name}", kind="preservation", sha256=f"{page}" * 64,
                           format="tiff", bytes=10)  # fmt: skip


def test_catalog_pages_are_assets(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.sqlite'}")
    cid = catalog.ensure_collection("c", "/archive")
    ids = [catalog.register_asset(cid, _page_facts(page)) for page in (0, 1, 2)]
    assert len(set(ids)) == 3
    assert catalog.register_asset(cid, _page_facts(1)) == ids[1]  # idempotent per page
    run = catalog.start_run(cid, None, "0", {}, CFG)
    for page in (0, 2):
        catalog.record_restoration(
            run, ids[page], CFG, RestorationStatus.SUCCEEDED, None, [], [_derivative(page)]
        )
    assert catalog.find_completed("f" * 64, CFG) == [_derivative(0)]
    assert catalog.find_completed("f" * 64, CFG, page=2) == [_derivative(2)]
    assert catalog.find_completed("f" * 64, CFG, page=1) == []

    histories = catalog.history("/archive/x.tif")
    assert [h.facts.page for h in histories] == [0, 1, 2]
    assert all(h.matched_by == [MatchKind.SOURCE_URI] for h in histories)
    assert histories[1].facts == _page_facts(1)
    (only,) = catalog.history("/archive/x.tif#page=2")
    assert only.asset_id == ids[2] and only.restorations[0].derivatives == [_derivative(2)]
    assert [h.facts.page for h in catalog.history("f" * 64)] == [0, 1, 2]
    assert catalog.history("/archive/x.tif#page=5") == []


def _scalar(catalog: Catalog, sql: str) -> object:
    with catalog.engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_migration_0002_keeps_history_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    catalog = Catalog(url)
    db.upgrade(catalog.engine, "0001")
    with catalog.engine.begin() as conn:
        for sql in (
            "INSERT INTO collections VALUES (1, 'c', '/archive', '2026-01-01 00:00:00')",
            "INSERT INTO assets (id, collection_id, source_uri, relative_path, sha256, bytes,"
            " created_at, updated_at) VALUES (1, 1, '/archive/x.tif', 'x.tif', '" + "f" * 64 + "',"
            " 1234, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            "INSERT INTO runs (id, collection_id, code_version, config, config_hash, started_at,"
            " status) VALUES (1, 1, '0', '{}', '" + CFG + "', '2026-01-01 00:00:00', 'ok')",
        ):
            conn.execute(text(sql))
    aid = 1
    run = 1
    catalog.record_restoration(
        run, aid, CFG, RestorationStatus.SUCCEEDED, None, [], [_derivative(0)]
    )

    # 0001 -> 0002 rebuilds the SQLite table: nothing may cascade away
    db.upgrade(catalog.engine, "0002")
    assert catalog.revision() == "0002"
    assert _scalar(catalog, "SELECT page FROM assets WHERE id = 1") == 0
    assert _scalar(catalog, "PRAGMA foreign_keys") == 1  # switched back on after migrating
    assert catalog.find_completed("f" * 64, CFG) == [_derivative(0)]
    (history,) = catalog.history("/archive/x.tif")
    assert history.asset_id == aid and len(history.restorations) == 1
    assert catalog.register_asset(1, _page_facts(0)) == aid
    page2 = catalog.register_asset(1, _page_facts(2))
    catalog.record_restoration(
        run, page2, CFG, RestorationStatus.SUCCEEDED, None, [], [_derivative(2)]
    )

    # Down again (through Alembic's command, as an operator would): page 2 goes with its
    # restoration and derivative; page 0 keeps its history.
    command.downgrade(db.alembic_config(url), "0001")
    assert catalog.revision() == "0001"
    assert _scalar(catalog, "SELECT count(*) FROM assets") == 1
    assert _scalar(catalog, "SELECT count(*) FROM restorations") == 1
    assert _scalar(catalog, "SELECT count(*) FROM derivatives") == 1
    catalog.close()


# ------------------------------------------------------------------------------ the flow

runner = CliRunner()


@pytest.fixture(scope="module")
def restored(prefect_harness, tmp_path_factory):
    """`x.tif` (3 pages) and `y/thumbs.tif` (3 pages and a thumbnail) restored by the flow."""
    from daguerre.flows.restore import restore_collection

    work = tmp_path_factory.mktemp("multipage")
    source, dest = work / "masters", work / "restored"
    write_multipage(source / "x.tif")
    write_multipage(source / "y" / "thumbs.tif", seed=1, thumbnail_at=1)
    catalog = f"sqlite:///{work / 'catalog.sqlite'}"
    Catalog.open(catalog)
    kwargs = dict(
        source=str(source),
        dest=str(dest),
        catalog_url=catalog,
        steps=["denoise", "tone"],
        device="cpu",
        models={"denoise": "classical"},
        access_format="none",
    )
    first = restore_collection(**kwargs)
    second = restore_collection(**kwargs)
    return source, dest, catalog, first, second


EXPECTED = {
    "x.tif": ("x.tif.restored.tif", (48, 64, 3), np.uint8),
    "x.tif#page=1": ("x.tif.page-1.restored.tif", (48, 64, 3), np.uint8),
    "x.tif#page=2": ("x.tif.page-2.restored.tif", (30, 40), np.uint16),
    "y/thumbs.tif": ("y/thumbs.tif.restored.tif", (48, 64, 3), np.uint8),
    "y/thumbs.tif#page=2": ("y/thumbs.tif.page-2.restored.tif", (48, 64, 3), np.uint8),
    "y/thumbs.tif#page=3": ("y/thumbs.tif.page-3.restored.tif", (30, 40), np.uint16),
}


@pytest.mark.flow
def test_every_page_is_restored_as_its_own_image(restored) -> None:
    _source, dest, catalog, first, _second = restored
    assert {i.path: i.status for i in first.images} == {
        path: RestorationStatus.SUCCEEDED for path in EXPECTED
    }, [i.error for i in first.images]
    for name, shape, dtype in EXPECTED.values():
        with tifffile.TiffFile(dest / name) as tif:
            page = tif.pages[0]
            assert (page.shape, page.dtype) == (shape, np.dtype(dtype)), name
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.restored.tif"))
    assert written == sorted(name for name, _, _ in EXPECTED.values())  # no thumbnail asset
    assert not [p for p in (dest / ".daguerre").rglob("*") if p.is_file()]

    cat = Catalog(catalog)
    with cat.engine.connect() as conn:
        rows = conn.execute(text("SELECT relative_path, page, width, bit_depth FROM assets"))
        assets = {r.relative_path: (r.page, r.width, r.bit_depth) for r in rows}
    assert assets == {
        "x.tif": (0, 64, 8),
        "x.tif#page=1": (1, 64, 8),
        "x.tif#page=2": (2, 40, 16),
        "y/thumbs.tif": (0, 64, 8),
        "y/thumbs.tif#page=2": (2, 64, 8),
        "y/thumbs.tif#page=3": (3, 40, 16),
    }
    assert cat.run_info(first.run_id).status == "succeeded"
    assert cat.run_summary(first.run_id)["succeeded"] == 6


@pytest.mark.flow
def test_rerun_skips_every_page(restored) -> None:
    _source, _dest, catalog, first, second = restored
    assert {i.path: i.status for i in second.images} == {
        path: RestorationStatus.SKIPPED for path in EXPECTED
    }
    assert Catalog(catalog).run_summary(second.run_id)["skipped"] == 6
    with Catalog(catalog).engine.connect() as conn:
        assert conn.scalar(text(f"SELECT count(*) FROM {Asset.__tablename__}")) == 6


@pytest.mark.flow
def test_audit_of_the_file_lists_every_page(restored) -> None:
    source, dest, catalog, first, _second = restored
    master = source / "x.tif"
    result = runner.invoke(app, ["audit", str(master), "--catalog", catalog, "--json"])
    assert result.exit_code == 0, result.output
    histories = json.loads(result.output)
    assert [h["facts"]["page"] for h in histories] == [0, 1, 2]
    for history in histories:
        first_run, rerun = history["restorations"]
        assert (first_run["status"], rerun["status"]) == ("succeeded", "skipped")
        detect = first_run["steps"][0]
        assert detect["stage"] == "detect" and detect["reason"] is None
        assert detect["metrics"]["pages"] == 3
        assert detect["metrics"]["page"] == history["facts"]["page"]
        (preservation,) = [d for d in first_run["derivatives"] if d["kind"] == "preservation"]
        expected = EXPECTED[history["facts"]["relative_path"]][0]
        assert preservation["uri"] == str(dest / expected)
    # One master hash for all pages, but each page's own derivative.
    assert len({h["restorations"][0]["derivatives"][0]["sha256"] for h in histories}) == 3

    one = runner.invoke(app, ["audit", f"{master}#page=1", "--catalog", catalog, "--json"])
    assert one.exit_code == 0, one.output
    assert [h["facts"]["page"] for h in json.loads(one.output)] == [1]

    text_output = runner.invoke(app, ["audit", str(master), "--catalog", catalog])
    assert text_output.exit_code == 0
    for page in (0, 1, 2):
        assert f"page {page} (3 pages in the file)" in text_output.output

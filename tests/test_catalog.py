"""The catalog on real databases: migrations, every Catalog method, idempotency, audits.

Each test that takes ``catalog_url`` runs twice: on a SQLite file and on a fresh PostgreSQL
database (the local server, else a throwaway cluster; see tests/support/postgres.py).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, func, select, text

from daguerre.catalog import Catalog, Fingerprint, MatchKind, db
from daguerre.catalog.schema import (
    Base,
    Derivative,
    MasterFingerprint,
    Restoration,
    RestorationDerivative,
    Step,
)
from daguerre.records import (
    AssetFacts,
    DerivativeFacts,
    RestorationStatus,
    StepFacts,
    StepStatus,
)
from tests.support import postgres

CFG = "c" * 64
WEIGHTS = "w" * 64
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


# -- fixtures (session ones may move to conftest) -----------------------------------------------


@pytest.fixture(scope="session")
def catalog_pg_server() -> Iterator[postgres.PostgresServer]:
    with postgres.postgres_server() as server:
        yield server


@pytest.fixture
def postgres_catalog_url(catalog_pg_server: postgres.PostgresServer) -> Iterator[str]:
    with postgres.fresh_database(catalog_pg_server) as url:
        yield url
        Catalog(url).close()  # pooled connections would otherwise hold the database open


@pytest.fixture
def sqlite_catalog_url(tmp_path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'nested' / 'catalog.sqlite'}"
    yield url
    Catalog(url).close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_catalog_url")


# -- helpers ------------------------------------------------------------------------------------


def master(name: str, *, decoded: bool = True, error: str | None = None) -> AssetFacts:
    facts = AssetFacts(
        source_uri=f"/archive/letters/{name}",
        relative_path=name,
        sha256=sha(f"master:{name}"),
        bytes=123_456_789_012,  # > 2**31: needs BIGINT
        error=error,
    )
    if decoded:
        facts = facts.model_copy(
            update={
                "format": "tiff",
                "width": 640,
                "height": 480,
                "bands": 3,
                "bit_depth": 16,
                "colour_space": "srgb",
                "has_alpha": False,
                "icc_profile_sha256": sha("icc"),
                "ppi": 600.0,
            }
        )
    return facts


def chain(name: str) -> list[StepFacts]:
    """detect -> denoise (classical) -> tone (skipped) -> upscale (model) -> store."""
    m, d1, d2, d3 = (sha(f"{name}:{i}") for i in range(4))
    return [
        StepFacts(stage="detect", order=0, status=StepStatus.APPLIED, operator="detect.v1",
                  input_sha256=m, output_sha256=m, metrics={"scratch_fraction": 0.01},
                  started_at=T0),
        StepFacts(stage="denoise", order=1, status=StepStatus.APPLIED, operator="opencv.nlm",
                  operator_version="4.10", parameters={"h": 7.5, "window": [7, 21]},
                  device="cpu", duration_s=0.25, input_sha256=m, output_sha256=d1,
                  started_at=T0 + timedelta(seconds=1)),
        StepFacts(stage="tone", order=2, status=StepStatus.SKIPPED, operator="opencv.nlm",
                  reason="histogram already full", input_sha256=d1, output_sha256=d1),
        StepFacts(stage="upscale", order=3, status=StepStatus.APPLIED, operator="daguerre-sr-s",
                  operator_version="1", weights_sha256=WEIGHTS, parameters={"scale": 2},
                  device="cuda:0", duration_s=1.5, input_sha256=d1, output_sha256=d2,
                  started_at=T0 + timedelta(seconds=2)),
        StepFacts(stage="store", order=4, status=StepStatus.APPLIED, operator="pyvips",
                  input_sha256=d2, output_sha256=d3),
    ]  # fmt: skip


def outputs(name: str) -> list[DerivativeFacts]:
    return [
        DerivativeFacts(uri=f"/dest/preservation/{name}", kind="preservation",
                        sha256=sha(f"{name}:3"), format="tiff", bytes=5_000_000_000,
                        width=1280, height=960),
        DerivativeFacts(uri=f"/dest/access/{name}.jpg", kind="access",
                        sha256=sha(f"{name}:access"), format="jpeg", bytes=200_000,
                        width=1280, height=960),
    ]  # fmt: skip


def count(catalog: Catalog, model) -> int:
    with catalog.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


# -- tests --------------------------------------------------------------------------------------


def test_import_creates_no_engine() -> None:
    code = (
        "import sqlalchemy, sqlalchemy.engine\n"
        "def boom(*a, **k): raise AssertionError('engine created at import')\n"
        "sqlalchemy.create_engine = sqlalchemy.engine.create_engine = boom\n"
        "import daguerre.catalog, daguerre.catalog.db, daguerre.catalog.api\n"
        "assert not daguerre.catalog.db._engines\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_migrations_match_orm_schema(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    assert catalog.revision() is None
    catalog.upgrade()
    catalog.upgrade()  # a second upgrade is a no-op
    assert catalog.revision() == "0003"
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        # The check can fail: against an empty schema every table is reported.
        assert compare_metadata(context, MetaData()) != []


def test_catalog_lifecycle(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)

    cid = catalog.ensure_collection("letters", "/archive/letters")
    assert catalog.ensure_collection("letters", "s3://archive/letters") == cid
    other_cid = catalog.ensure_collection("copies", "/archive/copies")
    assert other_cid != cid

    # register_asset: idempotent, learns decoded facts, keeps them when a later look is blind.
    a = master("a.tif")
    aid = catalog.register_asset(cid, master("a.tif", decoded=False, error="no codec"))
    assert catalog.register_asset(cid, a) == aid
    assert catalog.register_asset(cid, master("a.tif", decoded=False)) == aid
    bad = master("bad.jpg", decoded=False, error="truncated JPEG")
    bad_id = catalog.register_asset(cid, bad)
    # The same bytes in another collection are another asset.
    copy = a.model_copy(update={"source_uri": "/archive/copies/a.tif"})
    copy_id = catalog.register_asset(other_cid, copy)
    assert len({aid, bad_id, copy_id}) == 3

    config = {"steps": ["denoise", "upscale"], "when": T0, "models": {}}
    run1 = catalog.start_run(cid, "11111111-2222-3333-4444-555555555555", "0.1.0", config, CFG)
    assert catalog.run_info(run1).status == "running"
    assert catalog.find_completed(a.sha256, CFG) == []

    # record_restoration: twice (a retried task) gives one restoration, one set of steps.
    steps, derivatives = chain("a"), outputs("a")
    plan = {"denoise": True, "faces": [[1, 2, 3, 4]]}
    args = (run1, aid, CFG, RestorationStatus.SUCCEEDED, plan)
    rid = catalog.record_restoration(*args, steps[:2], derivatives[:1], started_at=T0)
    assert catalog.record_restoration(*args, steps, derivatives, started_at=T0) == rid
    assert catalog.record_restoration(*args, steps, derivatives, started_at=T0) == rid
    assert count(catalog, Restoration) == 1
    assert count(catalog, Step) == len(steps)
    assert count(catalog, Derivative) == 2
    assert count(catalog, RestorationDerivative) == 2

    failed = catalog.record_restoration(
        run1,
        bad_id,
        CFG,
        "failed",
        None,
        [StepFacts(stage="detect", order=0, status="failed", reason="truncated JPEG")],
        [],
        error="truncated JPEG",
    )
    with pytest.raises(ValueError, match="each stage once"):
        catalog.record_restoration(run1, bad_id, CFG, "failed", None, steps[:1] * 2, [])

    assert catalog.find_completed(a.sha256, CFG) == derivatives
    assert catalog.find_completed(a.sha256, "other-config") == []
    assert catalog.find_completed(bad.sha256, CFG) == []  # failed is not completed

    summary1 = catalog.run_summary(run1)
    assert summary1 == {"succeeded": 1, "failed": 1, "skipped": 0, "total": 2}
    catalog.finish_run(run1, "failed", summary1)
    info = catalog.run_info(run1)
    assert info.status == "failed" and info.finished_at is not None
    assert info.finished_at.tzinfo is not None and info.finished_at.utcoffset() == timedelta(0)
    with pytest.raises(LookupError):
        catalog.finish_run(10_000, "succeeded", {})

    # A second run skips the master and links the very same derivatives (no duplicates); the
    # copy in the other collection is found completed by hash and reuses them too.
    run2 = catalog.start_run(cid, None, "0.1.1", config, CFG)
    done = catalog.find_completed(a.sha256, CFG)
    skipped = catalog.record_restoration(run2, aid, CFG, RestorationStatus.SKIPPED, None, [], done)
    catalog.record_restoration(run2, copy_id, CFG, RestorationStatus.SKIPPED, None, [], done)
    assert count(catalog, Derivative) == 2
    assert catalog.run_summary(run2) == {"succeeded": 0, "failed": 0, "skipped": 2, "total": 2}
    assert catalog.run_summary(10_000)["total"] == 0

    # history by the master's URI: facts and both restorations, in run order.
    (h,) = catalog.history(a.source_uri)
    assert h.asset_id == aid and h.collection == "letters" and h.collection_id == cid
    assert h.matched_by == [MatchKind.SOURCE_URI]
    assert h.facts == a  # decoded facts kept, error of the blind look cleared
    assert [r.restoration_id for r in h.restorations] == [rid, skipped]
    r1, r2 = h.restorations
    assert r1.run.run_id == run1 and r1.run.code_version == "0.1.0"
    assert r1.run.flow_run_id == "11111111-2222-3333-4444-555555555555"
    assert r1.run.status == "failed" and r1.run.config_hash == CFG
    assert r1.status == RestorationStatus.SUCCEEDED and r1.plan == plan
    assert r1.steps == steps and r1.derivatives == derivatives
    assert r1.started_at == T0 and r1.started_at.utcoffset() == timedelta(0)
    assert r2.status == RestorationStatus.SKIPPED and r2.steps == []
    assert r2.derivatives == derivatives and r2.run.flow_run_id is None
    assert r2.run.finished_at is None

    # history by the master's hash: both collections' copies.
    by_sha = catalog.history(a.sha256)
    assert [x.asset_id for x in by_sha] == [aid, copy_id]
    assert all(x.matched_by == [MatchKind.SHA256] for x in by_sha)
    # ... by a derivative's URI or hash: every asset whose restoration produced or reused it.
    for item, kind in (
        (derivatives[1].uri, MatchKind.DERIVATIVE_URI),
        (derivatives[0].sha256, MatchKind.DERIVATIVE_SHA256),
    ):
        found = catalog.history(item)
        assert [x.asset_id for x in found] == [aid, copy_id]
        assert kind in found[0].matched_by
    # The store step's output is the preservation file: both kinds of match are reported.
    assert catalog.history(derivatives[0].sha256)[0].matched_by == [
        MatchKind.DERIVATIVE_SHA256,
        MatchKind.STEP_OUTPUT_SHA256,
    ]
    assert catalog.history(derivatives[1].uri)[0].matched_by == [MatchKind.DERIVATIVE_URI]
    # ... by an intermediate image's hash (a step's output, then input).
    (h,) = catalog.history(steps[1].output_sha256)
    assert h.asset_id == aid
    assert h.matched_by == [MatchKind.STEP_INPUT_SHA256, MatchKind.STEP_OUTPUT_SHA256]
    (h,) = catalog.history(bad.source_uri)
    assert h.facts.error == "truncated JPEG"
    assert [r.restoration_id for r in h.restorations] == [failed]
    assert h.restorations[0].error == "truncated JPEG"
    assert catalog.history("s3://nowhere/nothing.tif") == []
    json.dumps([x.model_dump(mode="json") for x in by_sha])  # what `daguerre audit --json` prints

    # touched_by: applied steps only (the skipped tone step also names opencv.nlm).
    (t,) = catalog.touched_by("opencv.nlm")
    assert (t.asset_id, t.run.run_id, t.restoration_id) == (aid, run1, rid)
    assert t.step == steps[1] and t.derivatives == derivatives
    assert t.source_uri == a.source_uri and t.asset_sha256 == a.sha256
    assert t.collection == "letters" and t.restoration_status == RestorationStatus.SUCCEEDED
    (t,) = catalog.touched_by(WEIGHTS)
    assert t.step.stage == "upscale" and t.step.weights_sha256 == WEIGHTS
    assert catalog.touched_by("never-used") == []
    json.dumps([x.model_dump(mode="json") for x in catalog.touched_by(WEIGHTS)])


def test_rerecord_drops_derivatives_no_longer_produced(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    cid = catalog.ensure_collection("c", "/c")
    aid = catalog.register_asset(cid, master("x.tif"))
    run = catalog.start_run(cid, None, "0", {}, CFG)
    first = [d.model_copy(update={"sha256": sha("stale")}) for d in outputs("x")[:1]]
    catalog.record_restoration(run, aid, CFG, "succeeded", None, chain("x"), first)
    catalog.record_restoration(run, aid, CFG, "succeeded", None, chain("x"), outputs("x"))
    (h,) = catalog.history(master("x.tif").sha256)
    assert h.asset_id == aid
    assert h.restorations[0].derivatives == outputs("x")
    assert count(catalog, Derivative) == 2
    assert catalog.history(sha("stale")) == []


def test_naive_times_are_refused(sqlite_catalog_url: str) -> None:
    catalog = Catalog.open(sqlite_catalog_url)
    cid = catalog.ensure_collection("c", "/c")
    aid = catalog.register_asset(cid, master("x.tif"))
    run = catalog.start_run(cid, None, "0", {}, CFG)
    with pytest.raises(Exception, match="naive datetime"):
        catalog.record_restoration(
            run, aid, CFG, "failed", None, [], [], started_at=datetime(2026, 1, 1)
        )
    assert count(catalog, Restoration) == 0  # the transaction was rolled back


def test_sqlite_settings(sqlite_catalog_url: str) -> None:
    catalog = Catalog.open(sqlite_catalog_url)
    with catalog.engine.connect() as conn:
        assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert conn.scalar(text("PRAGMA busy_timeout")) >= 10_000
    with pytest.raises(Exception, match="FOREIGN KEY"):
        catalog.start_run(999, None, "0", {}, CFG)


def test_sqlite_threads_record_concurrently(sqlite_catalog_url: str) -> None:
    catalog = Catalog.open(sqlite_catalog_url)
    cid = catalog.ensure_collection("c", "/c")
    run = catalog.start_run(cid, None, "0", {}, CFG)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            mine = Catalog(sqlite_catalog_url)  # what each Prefect task does
            for i in range(4):
                name = f"{worker}-{i}.tif"
                aid = mine.register_asset(cid, master(name))
                mine.find_completed(master(name).sha256, CFG)
                mine.record_restoration(
                    run, aid, CFG, "succeeded", None, chain(name), outputs(name)
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert catalog.run_summary(run)["succeeded"] == 24
    assert count(catalog, Derivative) == 48


def test_catalog_pickles_as_its_url(sqlite_catalog_url: str) -> None:
    catalog = Catalog.open(sqlite_catalog_url)
    clone = pickle.loads(pickle.dumps(catalog))
    assert clone.url == sqlite_catalog_url
    assert clone.ensure_collection("c", "/c") == catalog.ensure_collection("c", "/c")


@pytest.mark.postgres
def test_private_postgres_cluster() -> None:
    with postgres.postgres_server(force_private_cluster=True) as server:
        assert server.private and server.port != postgres.DEFAULT_PORT
        with postgres.fresh_database(server) as url:
            catalog = Catalog.open(url)
            assert catalog.ensure_collection("c", "/c") == 1
            catalog.close()


def test_no_postgres_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_running_server", lambda *a, **k: None)
    monkeypatch.setattr(postgres, "_pg_bin_dir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception), postgres.postgres_url():
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(postgres.PostgresUnavailable), postgres.postgres_url():
        pass


def test_catalog_survives_close(sqlite_catalog_url: str) -> None:
    first, second = Catalog.open(sqlite_catalog_url), Catalog(sqlite_catalog_url)
    cid = first.ensure_collection("c", "/c")
    second.close()  # disposes the shared engine under `first`
    assert first.ensure_collection("c", "/c") == cid
    assert first.engine is second.engine


# -- master fingerprints ------------------------------------------------------------------------

INSPECTOR = "test.inspect/1"


def fingerprint(facts: AssetFacts, version: str = "v1", **changes) -> Fingerprint:
    values = {
        "source_uri": facts.source_uri,
        "bytes": facts.bytes,
        "version": version,
        "sha256": facts.sha256,
        "pages": [facts.page],
        "inspector": INSPECTOR,
        **changes,
    }
    return Fingerprint(**values)


def test_fingerprints_recall_unchanged_masters_only(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    cid = catalog.ensure_collection("letters", "/archive/letters")
    a, bad = master("a.tif"), master("bad.jpg", decoded=False, error="truncated JPEG")
    pages = [
        master("album.tif").model_copy(update={"page": n, "relative_path": f"album.tif#page={n}"})
        for n in (0, 2)
    ]
    for facts in (a, bad, *pages):
        catalog.register_asset(cid, facts)
    sidecar = "/archive/letters/notes.xml"
    assert (
        catalog.record_fingerprints(
            [
                fingerprint(a),
                fingerprint(bad),
                fingerprint(pages[0], pages=[0, 2]),
                Fingerprint(
                    source_uri=sidecar, bytes=10, version="v1", sha256=None, inspector=INSPECTOR
                ),
            ]
        )
        == []
    )

    def recall(*listed: tuple[str, int, str], inspector: str = INSPECTOR):
        return catalog.recall_masters(listed, inspector)

    album = pages[0].source_uri
    found = recall(
        (a.source_uri, a.bytes, "v1"),
        (album, a.bytes, "v1"),
        (sidecar, 10, "v1"),
        (bad.source_uri, bad.bytes, "v1"),  # a failure is never reused
        ("/archive/letters/new.tif", 1, "v1"),  # never inspected
    )
    assert found == {a.source_uri: [a], album: pages, sidecar: []}
    # Another version, size or inspector: inspect again.
    assert recall((a.source_uri, a.bytes, "v2")) == {}
    assert recall((a.source_uri, a.bytes + 1, "v1")) == {}
    assert recall((a.source_uri, a.bytes, "v1"), inspector="test.inspect/2") == {}
    assert recall() == {}

    # The same size and version with other content: reported, and the new fingerprint kept.
    moved = a.model_copy(update={"sha256": sha("rotten")})
    assert catalog.record_fingerprints([fingerprint(moved)]) == [a.source_uri]
    assert recall((a.source_uri, a.bytes, "v1")) == {}  # no asset has that sha256 yet
    catalog.register_asset(cid, moved)
    assert recall((a.source_uri, a.bytes, "v1")) == {a.source_uri: [moved]}
    # A changed version with other content is an ordinary change.
    assert catalog.record_fingerprints([fingerprint(a, version="v2")]) == []

    stored = catalog.fingerprints([a.source_uri, sidecar, "/nowhere"])
    assert set(stored) == {a.source_uri, sidecar}
    assert stored[a.source_uri].version == "v2" and stored[a.source_uri].sha256 == a.sha256
    assert stored[a.source_uri].seen_at is not None
    assert stored[a.source_uri].seen_at.utcoffset() == timedelta(0)
    assert stored[sidecar].pages == [] and stored[sidecar].sha256 is None
    assert count(catalog, MasterFingerprint) == 4


def test_fingerprint_of_a_master_with_a_missing_page_is_not_reused(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    cid = catalog.ensure_collection("letters", "/archive/letters")
    a = master("a.tif")
    catalog.register_asset(cid, a)
    catalog.record_fingerprints([fingerprint(a, pages=[0, 1])])
    assert catalog.recall_masters([(a.source_uri, a.bytes, "v1")], INSPECTOR) == {}
    # The latest verdict rules: a page registered with an error since is not reused either.
    catalog.record_fingerprints([fingerprint(a)])
    assert catalog.recall_masters([(a.source_uri, a.bytes, "v1")], INSPECTOR) == {a.source_uri: [a]}
    catalog.register_asset(cid, a.model_copy(update={"error": "no decoder here"}))
    assert catalog.recall_masters([(a.source_uri, a.bytes, "v1")], INSPECTOR) == {}


def test_migration_0003_upgrades_a_0002_catalog(sqlite_catalog_url: str) -> None:
    url = sqlite_catalog_url
    catalog = Catalog(url)
    db.upgrade(catalog.engine, "0002")
    cid = catalog.ensure_collection("letters", "/archive/letters")
    a = master("a.tif")
    aid = catalog.register_asset(cid, a)
    run = catalog.start_run(cid, None, "0.1.0", {}, CFG)
    catalog.record_restoration(run, aid, CFG, RestorationStatus.SUCCEEDED, None, [], outputs("a"))

    catalog.upgrade()
    assert catalog.revision() == "0003"
    with catalog.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    # History untouched; fingerprints work.
    assert catalog.find_completed(a.sha256, CFG) == outputs("a")
    (history,) = catalog.history(a.source_uri)
    assert history.asset_id == aid and len(history.restorations) == 1
    catalog.record_fingerprints([fingerprint(a)])
    found = catalog.recall_masters([(a.source_uri, a.bytes, "v1")], INSPECTOR)
    assert found == {a.source_uri: [a]}

    # Down again: the fingerprints go, nothing else.
    from alembic import command

    command.downgrade(db.alembic_config(url), "0002")
    assert catalog.revision() == "0002"
    with catalog.engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
    assert "master_fingerprints" not in tables
    assert catalog.find_completed(a.sha256, CFG) == outputs("a")

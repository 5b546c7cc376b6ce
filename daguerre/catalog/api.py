"""The catalog facade used by the Prefect tasks and the CLI.

Each method is one transaction (``with Session.begin()``), so a task that retries a call
either sees the whole previous attempt or none of it. Writes are idempotent: registering an
asset or recording a restoration twice leaves the catalog as if it had been done once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Self, TypeVar

from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python
from sqlalchemy import Engine, Select, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from daguerre.catalog import db
from daguerre.catalog.audit import (
    AssetHistory,
    MatchKind,
    RestorationHistory,
    RunInfo,
    TouchedStep,
)
from daguerre.catalog.schema import (
    Asset,
    Base,
    Collection,
    Derivative,
    MasterFingerprint,
    Restoration,
    RestorationDerivative,
    Run,
    Step,
    utcnow,
)
from daguerre.records import (
    AssetFacts,
    DerivativeFacts,
    RestorationStatus,
    StepFacts,
    StepStatus,
    split_page,
)

RUN_RUNNING = "running"

# AssetFacts fields that come from decoding the master; None means "not known".
_DECODED_FIELDS: tuple[str, ...] = (
    "format",
    "width",
    "height",
    "bands",
    "bit_depth",
    "colour_space",
    "has_alpha",
    "icc_profile_sha256",
    "ppi",
)


_T = TypeVar("_T")
# Bound on the values of one IN (...) list: far below every backend's parameter limit.
_IN_CHUNK = 500


class Fingerprint(BaseModel):
    """A master file as its storage listing showed it (``bytes``, ``version``) and what
    inspecting it found: its ``sha256`` (None for a file that is not an image) and the
    ``pages`` kept as assets (empty for a file that is not an image), by the inspection code
    ``inspector``. ``seen_at`` is set by the catalog."""

    source_uri: str
    bytes: int
    version: str
    sha256: str | None
    pages: list[int] = Field(default_factory=list)
    inspector: str
    seen_at: datetime | None = None


def _dialect_insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"catalog backend {dialect!r} is not supported")
    return insert


def _insert_ignore(session: Session, model: type[Base], values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent writers of the same natural key never fail."""
    insert = _dialect_insert(session)
    session.execute(insert(model).values(**values).on_conflict_do_nothing())


def _upsert(session: Session, model: type[Base], key: str, values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE: the last writer's values win, none fails."""
    insert = _dialect_insert(session)
    statement = insert(model).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[key],
            set_={name: statement.excluded[name] for name in values if name != key},
        )
    )


def _chunks(items: Sequence[_T], size: int = _IN_CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _json(value: Any) -> Any:
    """JSON-ready copy (datetimes, enums, paths, tuples, pydantic models converted)."""
    return to_jsonable_python(value)


def _run_info(run: Run) -> RunInfo:
    return RunInfo(
        run_id=run.id,
        flow_run_id=run.flow_run_id,
        collection=run.collection.name,
        code_version=run.code_version,
        config_hash=run.config_hash,
        started_at=run.started_at,
        finished_at=run.finished_at,
        status=run.status,
    )


def _step_facts(step: Step) -> StepFacts:
    return StepFacts(
        stage=step.stage,
        order=step.order,
        status=StepStatus(step.status),
        reason=step.reason,
        operator=step.operator,
        operator_version=step.operator_version,
        weights_sha256=step.weights_sha256,
        parameters=step.parameters,
        device=step.device,
        duration_s=step.duration_s,
        input_sha256=step.input_sha256,
        output_sha256=step.output_sha256,
        metrics=step.metrics,
        started_at=step.started_at,
    )


def _derivative_facts(derivative: Derivative) -> DerivativeFacts:
    return DerivativeFacts(
        uri=derivative.uri,
        kind=derivative.kind,
        sha256=derivative.sha256,
        format=derivative.format,
        bytes=derivative.bytes,
        width=derivative.width,
        height=derivative.height,
    )


def _asset_facts(asset: Asset) -> AssetFacts:
    return AssetFacts(
        source_uri=asset.source_uri,
        relative_path=asset.relative_path,
        sha256=asset.sha256,
        bytes=asset.bytes,
        page=asset.page,
        error=asset.error,
        **{name: getattr(asset, name) for name in _DECODED_FIELDS},
    )


def _restoration_history(restoration: Restoration) -> RestorationHistory:
    return RestorationHistory(
        restoration_id=restoration.id,
        run=_run_info(restoration.run),
        config_hash=restoration.config_hash,
        status=RestorationStatus(restoration.status),
        plan=restoration.plan,
        error=restoration.error,
        started_at=restoration.started_at,
        finished_at=restoration.finished_at,
        steps=[_step_facts(s) for s in restoration.steps],
        derivatives=[_derivative_facts(d) for d in restoration.derivatives],
    )


def _restorations_query() -> Select[tuple[Restoration]]:
    """Restorations with everything a history needs, in run order."""
    return (
        select(Restoration)
        .join(Restoration.run)
        .options(
            selectinload(Restoration.run).selectinload(Run.collection),
            selectinload(Restoration.steps),
            selectinload(Restoration.derivatives),
        )
        .order_by(Run.started_at, Run.id, Restoration.id)
    )


class Catalog:
    """Provenance catalog at a SQLAlchemy URL (``sqlite:///PATH`` or
    ``postgresql+psycopg2://USER@HOST/DB``).

    Cheap to construct and safe to share between threads: the engine is made on first use and
    shared per URL and process. Pickles as its URL (Prefect may ship it to workers).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._sessions: sessionmaker[Session] | None = None

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> Self:
        """A catalog at ``url``, migrated to the latest schema unless ``upgrade`` is False."""
        catalog = cls(url)
        if upgrade:
            catalog.upgrade()
        return catalog

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string(hide_password=True)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])

    @property
    def engine(self) -> Engine:
        return db.get_engine(self.url)

    def _begin(self) -> AbstractContextManager[Session]:
        engine = self.engine
        # Rebuilt when the shared engine changed (disposed by close(), or after a fork).
        if self._sessions is None or self._sessions.kw.get("bind") is not engine:
            self._sessions = sessionmaker(engine, expire_on_commit=False)
        return self._sessions.begin()

    def close(self) -> None:
        """Release this process's pooled connections to the database."""
        self._sessions = None
        db.dispose_engine(self.url)

    # -- schema -------------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Apply the Alembic migrations up to head (a no-op when already there)."""
        db.upgrade(self.engine)

    def revision(self) -> str | None:
        """The schema revision of the database, None when it was never migrated."""
        return db.current_revision(self.engine)

    # -- writes -------------------------------------------------------------------------------

    def ensure_collection(self, name: str, source_uri: str) -> int:
        """The id of collection ``name``, created if new; its source URI is updated to
        ``source_uri`` (a collection keeps its name when its masters move)."""
        with self._begin() as session:
            _insert_ignore(
                session,
                Collection,
                {"name": name, "source_uri": source_uri, "created_at": utcnow()},
            )
            collection = session.scalars(select(Collection).where(Collection.name == name)).one()
            collection.source_uri = source_uri
            return collection.id

    def start_run(
        self,
        collection_id: int,
        flow_run_id: str | None,
        code_version: str,
        config: dict[str, Any],
        config_hash: str,
    ) -> int:
        """Record the start of a run (status "running"); returns its id."""
        with self._begin() as session:
            run = Run(
                collection_id=collection_id,
                flow_run_id=None if flow_run_id is None else str(flow_run_id),
                code_version=code_version,
                config=_json(config),
                config_hash=config_hash,
                started_at=utcnow(),
                status=RUN_RUNNING,
            )
            session.add(run)
            session.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        """Close run ``run_id`` with a final status and summary (LookupError if unknown)."""
        with self._begin() as session:
            result = session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status=status, summary=_json(summary), finished_at=utcnow())
            )
            if result.rowcount != 1:
                raise LookupError(f"no run {run_id} in the catalog")

    def register_asset(self, collection_id: int, facts: AssetFacts) -> int:
        """The id of the master (collection, source_uri, sha256, page), created if new.

        Idempotent. For a known master, decoded facts given now replace the stored ones (None
        never erases a known value), and ``error`` becomes the latest verdict.
        """
        values = facts.model_dump(mode="python")
        now = utcnow()
        with self._begin() as session:
            _insert_ignore(
                session,
                Asset,
                {**values, "collection_id": collection_id, "created_at": now, "updated_at": now},
            )
            asset = session.scalars(
                select(Asset).where(
                    Asset.collection_id == collection_id,
                    Asset.source_uri == facts.source_uri,
                    Asset.sha256 == facts.sha256,
                    Asset.page == facts.page,
                )
            ).one()
            asset.relative_path = facts.relative_path
            asset.bytes = facts.bytes
            asset.error = facts.error
            for name in _DECODED_FIELDS:
                value = values[name]
                if value is not None:
                    setattr(asset, name, value)
            return asset.id

    def record_restoration(
        self,
        run_id: int,
        asset_id: int,
        config_hash: str,
        status: RestorationStatus | str,
        plan: dict[str, Any] | None,
        steps: Sequence[StepFacts],
        derivatives: Sequence[DerivativeFacts],
        error: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> int:
        """Record what run ``run_id`` did to asset ``asset_id``; returns the restoration id.

        One transaction. Calling it again for the same run and asset replaces that
        restoration's fields, steps and derivative links. A derivative whose (uri, sha256) is
        already catalogued (same bytes from an earlier run, or reused by a skip) is linked,
        not duplicated. Times must be timezone-aware; ``finished_at`` defaults to now and
        ``started_at`` to the first step's start, else ``finished_at``.
        """
        status = RestorationStatus(status)
        stages = [s.stage for s in steps]
        if len(set(stages)) != len(stages):
            raise ValueError(f"a restoration records each stage once, got {stages}")
        finished_at = finished_at or utcnow()
        if started_at is None:
            step_starts = [s.started_at for s in steps if s.started_at is not None]
            started_at = min(step_starts, default=finished_at)
        fields = {
            "config_hash": config_hash,
            "status": status.value,
            "plan": _json(plan),
            "error": error,
            "started_at": started_at,
            "finished_at": finished_at,
        }
        with self._begin() as session:
            _insert_ignore(session, Restoration, {"run_id": run_id, "asset_id": asset_id, **fields})
            restoration = session.scalars(
                select(Restoration).where(
                    Restoration.run_id == run_id, Restoration.asset_id == asset_id
                )
            ).one()
            for name, value in fields.items():
                setattr(restoration, name, value)
            rid = restoration.id

            # Replace steps and links wholesale: simpler and safer than diffing a retry.
            session.execute(delete(Step).where(Step.restoration_id == rid))
            session.execute(
                delete(RestorationDerivative).where(RestorationDerivative.restoration_id == rid)
            )
            session.add_all(
                Step(
                    restoration_id=rid,
                    asset_id=asset_id,
                    run_id=run_id,
                    **{
                        **step.model_dump(mode="python", exclude={"parameters", "metrics"}),
                        "status": StepStatus(step.status).value,
                        "parameters": _json(step.parameters),
                        "metrics": _json(step.metrics),
                    },
                )
                for step in steps
            )
            session.flush()

            for derivative in derivatives:
                _insert_ignore(
                    session,
                    Derivative,
                    {
                        **derivative.model_dump(mode="python"),
                        "asset_id": asset_id,
                        "run_id": run_id,
                        "restoration_id": rid,
                        "config_hash": config_hash,
                        "created_at": utcnow(),
                    },
                )
                derivative_id = session.scalars(
                    select(Derivative.id).where(
                        Derivative.uri == derivative.uri, Derivative.sha256 == derivative.sha256
                    )
                ).one()
                _insert_ignore(
                    session,
                    RestorationDerivative,
                    {"restoration_id": rid, "derivative_id": derivative_id},
                )

            # Derivatives first written by an earlier attempt of this restoration and no longer
            # produced by anyone: drop them, or history would show files nobody made.
            session.execute(
                delete(Derivative).where(
                    Derivative.restoration_id == rid,
                    ~exists().where(RestorationDerivative.derivative_id == Derivative.id),
                )
            )
            return rid

    # -- reads --------------------------------------------------------------------------------

    def find_completed(
        self, asset_sha256: str, config_hash: str, page: int = 0
    ) -> list[DerivativeFacts]:
        """Derivatives of the latest succeeded restoration of page ``page`` of a master with
        this hash under this configuration hash (any collection); empty when there is none."""
        with self._begin() as session:
            rid = session.scalars(
                select(Restoration.id)
                .join(Restoration.asset)
                .where(
                    Asset.sha256 == asset_sha256,
                    Asset.page == page,
                    Restoration.config_hash == config_hash,
                    Restoration.status == RestorationStatus.SUCCEEDED.value,
                    exists().where(RestorationDerivative.restoration_id == Restoration.id),
                )
                .order_by(Restoration.finished_at.desc(), Restoration.id.desc())
                .limit(1)
            ).first()
            if rid is None:
                return []
            rows = session.scalars(
                select(Derivative)
                .join(RestorationDerivative, RestorationDerivative.derivative_id == Derivative.id)
                .where(RestorationDerivative.restoration_id == rid)
                .order_by(Derivative.id)
            ).all()
            return [_derivative_facts(d) for d in rows]

    def history(self, item: str) -> list[AssetHistory]:
        """Every master ``item`` designates, with all its restorations in run order.

        ``item`` is a master's source URI, a derivative's URI, or a SHA-256 (of a master, of a
        derivative, or of any step's input or output). Empty when nothing matches. A
        multi-page master's URI (or hash) designates all its pages, one history each;
        ``URI#page=N`` designates page N alone.
        """
        uri, page = split_page(item)
        same_uri = Asset.source_uri == item
        if uri != item:  # URI#page=N: page N of that master (page 0 when N is 0)
            same_uri = (Asset.source_uri == uri) & (Asset.page == page)
        with self._begin() as session:
            matches: dict[int, set[MatchKind]] = defaultdict(set)

            def add(kind: MatchKind, asset_ids: Iterable[int]) -> None:
                for asset_id in asset_ids:
                    matches[asset_id].add(kind)

            add(MatchKind.SOURCE_URI, session.scalars(select(Asset.id).where(same_uri)))
            add(MatchKind.SHA256, session.scalars(select(Asset.id).where(Asset.sha256 == item)))
            for column, kind in (
                (Derivative.uri, MatchKind.DERIVATIVE_URI),
                (Derivative.sha256, MatchKind.DERIVATIVE_SHA256),
            ):
                # The asset that first produced it and every asset whose restoration reused it.
                add(kind, session.scalars(select(Derivative.asset_id).where(column == item)))
                add(
                    kind,
                    session.scalars(
                        select(Restoration.asset_id)
                        .join(RestorationDerivative)
                        .join(Derivative)
                        .where(column == item)
                    ),
                )
            add(
                MatchKind.STEP_INPUT_SHA256,
                session.scalars(select(Step.asset_id).where(Step.input_sha256 == item)),
            )
            add(
                MatchKind.STEP_OUTPUT_SHA256,
                session.scalars(select(Step.asset_id).where(Step.output_sha256 == item)),
            )
            if not matches:
                return []

            assets = session.scalars(
                select(Asset)
                .where(Asset.id.in_(matches))
                .options(selectinload(Asset.collection))
                .order_by(Asset.id)
            ).all()
            by_asset: dict[int, list[RestorationHistory]] = defaultdict(list)
            for restoration in session.scalars(
                _restorations_query().where(Restoration.asset_id.in_(matches))
            ):
                by_asset[restoration.asset_id].append(_restoration_history(restoration))
            order = list(MatchKind)
            return [
                AssetHistory(
                    asset_id=asset.id,
                    collection_id=asset.collection_id,
                    collection=asset.collection.name,
                    facts=_asset_facts(asset),
                    registered_at=asset.created_at,
                    updated_at=asset.updated_at,
                    matched_by=sorted(matches[asset.id], key=order.index),
                    restorations=by_asset[asset.id],
                )
                for asset in assets
            ]

    def touched_by(self, operator_or_weights_sha256: str) -> list[TouchedStep]:
        """Every applied step whose operator id or weights SHA-256 is the argument, with its
        asset, run and the derivatives of that restoration; in run, asset and step order."""
        key = operator_or_weights_sha256
        with self._begin() as session:
            rows = session.execute(
                select(Step, Restoration, Asset)
                .join(Restoration, Step.restoration_id == Restoration.id)
                .join(Asset, Step.asset_id == Asset.id)
                .join(Run, Step.run_id == Run.id)
                .where(
                    or_(Step.operator == key, Step.weights_sha256 == key),
                    Step.status == StepStatus.APPLIED.value,
                )
                .options(
                    selectinload(Restoration.run).selectinload(Run.collection),
                    selectinload(Restoration.derivatives),
                    selectinload(Asset.collection),
                )
                .order_by(Run.started_at, Run.id, Asset.id, Step.order)
            ).all()
            return [
                TouchedStep(
                    asset_id=asset.id,
                    collection=asset.collection.name,
                    source_uri=asset.source_uri,
                    page=asset.page,
                    asset_sha256=asset.sha256,
                    run=_run_info(restoration.run),
                    restoration_id=restoration.id,
                    restoration_status=RestorationStatus(restoration.status),
                    step=_step_facts(step),
                    derivatives=[_derivative_facts(d) for d in restoration.derivatives],
                )
                for step, restoration, asset in rows
            ]

    def recall_masters(
        self, listed: Iterable[tuple[str, int, str]], inspector: str
    ) -> dict[str, list[AssetFacts]]:
        """The facts of every listed master known to be unchanged, by source URI.

        ``listed`` holds (source_uri, bytes, version) as a storage listing gave them. A master
        is known when its fingerprint has that size and version and was made by ``inspector``,
        and the catalog holds an asset without ``error`` for each of its pages (same URI and
        sha256; the latest updated when several collections registered it). It maps to those
        pages' facts in page order, or to [] for a file that is not an image. Masters that are
        not known are absent: inspect them. A failure is never known: decoding depends on the
        worker's decoders and version, so a master with an error is inspected every time.
        The facts' ``relative_path`` is as registered; callers re-base it on their own key.
        """
        wanted = {uri: (size, version) for uri, size, version in listed}
        known: dict[str, list[AssetFacts]] = {}
        with self._begin() as session:
            for uris in _chunks(list(wanted)):
                candidates: dict[str, MasterFingerprint] = {}
                for fp in session.scalars(
                    select(MasterFingerprint).where(MasterFingerprint.source_uri.in_(uris))
                ):
                    if (fp.bytes, fp.version) != wanted[fp.source_uri]:
                        continue
                    if fp.inspector != inspector:
                        continue
                    if not fp.pages:
                        known[fp.source_uri] = []
                    elif fp.sha256 is not None:
                        candidates[fp.source_uri] = fp
                if not candidates:
                    continue
                rows: dict[tuple[str, int], Asset] = {}
                for asset in session.scalars(
                    select(Asset)
                    .where(Asset.source_uri.in_(list(candidates)))
                    .order_by(Asset.updated_at, Asset.id)
                ):
                    fp = candidates[asset.source_uri]
                    if asset.sha256 == fp.sha256 and asset.bytes == fp.bytes:
                        rows[(asset.source_uri, asset.page)] = asset  # the latest wins
                for uri, fp in candidates.items():
                    pages = [rows.get((uri, page)) for page in fp.pages]
                    if all(a is not None and a.error is None for a in pages):
                        known[uri] = [_asset_facts(a) for a in pages if a is not None]
        return known

    def record_fingerprints(self, fingerprints: Sequence[Fingerprint]) -> list[str]:
        """Remember what inspecting these masters found, replacing their earlier fingerprints.

        Record a fingerprint only after the inspection it describes, with the size and version
        of the listing made before that inspection read the file. Returns the source URIs whose
        earlier fingerprint had the same size and version but another sha256: content that
        changed while its storage showed no change (bit rot, a tool that restored the times),
        which a fixity check (inspecting every master) is there to find.
        """
        changed: list[str] = []
        now = utcnow()
        with self._begin() as session:
            for chunk in _chunks(list(fingerprints)):
                earlier = {
                    fp.source_uri: fp
                    for fp in session.scalars(
                        select(MasterFingerprint).where(
                            MasterFingerprint.source_uri.in_([f.source_uri for f in chunk])
                        )
                    )
                }
                for new in chunk:
                    old = earlier.get(new.source_uri)
                    if (
                        old is not None
                        and (old.bytes, old.version) == (new.bytes, new.version)
                        and None not in (old.sha256, new.sha256)
                        and old.sha256 != new.sha256
                    ):
                        changed.append(new.source_uri)
                    values = new.model_dump(mode="python")
                    values["seen_at"] = now
                    _upsert(session, MasterFingerprint, "source_uri", values)
        return changed

    def fingerprints(self, source_uris: Iterable[str]) -> dict[str, Fingerprint]:
        """The stored fingerprints of these masters, by source URI (absent: none stored)."""
        found: dict[str, Fingerprint] = {}
        with self._begin() as session:
            for uris in _chunks(list(dict.fromkeys(source_uris))):
                for fp in session.scalars(
                    select(MasterFingerprint).where(MasterFingerprint.source_uri.in_(uris))
                ):
                    found[fp.source_uri] = Fingerprint(
                        source_uri=fp.source_uri,
                        bytes=fp.bytes,
                        version=fp.version,
                        sha256=fp.sha256,
                        pages=list(fp.pages),
                        inspector=fp.inspector,
                        seen_at=fp.seen_at,
                    )
        return found

    def run_summary(self, run_id: int) -> dict[str, int]:
        """Restorations of run ``run_id`` per status, every status present, plus "total"."""
        with self._begin() as session:
            rows = session.execute(
                select(Restoration.status, func.count())
                .where(Restoration.run_id == run_id)
                .group_by(Restoration.status)
            ).all()
        counts = {s.value: 0 for s in RestorationStatus}
        counts.update({status: n for status, n in rows})
        counts["total"] = sum(n for _, n in rows)
        return counts

    def run_info(self, run_id: int) -> RunInfo:
        """The run ``run_id`` (LookupError if unknown)."""
        with self._begin() as session:
            run = session.get(Run, run_id, options=[selectinload(Run.collection)])
            if run is None:
                raise LookupError(f"no run {run_id} in the catalog")
            return _run_info(run)

"""ORM schema of the catalog: collections, assets, runs, restorations, steps, derivatives, and
the fingerprints of inspected master files.

The Alembic migrations in ``daguerre/catalog/migrations`` must produce exactly this schema
(a test compares them). Change both together: edit the models here, then add a migration.

Every timestamp is timezone-aware UTC (:class:`UTCDateTime`); JSON columns use the portable
``sqlalchemy.JSON`` so the same schema works on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint/index names, so migrations can refer to them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    Binds must be timezone-aware (a naive datetime is ambiguous, so it is refused); they are
    stored in UTC. SQLite returns naive values, which are UTC by construction, so UTC is
    attached on the way out; PostgreSQL values are converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the catalog stores aware UTC times")
        value = value.astimezone(UTC)
        # SQLite stores the text without an offset; keep it naive there so it sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Annotated aliases for the column types that repeat across tables.
IntPK = Annotated[int, mapped_column(Integer, primary_key=True)]
Sha256 = Annotated[str, mapped_column(String(64), index=True)]
OptSha256 = Annotated[str | None, mapped_column(String(64), index=True)]
Uri = Annotated[str, mapped_column(Text)]
ShortText = Annotated[str, mapped_column(String(64))]
OptShortText = Annotated[str | None, mapped_column(String(64))]
OptText = Annotated[str | None, mapped_column(Text)]
Json = Annotated[dict[str, Any], mapped_column(JSON(none_as_null=True))]
OptJson = Annotated[dict[str, Any] | None, mapped_column(JSON(none_as_null=True))]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow)]
OptTimestamp = Annotated[datetime | None, mapped_column(UTCDateTime())]
ByteCount = Annotated[int, mapped_column(BigInteger)]
OptInt = Annotated[int | None, mapped_column(Integer)]


def _fk(target: str, *, index: bool = True) -> Any:
    """A non-null foreign key; children are deleted with their parent. ``index=False`` where a
    unique constraint starting with this column already indexes it."""
    return mapped_column(ForeignKey(target, ondelete="CASCADE"), index=index)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Collection(Base):
    """A named set of masters (a folder or S3 prefix)."""

    __tablename__ = "collections"

    id: Mapped[IntPK]
    name: Mapped[str] = mapped_column(String(255), unique=True)
    source_uri: Mapped[Uri]
    created_at: Mapped[Timestamp]


class Asset(Base):
    """One master: a file, or one page of a multi-page file, identified by where it is, what
    its bytes hash to and which page it is (0 for a single-page file). The pages of one file
    share its ``source_uri``, ``sha256`` and ``bytes``."""

    __tablename__ = "assets"
    __table_args__ = (UniqueConstraint("collection_id", "source_uri", "sha256", "page"),)

    id: Mapped[IntPK]
    collection_id: Mapped[int] = _fk("collections.id", index=False)
    source_uri: Mapped[str] = mapped_column(Text, index=True)
    relative_path: Mapped[Uri]
    sha256: Mapped[Sha256]
    bytes: Mapped[ByteCount]
    page: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    format: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[OptInt]
    height: Mapped[OptInt]
    bands: Mapped[OptInt]
    bit_depth: Mapped[OptInt]
    colour_space: Mapped[str | None] = mapped_column(String(32))
    has_alpha: Mapped[bool | None]
    icc_profile_sha256: Mapped[OptSha256]
    ppi: Mapped[float | None] = mapped_column(Float)
    error: Mapped[OptText]
    created_at: Mapped[Timestamp]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship()


class Run(Base):
    """One execution of the restoration flow over a collection."""

    __tablename__ = "runs"

    id: Mapped[IntPK]
    flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    collection_id: Mapped[int] = _fk("collections.id")
    code_version: Mapped[ShortText]
    config: Mapped[Json]
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    started_at: Mapped[Timestamp]
    finished_at: Mapped[OptTimestamp]
    status: Mapped[str] = mapped_column(String(32))
    summary: Mapped[OptJson]

    collection: Mapped[Collection] = relationship()


class Restoration(Base):
    """The outcome of one asset in one run."""

    __tablename__ = "restorations"
    __table_args__ = (
        UniqueConstraint("run_id", "asset_id"),
        CheckConstraint("status IN ('succeeded', 'failed', 'skipped')", name="status"),
    )

    id: Mapped[IntPK]
    run_id: Mapped[int] = _fk("runs.id", index=False)
    asset_id: Mapped[int] = _fk("assets.id")
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    plan: Mapped[OptJson]
    error: Mapped[OptText]
    started_at: Mapped[Timestamp]
    finished_at: Mapped[OptTimestamp]

    run: Mapped[Run] = relationship()
    asset: Mapped[Asset] = relationship()
    steps: Mapped[list[Step]] = relationship(
        back_populates="restoration",
        order_by="Step.order",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    derivatives: Mapped[list[Derivative]] = relationship(
        secondary="restoration_derivatives", order_by="Derivative.id", viewonly=True
    )


class Step(Base):
    """One stage applied to (or skipped for) one asset in one restoration."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("restoration_id", "stage"),
        CheckConstraint("status IN ('applied', 'skipped', 'failed')", name="status"),
    )

    id: Mapped[IntPK]
    restoration_id: Mapped[int] = _fk("restorations.id", index=False)
    # Denormalised so audits ("every image this model touched") need no joins.
    asset_id: Mapped[int] = _fk("assets.id")
    run_id: Mapped[int] = _fk("runs.id")
    stage: Mapped[str] = mapped_column(String(32))
    order: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[OptText]
    operator: Mapped[str | None] = mapped_column(String(128), index=True)
    operator_version: Mapped[OptShortText]
    weights_sha256: Mapped[OptSha256]
    parameters: Mapped[Json]
    device: Mapped[OptShortText]
    duration_s: Mapped[float | None] = mapped_column(Float)
    input_sha256: Mapped[OptSha256]
    output_sha256: Mapped[OptSha256]
    metrics: Mapped[Json]
    started_at: Mapped[OptTimestamp]

    restoration: Mapped[Restoration] = relationship(back_populates="steps")


class Derivative(Base):
    """A file written under DEST. ``restoration_id`` is the restoration that first wrote it;
    every restoration that produced (or reused) it is linked in ``restoration_derivatives``."""

    __tablename__ = "derivatives"
    __table_args__ = (UniqueConstraint("uri", "sha256"),)

    id: Mapped[IntPK]
    asset_id: Mapped[int] = _fk("assets.id")
    run_id: Mapped[int] = _fk("runs.id")
    restoration_id: Mapped[int] = _fk("restorations.id")
    uri: Mapped[Uri]  # indexed by the unique (uri, sha256)
    kind: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[Sha256]
    format: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[ByteCount]
    width: Mapped[OptInt]
    height: Mapped[OptInt]
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[Timestamp]


class RestorationDerivative(Base):
    """Which derivatives each restoration produced or reused (many-to-many)."""

    __tablename__ = "restoration_derivatives"

    restoration_id: Mapped[int] = mapped_column(
        ForeignKey("restorations.id", ondelete="CASCADE"), primary_key=True
    )
    derivative_id: Mapped[int] = mapped_column(
        ForeignKey("derivatives.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class MasterFingerprint(Base):
    """What the last inspection of one master file found, under the fingerprint its storage
    listing gave it (``bytes`` and the listing's opaque ``version`` token, see
    ``daguerre.storage.ObjectInfo``). While a listing shows the same size and version, the file
    is not read again: the facts of its pages (``assets`` rows with this ``source_uri`` and
    ``sha256``) are reused. ``pages`` are the pages inspection kept, empty for a file that is
    not an image (whose ``sha256`` is then unknown, None). ``inspector`` names the inspection
    code, so facts from an older one are not reused.

    Keyed by the file's URI alone: the facts are the file's, whichever collection lists it.
    """

    __tablename__ = "master_fingerprints"

    source_uri: Mapped[str] = mapped_column(Text, primary_key=True)
    bytes: Mapped[ByteCount]
    version: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    pages: Mapped[list[int]] = mapped_column(JSON(none_as_null=True))
    inspector: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[Timestamp]

"""Initial catalog schema: collections, assets, runs, restorations, steps, derivatives.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Self-contained on purpose (no import of daguerre.catalog.schema, which will move on): it must
keep producing the schema of this revision. Timestamps are ``DateTime(timezone=True)``, the
storage type of ``schema.UTCDateTime``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.JSON(none_as_null=True), nullable=nullable)


def _sha256(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(64), nullable=nullable)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete="CASCADE",
    )


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_collections_name")),
    )

    op.create_table(
        "assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("relative_path", sa.Text(), nullable=False),
        _sha256("sha256"),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("bands", sa.Integer(), nullable=True),
        sa.Column("bit_depth", sa.Integer(), nullable=True),
        sa.Column("colour_space", sa.String(32), nullable=True),
        sa.Column("has_alpha", sa.Boolean(), nullable=True),
        _sha256("icc_profile_sha256", nullable=True),
        sa.Column("ppi", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _fk("assets", "collection_id", "collections"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint(
            "collection_id",
            "source_uri",
            "sha256",
            name=op.f("uq_assets_collection_id_source_uri_sha256"),
        ),
    )
    _indexes("assets", "source_uri", "sha256", "icc_profile_sha256")

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("code_version", sa.String(64), nullable=False),
        _json("config"),
        _sha256("config_hash"),
        _timestamp("started_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        _json("summary", nullable=True),
        _fk("runs", "collection_id", "collections"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    _indexes("runs", "flow_run_id", "collection_id", "config_hash")

    op.create_table(
        "restorations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        _sha256("config_hash"),
        sa.Column("status", sa.String(16), nullable=False),
        _json("plan", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("started_at"),
        _timestamp("finished_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('succeeded', 'failed', 'skipped')", name=op.f("ck_restorations_status")
        ),
        _fk("restorations", "run_id", "runs"),
        _fk("restorations", "asset_id", "assets"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restorations")),
        sa.UniqueConstraint("run_id", "asset_id", name=op.f("uq_restorations_run_id_asset_id")),
    )
    _indexes("restorations", "asset_id", "config_hash")

    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("restoration_id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("order", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("operator", sa.String(128), nullable=True),
        sa.Column("operator_version", sa.String(64), nullable=True),
        _sha256("weights_sha256", nullable=True),
        _json("parameters"),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        _sha256("input_sha256", nullable=True),
        _sha256("output_sha256", nullable=True),
        _json("metrics"),
        _timestamp("started_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('applied', 'skipped', 'failed')", name=op.f("ck_steps_status")
        ),
        _fk("steps", "restoration_id", "restorations"),
        _fk("steps", "asset_id", "assets"),
        _fk("steps", "run_id", "runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("restoration_id", "stage", name=op.f("uq_steps_restoration_id_stage")),
    )
    _indexes(
        "steps",
        "asset_id",
        "run_id",
        "operator",
        "weights_sha256",
        "input_sha256",
        "output_sha256",
    )

    op.create_table(
        "derivatives",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("restoration_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        _sha256("sha256"),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        _sha256("config_hash"),
        _timestamp("created_at"),
        _fk("derivatives", "asset_id", "assets"),
        _fk("derivatives", "run_id", "runs"),
        _fk("derivatives", "restoration_id", "restorations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_derivatives")),
        sa.UniqueConstraint("uri", "sha256", name=op.f("uq_derivatives_uri_sha256")),
    )
    _indexes("derivatives", "asset_id", "run_id", "restoration_id", "sha256", "config_hash")

    op.create_table(
        "restoration_derivatives",
        sa.Column("restoration_id", sa.Integer(), nullable=False),
        sa.Column("derivative_id", sa.Integer(), nullable=False),
        _fk("restoration_derivatives", "restoration_id", "restorations"),
        _fk("restoration_derivatives", "derivative_id", "derivatives"),
        sa.PrimaryKeyConstraint(
            "restoration_id", "derivative_id", name=op.f("pk_restoration_derivatives")
        ),
    )
    _indexes("restoration_derivatives", "derivative_id")


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it, on SQLite and PostgreSQL.
    for table in (
        "restoration_derivatives",
        "derivatives",
        "steps",
        "restorations",
        "runs",
        "assets",
        "collections",
    ):
        op.drop_table(table)

"""Fingerprints of inspected master files: reruns do not read unchanged masters again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

Adds the table ``master_fingerprints``, one row per master file (primary key ``source_uri``):
the size and storage version token its listing showed, the sha256 inspection computed (null
for a file that is not an image), the pages inspection kept (JSON list of integers), the id of
the inspection code, and when it was seen. A new table touches no existing row, so no batch
rebuild is needed on SQLite; downgrading drops it (fingerprints are a cache of what inspection
found: the next run inspects every master again and records them anew). Self-contained, like
0001 and 0002.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "master_fingerprints",
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("pages", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("inspector", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_uri", name=op.f("pk_master_fingerprints")),
    )


def downgrade() -> None:
    op.drop_table("master_fingerprints")

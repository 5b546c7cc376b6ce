"""Assets are pages: a multi-page master (TIFF) is one asset per page.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Adds ``assets.page`` (integer, not null, 0 for every existing asset: they were all single
files or the first page of one) and makes the page part of an asset's identity: the unique
constraint (collection_id, source_uri, sha256) becomes (collection_id, source_uri, sha256,
page). ``batch_alter_table`` recreates the table on SQLite (which cannot alter constraints)
and issues plain ALTERs on PostgreSQL. Self-contained, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_UNIQUE = ("collection_id", "source_uri", "sha256")
_NEW_UNIQUE = (*_OLD_UNIQUE, "page")


def _name(columns: Sequence[str]) -> str:
    return f"uq_assets_{'_'.join(columns)}"


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(
            sa.Column("page", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.drop_constraint(op.f(_name(_OLD_UNIQUE)), type_="unique")
        batch.create_unique_constraint(op.f(_name(_NEW_UNIQUE)), list(_NEW_UNIQUE))


# Rows that belong to pages N > 0, children first. Explicit, not ON DELETE CASCADE: SQLite
# migrates with foreign keys off (see env.py).
_PAGES = "SELECT id FROM assets WHERE page <> 0"
_PAGE_RESTORATIONS = f"SELECT id FROM restorations WHERE asset_id IN ({_PAGES})"
_PAGE_DERIVATIVES = (
    f"SELECT id FROM derivatives WHERE asset_id IN ({_PAGES})"
    f" OR restoration_id IN ({_PAGE_RESTORATIONS})"
)
_DELETE_PAGES = (
    f"DELETE FROM restoration_derivatives WHERE restoration_id IN ({_PAGE_RESTORATIONS})"
    f" OR derivative_id IN ({_PAGE_DERIVATIVES})",
    f"DELETE FROM derivatives WHERE id IN ({_PAGE_DERIVATIVES})",
    f"DELETE FROM steps WHERE asset_id IN ({_PAGES}) OR restoration_id IN ({_PAGE_RESTORATIONS})",
    f"DELETE FROM restorations WHERE id IN ({_PAGE_RESTORATIONS})",
    "DELETE FROM assets WHERE page <> 0",
)


def downgrade() -> None:
    # Pages N > 0 cannot be told apart from page 0 without the column: they go, with their
    # restorations, steps and derivatives.
    for statement in _DELETE_PAGES:
        op.execute(sa.text(statement))
    with op.batch_alter_table("assets") as batch:
        batch.drop_constraint(op.f(_name(_NEW_UNIQUE)), type_="unique")
        batch.create_unique_constraint(op.f(_name(_OLD_UNIQUE)), list(_OLD_UNIQUE))
        batch.drop_column("page")

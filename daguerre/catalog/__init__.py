"""Provenance catalog: every master, run, restoration, step and derivative (SQLAlchemy + Alembic).

Importing this package connects to nothing; :class:`Catalog` makes its engine on first use.
"""

from daguerre.catalog.api import Catalog
from daguerre.catalog.audit import (
    AssetHistory,
    MatchKind,
    RestorationHistory,
    RunInfo,
    TouchedStep,
)

__all__ = [
    "AssetHistory",
    "Catalog",
    "MatchKind",
    "RestorationHistory",
    "RunInfo",
    "TouchedStep",
]

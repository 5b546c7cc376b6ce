"""Provenance catalog: every master, run, restoration, step and derivative (SQLAlchemy + Alembic),
and the fingerprints that spare reruns from reading unchanged masters.

Importing this package connects to nothing; :class:`Catalog` makes its engine on first use.
"""

from daguerre.catalog.api import Catalog, Fingerprint
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
    "Fingerprint",
    "MatchKind",
    "RestorationHistory",
    "RunInfo",
    "TouchedStep",
]

"""Engines and migrations for the catalog database (SQLite or PostgreSQL).

Nothing here connects at import time: engines are made on first use, one per URL and process
(a forked worker gets its own, never its parent's pooled connections).

SQLite is tuned for several threads of one process recording at once: WAL journal, a busy
timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for every transaction. The last matters with
WAL: a deferred transaction that reads and then writes fails with "database is locked" without
waiting if another connection committed in between; taking the write lock up front makes the
writers queue on the busy timeout instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()


def _is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _configure_sqlite(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (it would not BEGIN before a
        # SELECT); SQLAlchemy emits BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # Safe with WAL (a crash loses at most the last commits, never corrupts).
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """A new engine for ``url``; use :func:`get_engine` to share one per process.

    For a SQLite file the parent directory is created if missing.
    """
    sa_url = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if sa_url.get_backend_name() == "sqlite":
        memory = _is_sqlite_memory(sa_url)
        if memory:
            # One shared connection, or every thread would see its own empty database.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(sa_url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(sa_url, **kwargs)
        _configure_sqlite(engine, memory=memory)
        return engine
    # pool_pre_ping: workers keep catalogs for a long time; servers drop idle connections.
    return create_engine(sa_url, pool_pre_ping=True, **kwargs)


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (made on first call)."""
    key = (url, os.getpid())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url)
        return engine


def dispose_engine(url: str) -> None:
    """Close the pooled connections of ``url``'s engine in this process and forget it."""
    with _engines_lock:
        engine = _engines.pop((url, os.getpid()), None)
    if engine is not None:
        engine.dispose()


def alembic_config(url: str | URL) -> Config:
    """An Alembic config for the migrations shipped in this package (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    # ConfigParser interpolates '%', which URL-encoded passwords contain.
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database of ``engine`` to ``revision`` in one transaction.

    The migration environment begins and commits that transaction itself: on SQLite it must
    first turn foreign keys off, which is only possible outside one.
    """
    cfg = alembic_config(engine.url)
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

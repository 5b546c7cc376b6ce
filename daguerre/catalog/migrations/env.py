"""Alembic environment of the catalog.

Run through :func:`daguerre.catalog.db.upgrade`, which hands over an open connection, not in a
transaction (this module begins and commits one), in ``config.attributes["connection"]``. From
the ``alembic`` command (``-c daguerre/catalog/alembic.ini``) the engine is made from ``-x
url=...``, else ``sqlalchemy.url``, with the same SQLite settings as the catalog's.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from daguerre.catalog.db import make_engine
from daguerre.catalog.schema import Base

config = context.config
target_metadata = Base.metadata

# Arbitrary constant: serialises concurrent upgrades of one PostgreSQL database.
_PG_LOCK_KEY = 0x44A6_0E22


def _options(dialect_name: str) -> dict[str, object]:
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things: let later migrations recreate tables instead.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Switch SQLite's foreign keys; only possible outside a transaction (else a silent no-op),
    so the switch goes to the driver connection and is checked."""
    driver = connection.connection.driver_connection
    driver.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    if bool(driver.execute("PRAGMA foreign_keys").fetchone()[0]) != on:
        raise RuntimeError("SQLite catalog migrations must start outside a transaction")


def _run(connection: Connection) -> None:
    # A batch migration rebuilds a SQLite table: copy, DROP, rename. With foreign keys on, the
    # DROP deletes every row first and ON DELETE CASCADE empties the child tables. So they are
    # off while migrating, and checked before the commit.
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, on=False)
    try:
        with connection.begin():
            context.configure(connection=connection, **_options(connection.dialect.name))
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                    )
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            _sqlite_foreign_keys(connection, on=True)


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or (
        config.get_main_option("sqlalchemy.url") or ""
    )


def run_migrations_offline() -> None:
    url = _url()
    dialect_name = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(dialect_name)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Alembic migrations of the catalog (run through :func:`daguerre.catalog.db.upgrade`)."""

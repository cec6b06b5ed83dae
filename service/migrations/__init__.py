"""Alembic migrations of the service's database; run them with ``service.db.migrate.upgrade``."""

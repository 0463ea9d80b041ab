"""Alembic migrations of Escalon's database (run from code: escalon.db.engine.migrate)."""

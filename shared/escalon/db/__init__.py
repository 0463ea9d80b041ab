"""Escalon's own database: the route log, tenants, keys and their spend (SQLAlchemy 2, migrated by Alembic).

SQLite under the data directory by default, PostgreSQL in production (ESCALON_DATABASE_URL). `settings.py`
names the variables, `engine.py` opens and migrates, `models.py` holds the tables, `routelog.py` writes routes
off the request path, `routes.py` reads them back, `keys.py` creates and checks keys.
"""

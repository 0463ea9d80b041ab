from tests.integration.tenancy.stack import database_url  # noqa: F401 - the fixture: SQLite and PostgreSQL

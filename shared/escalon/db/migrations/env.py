"""Alembic's environment: migrate over the connection escalon.db.engine.migrate hands in (online only).

Importing this module outside a migration (a wheel check importing every module) does nothing."""

from alembic import context

from escalon.db.models import Base


def run_migrations() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:  # pragma: no cover - the alembic command line is not how Escalon migrates
        raise RuntimeError("run migrations through escalon.db.engine.migrate(engine)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=config.get_main_option("version_table") or "escalon_alembic_version",
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER on SQLite goes through table copies
    )
    with context.begin_transaction():
        context.run_migrations()


try:
    context.config  # noqa: B018 - set only while Alembic runs this file
except (AttributeError, NameError):  # no migration is running
    pass
else:
    run_migrations()

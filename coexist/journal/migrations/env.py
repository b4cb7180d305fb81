"""Alembic environment for the journal.

`coexist.journal.db.upgrade` passes its own connection (already inside a transaction, with the
SQLite pragmas applied) in ``config.attributes["connection"]``. Running the ``alembic`` CLI
against a journal also works: point ``sqlalchemy.url`` at it and the engine comes from
`coexist.journal.db.make_engine`, so the pragmas are the same.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from coexist.journal.db import make_engine, transaction
from coexist.journal.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite can only ALTER a little; batch mode rebuilds tables when a revision needs it.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url to the journal URL")
    engine = make_engine(url)
    try:
        with transaction(engine, write=True) as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the journal migrates online only (it needs the database to lock it)")
run_migrations_online()

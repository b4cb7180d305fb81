"""task queue: procrastinate's schema beside the journal's, on PostgreSQL (issue 16).

`coexist worker` processes take one job per mailbox from procrastinate's tables in the
project's own PostgreSQL database, so a farm of workers needs no second server. coexist
creates these tables itself, in the journal's migration transaction, so a fresh database and a
journal made before this revision both get them on their next open (`coexist.journal.db.upgrade`
holds its advisory lock: two processes opening at once apply them once).

The SQL is procrastinate's own `schema.sql` as shipped in the installed package
(`procrastinate.schema.SchemaManager.get_schema`, the file `procrastinate schema --apply`
runs). A later procrastinate release that changes its schema ships migration scripts
(`procrastinate/sql/migrations`, docs "Migrate the Procrastinate schema"); a later revision of
ours applies them, pinned here by the `procrastinate` version range in pyproject.toml.

SQLite has no task queue (SQLite projects run inline, `[engine] executor`): a no-op there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# procrastinate's objects all carry this prefix (tables, types, functions, triggers).
PREFIX = "procrastinate_"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
        return  # applied by hand before (`procrastinate schema --apply`): keep it
    from procrastinate.schema import SchemaManager

    # Through the driver's cursor, in this migration's transaction: the script holds
    # plpgsql bodies with '%' that a DBAPI parameter style would read as placeholders, and
    # psycopg runs a multi-statement script when it is given no parameters.
    cursor = bind.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(SchemaManager.get_schema())
    finally:
        cursor.close()


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    cursor = bind.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        # Every object the schema script made, by its prefix: tables (with their triggers),
        # then functions, then types.
        cursor.execute(
            "DO $$ DECLARE r record; BEGIN "
            f"FOR r IN SELECT tablename FROM pg_tables WHERE tablename LIKE '{PREFIX}%' "
            "AND schemaname = current_schema() LOOP "
            "EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', r.tablename); END LOOP; "
            f"FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE p.proname LIKE '{PREFIX}%' AND n.nspname = current_schema() LOOP "
            "EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', r.f); END LOOP; "
            f"FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            f"WHERE t.typname LIKE '{PREFIX}%' AND t.typtype = 'e' AND n.nspname = current_schema() LOOP "
            "EXECUTE format('DROP TYPE IF EXISTS %I CASCADE', r.typname); END LOOP; END $$"
        )
    finally:
        cursor.close()

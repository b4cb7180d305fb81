"""The run journal: what every command did, so any command can stop and run again.

SQLAlchemy 2 Core + Alembic; a SQLite file in the project directory by default, a PostgreSQL
URL for teams. See `store.Journal` for the API and `schema` for the tables.
"""

from coexist.journal.batch import Batch
from coexist.journal.db import default_url, head_revision, make_engine, sqlite_url
from coexist.journal.guard import check_json, is_secret_key
from coexist.journal.store import Journal, UnknownItem, UnknownStep

__all__ = [
    "Batch",
    "Journal",
    "UnknownItem",
    "UnknownStep",
    "check_json",
    "default_url",
    "head_revision",
    "is_secret_key",
    "make_engine",
    "sqlite_url",
]

"""`mm7soap copy` (issue 20): an existing SQLite database's rows moved into PostgreSQL.

What is kept, and why:
- Every row as it is, ids and outbox sequences included: an application's `/events?after=`
  cursor, the webhook-id (`event_id`) it deduplicates on, an event's `source_id` and an id
  written down elsewhere (`mm7soap message 42`) all stay valid.  Each identity is then set
  past the largest id copied, so new rows do not collide; the outbox's past SQLite's
  AUTOINCREMENT counter, which is above every sequence ever given even when the newest
  events were pruned (`outbox prune`): a cursor at a pruned sequence must not miss new events.
- One transaction for the whole copy: a failure leaves the target as empty as it was, and
  the copy can simply be run again.  PostgreSQL keeps a transaction of millions of rows
  without trouble (it has no undo log to fill).
- A target holding rows is refused: merging would mix two sets of ids and sequences.  Its
  tables are locked against writers before that check, so it stays true until the commit.
- The source is read in one read transaction: a consistent snapshot even while an
  instance is still writing it (WAL), never an event without its row or a row without its
  parts.  What is stored after the snapshot is not copied: stop the instance first.
- A source written by an older release is migrated first, as `mm7soap serve` would on
  start (migration 5 computes the fingerprints that recognise a resend); one written by a
  newer release is refused.
- Rows stream from a SQLite cursor into `COPY … FROM STDIN`: memory holds a row and
  psycopg's buffer, never a table; each table's indexes are built after its rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg

from mm7soap import errors, postgres
from mm7soap.postgres import PgDatabase, first_line, redacted
from mm7soap.schema import MESSAGES, MIGRATIONS, OUTBOX, PARTS, READ_REPLIES, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import Store

# Each copied table with its key, parents before children (a part names its message).  The
# `health` table is not copied: its one row is each instance's own check.
TABLES: tuple[tuple[str, str], ...] = (
    (REPORTS, "id"),
    (READ_REPLIES, "id"),
    (MESSAGES, "id"),
    (PARTS, "id"),
    (OUTBOX, "sequence"),
)


class CopyError(Exception):
    """A copy refused or failed; the message says why and never holds a password."""


@dataclass(frozen=True)
class Copied:
    """One table copied: its rows, and the key the next row stored on PostgreSQL gets."""

    table: str
    key: str
    rows: int
    next_key: int


def copy_database(source: str, target: str, on_table: Callable[[Copied], object] = lambda copied: None) -> list[Copied]:
    """Copy every row of the SQLite database `source` into the empty PostgreSQL database
    `target`, in one transaction; `on_table` is told of each table as it is copied."""
    if not postgres.is_postgresql(target):
        raise CopyError(f"the target must be a postgresql:// URL, not {redacted(target)}")
    if not Path(source).is_file():
        raise CopyError(f"no SQLite database at {source}")
    try:
        migrate_source(source)
        with Store(Settings(database=target)) as store:
            store.migrate()
            with closing(sqlite3.connect(source, isolation_level=None)) as lite:
                return copy_in_one_transaction(lite, store.db, on_table)
    except (sqlite3.Error, psycopg.Error, errors.StoreError) as exc:
        raise CopyError(f"nothing copied: {first_line(exc)}") from None


def migrate_source(source: str) -> None:
    """Bring an older source up to this release's schema; refuse a newer one, and a file
    no mm7soap has written (it would be given empty tables)."""
    with closing(sqlite3.connect(source)) as lite:
        version = lite.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        raise CopyError(f"{source} is not an mm7soap database (it has no schema version)")
    if version > len(MIGRATIONS):
        raise CopyError(f"{source} was written by a newer mm7soap (schema {version}, this one knows {len(MIGRATIONS)})")
    if version < len(MIGRATIONS):
        with Store(Settings(database=source)) as store:
            store.migrate()


def copy_in_one_transaction(
    lite: sqlite3.Connection, db: PgDatabase, on_table: Callable[[Copied], object]
) -> list[Copied]:
    db.execute("BEGIN")
    lite.execute("BEGIN")  # deferred: the first SELECT takes the snapshot every table is read from
    try:
        db.execute(f"LOCK TABLE {', '.join(table for table, _ in TABLES)} IN SHARE ROW EXCLUSIVE MODE")
        refuse_rows(db)
        copied = []
        for table, key in TABLES:
            rows = copy_table(lite, db, table, key)
            copied.append(Copied(table, key, rows, restart_identity(lite, db, table, key)))
            on_table(copied[-1])
        db.execute("COMMIT")
        return copied
    finally:
        if lite.in_transaction:  # a read transaction: nothing to undo, only the snapshot to let go
            lite.execute("ROLLBACK")
        if not db.connection.closed and db.in_transaction:
            db.execute("ROLLBACK")


def refuse_rows(db: PgDatabase) -> None:
    holding = [table for table, _ in TABLES if db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]]
    if holding:
        raise CopyError(f"the target already holds rows ({', '.join(holding)}): copy into an empty database")


def columns_of(lite: sqlite3.Connection, db: PgDatabase, table: str) -> list[str]:
    """The table's columns, which must be the same on both: the same release made both."""
    mine = [row[1] for row in lite.execute(f"PRAGMA table_info({table})")]
    theirs = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()
    differ = set(mine).symmetric_difference(row[0] for row in theirs)
    if differ:
        raise CopyError(f"{table} has other columns on each side: {', '.join(sorted(differ))}")
    return mine


def copy_table(lite: sqlite3.Connection, db: PgDatabase, table: str, key: str) -> int:
    """Stream one table's rows, in key order, through COPY; their count.

    The table's indexes are dropped first and built again after, in the same transaction:
    building an index once over 100,000 reports took 1 s, keeping it up to date row by row
    made the copy 2.2 times slower (10,000 rows/s against 22,000)."""
    names = ", ".join(columns_of(lite, db, table))
    indexes = secondary_indexes(db, table)
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    rows = 0
    with db.connection.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in lite.execute(f"SELECT {names} FROM {table} ORDER BY {key}"):
            copy.write_row(row)
            rows += 1
    for _, definition in indexes:
        db.execute(definition)  # a unique one checks its rows again here
    return rows


def secondary_indexes(db: PgDatabase, table: str) -> list[tuple[str, str]]:
    """The name and CREATE INDEX of each index of `table` but those of its constraints (the
    primary key, the outbox's unique event_id), which stay."""
    found = db.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = ?::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = x.indexrelid) ORDER BY 1",
        [table],
    )
    return [(name, definition) for name, definition in found.fetchall()]


def restart_identity(lite: sqlite3.Connection, db: PgDatabase, table: str, key: str) -> int:
    """Set the table's identity past the largest key SQLite has given; the next key."""
    largest = lite.execute(f"SELECT coalesce(max({key}), 0) FROM {table}").fetchone()[0]
    if table == OUTBOX:  # AUTOINCREMENT: the largest sequence ever given, pruned or not
        given = lite.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [table]).fetchone()
        largest = max(largest, given[0] if given else 0)
    if largest:
        db.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?)", [table, key, largest])
    return largest + 1

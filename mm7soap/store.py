"""The store: one small wrapper over the database, with migrations.

A delivery report, a read reply or an MO message with all its parts is committed (WAL,
`synchronous=FULL` by default) before the service answers 1000; any database failure
becomes `errors.StoreError`, answered 3000 so the MMSC retries.  Each process (gunicorn
worker) and thread opens its own connection on first use, so a connection is never shared
across a fork.

The database is a SQLite file (mm7soap.connections, mm7soap.schema) or, given a
`postgresql://` URL, a PostgreSQL database that several instances share (mm7soap.postgres,
mm7soap.postgres_schema): the same statements on both, through each engine's connections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import sqlite_utils

from mm7soap import errors, outbox, postgres, postgres_schema
from mm7soap.commit import CommitObserver, GroupCommit
from mm7soap.connections import Connections, StoreConnections, transaction
from mm7soap.schema import (
    MESSAGE_COLUMNS,
    MESSAGES,
    MIGRATIONS,
    PART_COLUMNS,
    PARTS,
    READ_REPLIES,
    READ_REPLY_COLUMNS,
    REPORT_COLUMNS,
    REPORTS,
)
from mm7soap.settings import Settings
from mm7soap.times import utc_timestamp

# The stored kinds of report, by the MM7 operation that carries them.
REPORT_TABLES = {"DeliveryReport": REPORTS, "ReadReply": READ_REPLIES}
REPORT_KINDS = tuple(REPORT_TABLES)


@dataclass(frozen=True)
class Stored:
    """The outcome of storing a report: its row id, and whether it was already there."""

    id: int
    duplicate: bool
    received_at: str = ""  # when it was stored; empty for a resend


def announced(db: sqlite_utils.Database, stored: Stored, event_type: str, order_key: str | None) -> Stored:
    """A stored row's outbox event, in the same transaction; none for a resend."""
    if not stored.duplicate:
        outbox.record(db, event_type, stored.id, order_key, stored.received_at)
    return stored


@dataclass(frozen=True)
class RowWrite:
    """A group commit's work (mm7soap.commit): one report's row, stored once, and its event.
    Said as data rather than as a function, so that PostgreSQL can send a batch of them in
    one round trip (mm7soap.postgres_batch)."""

    table: str
    columns: dict[str, type]
    row: dict[str, Any]
    event_type: str
    order_key: str | None

    def __call__(self, db: sqlite_utils.Database) -> Stored:
        stored = insert_once(db, self.table, self.columns, self.row, RESENT_REPORT_SQL[self.table])
        return announced(db, stored, self.event_type, self.order_key)

    def stored(self, db: Any, inserted: tuple[Any, ...] | None) -> Stored:
        """What an insert that returned `inserted` (its id and received_at, or nothing for a
        resend) stored; StoreError if it was neither stored nor found."""
        if inserted is not None:
            return Stored(id=int(inserted[0]), duplicate=False, received_at=inserted[1])
        return resent(db, self.table, self.row, RESENT_REPORT_SQL[self.table])


class Store:
    """The database of one mm7soap instance."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.database
        self.busy_timeout_ms = settings.busy_timeout_ms
        self.synchronous = settings.synchronous.upper()
        self.connections = self.connect()
        self.connections.prepare = self.migrate
        self._writes: tuple[int, GroupCommit] | None = None
        # Told of each group commit (mm7soap.metrics); set before the first write.
        self.observe_commit: CommitObserver | None = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite_utils.Database:
        """This process's and thread's connection, opened on first use (after any fork)."""
        return self.connections.db

    @property
    def on_postgresql(self) -> bool:
        return postgres.is_postgresql(self.path)

    def connect(self) -> StoreConnections:
        """Connections of this store's engine, which open on first use."""
        if self.on_postgresql:
            return postgres.PgConnections(self.path, self.busy_timeout_ms, self.synchronous)
        return Connections(self.path, self.busy_timeout_ms, self.synchronous)

    def close(self) -> None:
        """Close every connection this process opened (not those inherited across a fork)."""
        self.connections.close()

    def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version.  Safe to run concurrently."""
        return migrate_any(self.connections.db)

    @property
    def writes(self) -> GroupCommit:
        """This process's group commit (made after any fork, like the connections)."""
        if self._writes is None or self._writes[0] != os.getpid():
            self._writes = (os.getpid(), GroupCommit(self.connections, self.busy_timeout_ms, self.observe_commit))
        return self._writes[1]

    def save_delivery_report(self, row: dict[str, Any]) -> Stored:
        """Commit one delivery report and its outbox event durably, or find it already stored
        (`mm7soap.resend`); StoreError otherwise."""
        return self.writes.run(RowWrite(REPORTS, REPORT_COLUMNS, row, "delivery_report", row["message_id"]))

    def save_read_reply(self, row: dict[str, Any]) -> Stored:
        """Commit one read reply, exactly as a delivery report."""
        return self.writes.run(RowWrite(READ_REPLIES, READ_REPLY_COLUMNS, row, "read_reply", row["message_id"]))

    def save_message(self, row: dict[str, Any], parts: list[dict[str, Any]]) -> Stored:
        """Commit an MO message, all its parts and its event together, or nothing of it."""

        def work(db: sqlite_utils.Database) -> Stored:
            stored = insert_once(db, MESSAGES, MESSAGE_COLUMNS, row, RESENT_MESSAGE_SQL)
            if not stored.duplicate:
                for part in parts:
                    insert(db, PARTS, PART_COLUMNS, {**part, "message": stored.id})
            return announced(db, stored, "message", None)

        return self.writes.run(work)

    def separate_writes(self) -> GroupCommit:
        """A group commit on connections of its own, which `close` leaves alone: for a thread
        that may outlive its caller (mm7soap/health.py), whose connection no other thread may
        close while it is in use (closing a connection another thread is using crashes)."""
        connections = self.connect()
        connections.prepare = lambda: migrate_any(connections.db)
        return GroupCommit(connections, self.busy_timeout_ms)

    def check_writable(self, writes: GroupCommit) -> None:
        """Commit one small write through `writes` (/health's `separate_writes`), as a report
        would be; StoreError when that fails."""
        writes.run(
            lambda db: db.conn.execute(
                "INSERT INTO health (id, checked_at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                [datetime.now(timezone.utc).isoformat()],
            )
        )

    def rows(
        self,
        table: str,
        filters: dict[str, Any],
        since: datetime | None = None,
        limit: int | None = None,
        select: str = "*",
    ) -> Iterator[dict[str, Any]]:
        """Rows of `table`, newest first, where each given filter column equals its value."""
        where = [f"{column} = :{column}" for column, value in filters.items() if value is not None]
        params: dict[str, Any] = {column: value for column, value in filters.items() if value is not None}
        if since is not None:
            where.append("received_at >= :since")
            params["since"] = utc_timestamp(since)
        if table not in self.db.table_names():
            return iter(())
        sql = f"SELECT {select} FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY received_at DESC, id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return dict_rows(self.db.execute(sql, params))

    def delivery_reports(
        self,
        *,
        message_id: str | None = None,
        recipient: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stored delivery reports, newest first, filtered on whatever is given."""
        filters = {"message_id": message_id, "recipient": recipient, "mm_status": status}
        return self.rows(REPORTS, filters, since, limit)

    def read_replies(self, *, message_id: str | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        return self.rows(READ_REPLIES, {"message_id": message_id}, since)

    def reports(
        self,
        *,
        kinds: tuple[str, ...] = REPORT_KINDS,
        message_id: str | None = None,
        recipient: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Delivery reports and read replies together, newest first, each with its `kind`."""
        filters = {"message_id": message_id, "recipient": recipient, "mm_status": status}
        found = [
            {"kind": kind, **row} for kind in kinds for row in self.rows(REPORT_TABLES[kind], filters, since, limit)
        ]
        found.sort(key=lambda row: row["received_at"], reverse=True)
        return found[:limit] if limit is not None else found

    def messages(
        self, *, sender: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored MO messages, newest first (parts not included)."""
        return self.rows(MESSAGES, {"sender": sender}, since, limit)

    def message(self, message: int) -> dict[str, Any] | None:
        """One MO message by its id, or None."""
        return next(self.rows(MESSAGES, {"id": message}), None)

    def message_parts(self, message: int, *, with_data: bool = False) -> list[dict[str, Any]]:
        """The parts of one MO message, in MIME order; their bytes only when asked for."""
        columns = [c for c in PART_COLUMNS if with_data or c != "data"]
        sql = f"SELECT {', '.join(columns)} FROM {PARTS} WHERE message = ? ORDER BY position"
        if PARTS not in self.db.table_names():
            return []
        return [dict(zip(columns, found, strict=True)) for found in self.db.execute(sql, [message]).fetchall()]


def dict_rows(cursor: Any) -> Iterator[dict[str, Any]]:
    """A cursor's rows as dicts by column name (sqlite3's and psycopg's alike)."""
    names = [column[0] for column in cursor.description or ()]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def migrate_any(db: Any) -> int:
    """Bring the schema of a database of either engine up to date."""
    if isinstance(db, postgres.PgDatabase):
        return postgres_schema.migrate(db)
    return migrate(db)


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema of `db` up to date; returns the schema version."""
    with transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            migration(db)
            db.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)


# The row a report resends: the one that says the same (the table's unique index, as a query).
RESENT_REPORT_SQL = {
    table: f"SELECT id FROM {table} WHERE fingerprint = :fingerprint" for table in REPORT_TABLES.values()
}


RESENT_MESSAGE_SQL = (
    f"SELECT id FROM {MESSAGES} WHERE fingerprint = :fingerprint AND (transaction_id = :transaction_id"
    " OR linked_id IS NOT NULL OR time_stamp_sent IS NOT NULL)"
)


def insert_once(
    db: sqlite_utils.Database, table: str, columns: dict[str, type], row: dict[str, Any], resent_sql: str
) -> Stored:
    """Insert `row`, or find the row it resends (a unique index said so); StoreError otherwise.

    `received_at` is taken here, inside the write transaction, not when the request arrived:
    writers take turns, so text order of `received_at` is commit order, as documented."""
    received_at = utc_timestamp(datetime.now(timezone.utc))
    on_conflict = "ON CONFLICT DO NOTHING RETURNING id"
    inserted = insert(db, table, columns, {**row, "received_at": received_at}, on_conflict).fetchall()
    if inserted:
        return Stored(id=int(inserted[0][0]), duplicate=False, received_at=received_at)
    return resent(db, table, row, resent_sql)


def resent(db: Any, table: str, row: dict[str, Any], resent_sql: str) -> Stored:
    """The stored row that `row`, not inserted, resends; StoreError if there is none."""
    found = db.conn.execute(resent_sql, row).fetchone()
    if found is None:  # only a constraint we do not know about could get here
        raise errors.StoreError(f"the {table} row was neither stored nor found")
    return Stored(id=int(found[0]), duplicate=True)


def insert(
    db: sqlite_utils.Database, table: str, columns: dict[str, type], row: dict[str, Any], on_conflict: str = ""
) -> Any:
    names, sql = insert_statement(table, tuple(columns), on_conflict)
    return db.conn.execute(sql, [row.get(c) for c in names])


@lru_cache(maxsize=16)
def insert_statement(table: str, columns: tuple[str, ...], on_conflict: str) -> tuple[tuple[str, ...], str]:
    """The INSERT of a table's columns, written once (sqlite3 then reuses its prepared form)."""
    names = tuple(c for c in columns if c != "id")
    return names, f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) {on_conflict}"

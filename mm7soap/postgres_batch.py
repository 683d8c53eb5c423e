"""A group commit's reports on PostgreSQL in one round trip (issue 20).

Written one statement at a time, as on SQLite, a report costs four round trips to the server
(SAVEPOINT, its row, its event, RELEASE), and on a busy machine each one waits for another
process to wake: the leader spent 90 % of a commit waiting for them, and one instance on
PostgreSQL made 0.74-0.79 of the same instance on SQLite.  Here each delivery report or read
reply of a batch is one statement, its row and its event together
(`WITH row AS (INSERT … RETURNING) INSERT INTO outbox … SELECT … FROM row`), and the whole
batch is sent in one psycopg pipeline: one round trip for the batch, then its COMMIT.

A batch with anything else in it (an MO message and its parts, a health check) is written
the ordinary way.  So is a batch in which a statement fails: the transaction is rolled back
and begun again, and the writes run one by one, each in its savepoint, so that only the
failing one fails, exactly as on SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg

from mm7soap import errors
from mm7soap.schema import OUTBOX
from mm7soap.times import utc_timestamp

if TYPE_CHECKING:
    from mm7soap.commit import Ticket
    from mm7soap.postgres import PgDatabase
    from mm7soap.store import RowWrite


@lru_cache(maxsize=8)
def row_and_event_sql(table: str, columns: tuple[str, ...], event_type: str) -> str:
    """One report's row and its outbox event in one statement; the row's id, or no row for a
    resend.  The event is due as `mm7soap.outbox.RECORD_SQL` makes it due."""
    names = [c for c in columns if c != "id"]
    return f"""
WITH row AS (
    INSERT INTO {table} ({", ".join(names)}) VALUES ({", ".join("%s" for _ in names)})
    ON CONFLICT DO NOTHING RETURNING id, received_at),
event AS (
    INSERT INTO {OUTBOX} (event_id, type, source_id, order_key, created_at, next_attempt_at)
    SELECT %s, '{event_type}', row.id, %s, row.received_at, greatest(row.received_at, coalesce((
        SELECT max(next_attempt_at) FROM {OUTBOX} WHERE state = 'pending' AND order_key = %s), ''))
    FROM row RETURNING sequence)
SELECT row.id, row.received_at FROM row"""


def pipelined(batch: list[Ticket]) -> list[RowWrite] | None:
    """The batch's writes when every one is a report that one statement can write."""
    from mm7soap.store import RowWrite

    writes = [ticket.work for ticket in batch]
    if len(writes) < 2 or not all(isinstance(work, RowWrite) for work in writes):
        return None
    return writes  # type: ignore[return-value]


# A statement's own failure (a constraint, a value PostgreSQL cannot hold), not the database's.
ROW_ERRORS = (psycopg.IntegrityError, psycopg.DataError)


def write_batch(
    db: PgDatabase,
    batch: list[Ticket],
    begin: Callable[[PgDatabase], None],
    one_by_one: Callable[[Any, list[Ticket]], None],
) -> None:
    """Write `batch` in the transaction its leader began; `one_by_one` (mm7soap.commit's
    savepoint per write) when it cannot be pipelined or a statement of it failed."""
    writes = pipelined(batch)
    if writes is None:
        one_by_one(db, batch)
        return
    try:
        inserted = send_in_one_round_trip(db, writes)
    except ROW_ERRORS:
        # One write's own failure: begin again and let it fail alone, in its savepoint.
        db.execute("ROLLBACK")
        begin(db)
        one_by_one(db, batch)
        return
    for ticket, write, found in zip(batch, writes, inserted, strict=True):
        try:
            ticket.result = write.stored(db, found)
        except errors.MM7Error as exc:
            ticket.error = exc


def send_in_one_round_trip(db: PgDatabase, writes: list[RowWrite]) -> list[tuple[Any, ...] | None]:
    """Each write's statement, all sent before any answer is read; each one's (id,
    received_at), or None for a resend."""
    cursors = []
    with db.connection.pipeline():
        for write in writes:
            received_at = utc_timestamp(datetime.now(timezone.utc))  # inside the transaction, as insert_once
            row = {**write.row, "received_at": received_at}
            names = [c for c in write.columns if c != "id"]
            params = [*(row.get(c) for c in names), f"evt_{uuid.uuid4().hex}", write.order_key, write.order_key]
            cursor = db.connection.cursor()
            cursor.execute(row_and_event_sql(write.table, tuple(write.columns), write.event_type), params)
            cursors.append(cursor)
    return [cursor.fetchone() for cursor in cursors]

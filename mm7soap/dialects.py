"""What the SQL of each store's engine says differently (issue 20).

The tables, columns and statements are the same on SQLite and PostgreSQL; the few words
that differ are here, one `Dialect` per engine, and a connection says which is its own
(`dialect_of`).  Everything else about an engine (connecting, locking, migrations) is in
its own module: mm7soap/connections.py and mm7soap/schema.py for SQLite,
mm7soap/postgres.py and mm7soap/postgres_schema.py for PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The advisory lock every PostgreSQL transaction that writes an outbox event takes before it
# draws the event's sequence, held until its commit (mm7soap.outbox.record).
OUTBOX_LOCK_KEY = 0x6D6D37  # "mm7"


@dataclass(frozen=True)
class Dialect:
    name: str
    begin: str  # a write transaction that takes the write lock at once
    greatest: str  # the larger of two values
    claim_hint: str  # after the outbox's name in the claim
    claim_lock: str  # after the claim's LIMIT
    # Run before an outbox event draws its sequence: commits then happen in sequence order,
    # so that `/events?after=` never passes an event another instance has not committed yet.
    outbox_lock: str | None
    # A number that changes when another connection commits (the forwarder's idle wake).
    commits_seen: str
    # Seconds from `{start}` to `{end}`, two stored times (text), to the millisecond (stats).
    seconds_between: str


SQLITE = Dialect(
    name="sqlite",
    begin="BEGIN IMMEDIATE",
    greatest="max",
    claim_hint="INDEXED BY outbox_due",
    claim_lock="",
    # SQLite has one writer at a time: a sequence is never committed after a higher one.
    outbox_lock=None,
    commits_seen="PRAGMA data_version",
    # julianday() is a float of days: rounded to the millisecond it is exact again.
    seconds_between="round((julianday({end}) - julianday({start})) * 86400.0, 3)",
)

POSTGRESQL = Dialect(
    name="postgresql",
    begin="BEGIN",
    greatest="greatest",
    claim_hint="",
    # Two forwarders claiming at the same moment: each skips the rows the other is taking.
    claim_lock="FOR UPDATE OF o SKIP LOCKED",
    # Sequences are drawn in one order and committed in another when two transactions run
    # at once: 6 committed while 5 is still open, a reader at 6 would never see 5.
    outbox_lock=f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})",
    commits_seen="SELECT coalesce(max(sequence), 0) FROM outbox",
    # extract() gives numeric, which psycopg reads as Decimal: float8, as SQLite's REAL.
    seconds_between="round(extract(epoch from {end}::timestamptz - {start}::timestamptz), 3)::float8",
)


def dialect_of(db: Any) -> Dialect:
    """The dialect of a connection: PostgreSQL's says so, a sqlite-utils Database does not."""
    return getattr(db, "dialect", SQLITE)

"""Counting what a target stored, read-only, while or after it runs: in its SQLite file, or in
its PostgreSQL database (run.py --database), with the same statements."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from mm7soap.postgres import PgDatabase, is_postgresql

TABLE = "delivery_reports"
SETTLE_TIMEOUT = 10.0  # seconds for requests abandoned by wrk to finish on the server


def read_only(database: Path | str) -> Any:
    """A read-only connection in autocommit, so that BEGIN below is ours: sqlite3's, or a
    PgDatabase (which takes sqlite3's `?` placeholders) for a PostgreSQL URL."""
    if is_postgresql(str(database)):
        options = "-c default_transaction_read_only=on"
        return PgDatabase(psycopg.connect(str(database), autocommit=True, connect_timeout=5, options=options))
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0, isolation_level=None)


def begin_snapshot(database: Path | str) -> str:
    """One read transaction that is one snapshot: any on a WAL database; on PostgreSQL only at
    REPEATABLE READ (at READ COMMITTED each statement sees the commits made before it)."""
    return "BEGIN ISOLATION LEVEL REPEATABLE READ" if is_postgresql(str(database)) else "BEGIN"


def snapshot(database: Path | str, transaction_ids: Sequence[str] = ()) -> tuple[int, int]:
    """(rows, how many of `transaction_ids` have a row), both read from one snapshot, so
    that a straggler committed in between cannot count in one and not the other."""
    conn = read_only(database)
    try:
        conn.execute(begin_snapshot(database))
        rows = int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
        found = 0
        for start in range(0, len(transaction_ids), 500):  # under SQLite's bound-variable limit
            chunk = list(transaction_ids[start : start + 500])
            query = f"SELECT count(*) FROM {TABLE} WHERE transaction_id IN ({', '.join('?' * len(chunk))})"
            found += int(conn.execute(query, chunk).fetchone()[0])
        conn.execute("COMMIT")
        return rows, found
    finally:
        conn.close()


# Columns that differ between any two reports of a run, whoever stores them.
PER_REQUEST_COLUMNS = {"id", "received_at", "transaction_id", "message_id", "raw_envelope"}


def sample_row(database: Path | str) -> dict[str, str]:
    """The last report's non-NULL columns but the per-request ones: what both targets should agree on."""
    conn = read_only(database)
    try:
        cursor = conn.execute(f"SELECT * FROM {TABLE} ORDER BY id DESC LIMIT 1")
        names = [column[0] for column in cursor.description]
        values = cursor.fetchone() or ()
    finally:
        conn.close()
    return {n: str(v) for n, v in zip(names, values, strict=False) if v is not None and n not in PER_REQUEST_COLUMNS}


def settle(database: Path | str) -> None:
    """Wait until the row count stops growing: requests wrk abandoned at its deadline may
    still be committing, and should not land in the next measured run."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = snapshot(database)[0]
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = snapshot(database)[0]
        if now == last:
            return
        last = now


# --- the outbox (mm7soap with a webhook) ----------------------------------------------------

DRAIN_TIMEOUT = 120.0  # seconds for the forwarder to empty the outbox once the load ends


def outbox_counts(database: Path | str) -> tuple[int, int]:
    """(events, of which pending): what the forwarder has yet to deliver."""
    conn = read_only(database)
    try:
        # CASE, not sum(state = 'pending'): PostgreSQL does not add up booleans.
        pending = "coalesce(sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0)"
        found = conn.execute(f"SELECT count(*), {pending} FROM outbox").fetchone()
        return int(found[0]), int(found[1])
    finally:
        conn.close()


def wait_drained(database: Path | str, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds until no event is pending, or None if some still are after `timeout`."""
    started = time.monotonic()
    while outbox_counts(database)[1]:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - started

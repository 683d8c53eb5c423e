"""Counting what a target stored, read-only, while or after it runs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

TABLE = "delivery_reports"
SETTLE_TIMEOUT = 10.0  # seconds for requests abandoned by wrk to finish on the server


def read_only(database: Path) -> sqlite3.Connection:
    # Autocommit, so that BEGIN below is ours: one read transaction is one snapshot of a WAL database.
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0, isolation_level=None)


def snapshot(database: Path, transaction_ids: Sequence[str] = ()) -> tuple[int, int]:
    """(rows, how many of `transaction_ids` have a row), both read from one snapshot, so
    that a straggler committed in between cannot count in one and not the other."""
    conn = read_only(database)
    try:
        conn.execute("BEGIN")
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


def sample_row(database: Path) -> dict[str, str]:
    """The last report's non-NULL columns but the per-request ones: what both targets should agree on."""
    conn = read_only(database)
    try:
        cursor = conn.execute(f"SELECT * FROM {TABLE} ORDER BY id DESC LIMIT 1")
        names = [column[0] for column in cursor.description]
        values = cursor.fetchone() or ()
    finally:
        conn.close()
    return {n: str(v) for n, v in zip(names, values, strict=False) if v is not None and n not in PER_REQUEST_COLUMNS}


def settle(database: Path) -> None:
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


def outbox_counts(database: Path) -> tuple[int, int]:
    """(events, of which pending): what the forwarder has yet to deliver."""
    conn = read_only(database)
    try:
        found = conn.execute("SELECT count(*), coalesce(sum(state = 'pending'), 0) FROM outbox").fetchone()
        return int(found[0]), int(found[1])
    finally:
        conn.close()


def wait_drained(database: Path, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds until no event is pending, or None if some still are after `timeout`."""
    started = time.monotonic()
    while outbox_counts(database)[1]:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - started

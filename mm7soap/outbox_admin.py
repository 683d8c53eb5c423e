"""Looking after the outbox by hand (`mm7soap outbox`): what is waiting, what failed and why,
retrying, and pruning what was delivered long ago (issue 18).

Every write here is a short write transaction (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
`BEGIN`), as the service's own writes are, so it waits its turn behind a commit of reports and
never holds the intake up for long.  The statements are the same on both engines.  Nothing
here deletes a pending or failed event: only `prune` deletes, and only delivered ones.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import takewhile
from typing import Any

import sqlite_utils

from mm7soap.connections import in_batches, transaction
from mm7soap.outbox import STATES
from mm7soap.schema import OUTBOX
from mm7soap.times import parse_stored, utc_timestamp

# The columns of an outbox row, in the order a person reads them.
COLUMNS = (
    "sequence",
    "event_id",
    "type",
    "source_id",
    "order_key",
    "created_at",
    "state",
    "attempts",
    "next_attempt_at",
    "lease_until",
    "last_attempt_at",
    "last_status",
    "last_error",
    "delivered_at",
)


@dataclass(frozen=True)
class ErrorSeen:
    """One distinct `last_error` of the events not delivered, how many have it, and when it
    was last seen."""

    error: str
    count: int
    newest: str


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]  # every state, 0 included
    oldest_pending_sequence: int | None = None
    oldest_pending_created_at: str | None = None
    oldest_pending_age: float | None = None  # seconds since that event was committed
    errors: list[ErrorSeen] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "oldest_pending": None
            if self.oldest_pending_sequence is None
            else {
                "sequence": self.oldest_pending_sequence,
                "created_at": self.oldest_pending_created_at,
                "age_seconds": self.oldest_pending_age,
            },
            "errors": [{"error": e.error, "count": e.count, "newest": e.newest} for e in self.errors],
        }


@dataclass(frozen=True)
class Retried:
    """What `retry` did: how many events it made pending again, and, for one event, the
    state it was in (None when there is no such event; `pending` means nothing changed)."""

    count: int
    previous: str | None = None


def has_outbox(db: sqlite_utils.Database) -> bool:
    """False for a database of a release before the outbox (not migrated yet): no events."""
    return OUTBOX in db.table_names()


def summary(db: sqlite_utils.Database, errors: int = 5, now: datetime | None = None) -> Summary:
    """How many events are in each state, the oldest pending one and its age, and the last
    `errors` distinct errors of events not delivered (newest first, with how many have each)."""
    counts = dict.fromkeys(STATES, 0)
    if not has_outbox(db):
        return Summary(counts)
    for state, count in db.execute(f"SELECT state, count(*) FROM {OUTBOX} GROUP BY state").fetchall():
        counts[state] = count
    oldest = db.execute(
        f"SELECT sequence, created_at FROM {OUTBOX} WHERE state = 'pending' ORDER BY created_at, sequence LIMIT 1"
    ).fetchone()
    seen = [
        ErrorSeen(error, count, newest)
        for error, count, newest in db.execute(
            f"SELECT last_error, count(*), max(last_attempt_at) FROM {OUTBOX}"
            " WHERE state IN ('pending', 'failed') AND last_error IS NOT NULL"
            " GROUP BY last_error ORDER BY max(last_attempt_at) DESC LIMIT ?",
            [errors],
        ).fetchall()
    ]
    if oldest is None:
        return Summary(counts, errors=seen)
    now = now or datetime.now(timezone.utc)
    age = max((now - parse_stored(oldest[1])).total_seconds(), 0.0)
    return Summary(counts, oldest[0], oldest[1], age, seen)


def events(db: sqlite_utils.Database, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Outbox rows, newest first, of one state or all."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    if not has_outbox(db):
        return []
    where = "WHERE state = ?" if state else ""
    params: list[Any] = [state] if state else []
    sql = f"SELECT {', '.join(COLUMNS)} FROM {OUTBOX} {where} ORDER BY sequence DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [dict(zip(COLUMNS, row, strict=True)) for row in db.execute(sql, params).fetchall()]


def retry(db: sqlite_utils.Database, sequence: int | None = None, failed: bool = False) -> Retried:
    """Make events pending again and due now: the event `sequence` (failed or delivered; a
    pending one is left as it is, since a forwarder may be delivering it), or with `failed`
    every failed event.  The forwarder then delivers them with their own id and sequence."""
    if (sequence is None) == (not failed):
        raise ValueError("retry one event by its sequence, or every failed event, not both or neither")
    if not has_outbox(db):
        return Retried(0)
    reset = f"UPDATE {OUTBOX} SET state = 'pending', next_attempt_at = ?, lease_until = NULL"
    with transaction(db):
        if sequence is None:
            cursor = db.conn.execute(reset + " WHERE state = 'failed'", [utc_timestamp()])
            return Retried(cursor.rowcount)
        found = db.conn.execute(f"SELECT state FROM {OUTBOX} WHERE sequence = ?", [sequence]).fetchone()
        if found is None or found[0] == "pending":
            return Retried(0, None if found is None else found[0])
        db.conn.execute(reset + " WHERE sequence = ?", [utc_timestamp(), sequence])
        return Retried(1, found[0])


# The next events of a prune, by the primary key.  A condition on `state` here made SQLite
# pick `outbox_state_created` and sort every delivered event by sequence, in each batch: with
# a million events each batch held the write lock for 300 ms.
PRUNE_SQL = (
    f"SELECT sequence, created_at, state, delivered_at FROM {OUTBOX} WHERE sequence > ? ORDER BY sequence LIMIT ?"
)


def prune(
    db: sqlite_utils.Database,
    older_than_seconds: float,
    batch: int = 1000,
    pause: float = 0.005,
    stopping: threading.Event | None = None,
) -> int:
    """Delete delivered events delivered more than `older_than_seconds` ago, looking at `batch`
    events at a time, each batch its own transaction with a `pause` between them, so reports
    keep being stored meanwhile.  Pending and failed events are never deleted, nor the reports
    and messages the events announced.  Returns how many were deleted.

    Events are looked at in sequence order, which is commit order: an event delivered before
    the cutoff was committed before it, so the first event committed after the cutoff ends
    the pass, and the newer events are never read."""
    if batch < 1 or older_than_seconds < 0:
        raise ValueError("batch must be at least 1 and the age 0 or more")
    if not has_outbox(db):
        return 0
    cutoff = utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=older_than_seconds))
    deleted = 0

    def step(last: int) -> int | None:
        nonlocal deleted
        found = db.conn.execute(PRUNE_SQL, [last, batch]).fetchall()
        old = list(takewhile(lambda row: row[1] < cutoff, found))
        gone = [
            (sequence,) for sequence, _, state, delivered_at in old if state == "delivered" and delivered_at < cutoff
        ]
        db.conn.executemany(f"DELETE FROM {OUTBOX} WHERE sequence = ? AND state = 'delivered'", gone)
        deleted += len(gone)
        return found[-1][0] if len(old) == len(found) == batch else None

    in_batches(db, step, pause, stopping)
    return deleted


AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", re.IGNORECASE)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """`90s`, `30m`, `12h` or `7d` as seconds; ValueError otherwise."""
    found = AGE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not an age: a number and s, m, h or d, e.g. 7d")
    return float(found[1]) * UNITS[found[2].lower()]


def age_text(seconds: float) -> str:
    """An age for people: `45s`, `12m 5s`, `3h 20m`, `2d 4h`."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"

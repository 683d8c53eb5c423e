"""The outbox: one event per stored request, for the operator's application (issue 18).

An event is written in the same transaction as the row it announces (`record`), so a 1000
means the event exists, and a resend, which stores nothing, makes none.  The forwarder
(`mm7soap.forwarder`) takes due events (`claim`), POSTs them, and writes what happened
(`settle`): delivered, or retried later, or — past the maximum age — `failed`, a dead letter
that is kept and can be retried by hand.  `/events` and `mm7soap outbox` read it too.

Order: events with the same `order_key` (a report's MessageID) are claimed one at a time, in
sequence order, so an application never sees `Forwarded` after `Retrieved`.  Events with
other keys do not wait for each other.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import sqlite_utils

from mm7soap.connections import transaction
from mm7soap.dialects import Dialect, dialect_of
from mm7soap.envelope import raw_text
from mm7soap.schema import (
    MESSAGE_COLUMNS,
    MESSAGES,
    OUTBOX,
    PART_COLUMNS,
    PARTS,
    READ_REPLIES,
    READ_REPLY_COLUMNS,
    REPORT_COLUMNS,
    REPORTS,
)
from mm7soap.times import parse_stored, utc_timestamp

# The event type of each stored request, and the table its row is in.
TABLES = {"delivery_report": REPORTS, "read_reply": READ_REPLIES, "message": MESSAGES}
TABLE_COLUMNS = {
    REPORTS: tuple(REPORT_COLUMNS),
    READ_REPLIES: tuple(READ_REPLY_COLUMNS),
    MESSAGES: tuple(MESSAGE_COLUMNS),
}
STATES = ("pending", "delivered", "failed")
# What an event carries of its row: every column but these (raw_envelope only on request).
NOT_SENT = ("raw_envelope",)


@dataclass(frozen=True)
class Event:
    """An event as the forwarder delivers it."""

    sequence: int
    event_id: str
    type: str
    source_id: int
    created_at: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to: delivered (a 2xx), or the reason it was not."""

    sequence: int
    delivered: bool
    status: int | None = None
    error: str | None = None


# An event is due at its commit, or, when an earlier event of its MessageID is still waiting
# for a retry, not before that one: it could not be delivered before it anyway, and the claim
# (CLAIM_SQL) then walks only events that can go.  With the receiver down, Sinch's Retrieved
# arriving behind each failing Forwarded would otherwise pile up among the due events and make
# every claim, which holds the write lock, read all of them.
RECORD_SQL = f"""
INSERT INTO {OUTBOX} (event_id, type, source_id, order_key, created_at, next_attempt_at)
VALUES (:event_id, :type, :source_id, :order_key, :created_at, {{greatest}}(:created_at, coalesce((
    SELECT max(next_attempt_at) FROM {OUTBOX} WHERE state = 'pending' AND order_key = :order_key), '')))
RETURNING sequence
"""


def record(db: sqlite_utils.Database, type: str, source_id: int, order_key: str | None, created_at: str) -> int:
    """Write the event of a row just inserted, in the caller's transaction; its sequence."""
    dialect = dialect_of(db)
    if dialect.outbox_lock is not None and not db.outbox_locked:  # held until the commit: see mm7soap.dialects
        db.conn.execute(dialect.outbox_lock)
        db.outbox_locked = True
    event = {"event_id": f"evt_{uuid.uuid4().hex}", "type": type, "source_id": source_id}
    cursor = db.conn.execute(record_sql(dialect), {**event, "order_key": order_key, "created_at": created_at})
    return int(cursor.fetchall()[0][0])


@lru_cache(maxsize=4)
def record_sql(dialect: Dialect) -> str:
    return RECORD_SQL.format(greatest=dialect.greatest)


# INDEXED BY: without statistics SQLite picks `outbox_state_created` for `state = 'pending'`
# and sorts every pending event, on each claim and holding the write lock (38 ms with 50,000
# pending).  `outbox_due` (migration 8) is in (next_attempt_at, sequence) order, so the scan
# reads only the due events and stops at `limit`: with the receiver down and 50,000 events
# waiting for their retry, a claim took 9 ms on `outbox_pending` (in sequence order, reading
# every one of them) and now reads none of them.  Order per MessageID is kept by NOT EXISTS.
# On PostgreSQL, forwarders of several instances claim at once: FOR UPDATE SKIP LOCKED
# (mm7soap.dialects) makes each skip the events another is leasing.
CLAIM_SQL = f"""
SELECT sequence, event_id, type, source_id, created_at, attempts FROM {OUTBOX} AS o {{hint}}
WHERE state = 'pending' AND next_attempt_at <= :now AND (lease_until IS NULL OR lease_until <= :now)
  AND (order_key IS NULL OR NOT EXISTS (
      SELECT 1 FROM {OUTBOX} AS earlier
      WHERE earlier.state = 'pending' AND earlier.order_key = o.order_key AND earlier.sequence < o.sequence))
ORDER BY next_attempt_at, sequence LIMIT :limit {{lock}}
"""


@lru_cache(maxsize=4)
def claim_sql(dialect: Dialect) -> str:
    return CLAIM_SQL.format(hint=dialect.claim_hint, lock=dialect.claim_lock)


def claim(db: sqlite_utils.Database, limit: int, lease_seconds: float, renew: tuple[int, ...] = ()) -> list[Event]:
    """Take up to `limit` due events for delivery, leased for `lease_seconds`: another
    forwarder skips them until then, and takes them over if this one died.  The leases of
    `renew` (events this forwarder is still delivering) are extended in the same transaction,
    so a slow answer is not taken for a dead forwarder's and delivered twice."""
    now = datetime.now(timezone.utc)
    with transaction(db):
        return take_due(db, now, limit, lease_seconds, renew)


def take_due(
    db: sqlite_utils.Database, now: datetime, limit: int, lease_seconds: float, renew: tuple[int, ...]
) -> list[Event]:
    params = {"now": utc_timestamp(now), "limit": limit}
    rows = db.conn.execute(claim_sql(dialect_of(db)), params).fetchall() if limit > 0 else []
    events = [Event(*row) for row in rows]
    lease = utc_timestamp(now + timedelta(seconds=lease_seconds))
    leased = [*(e.sequence for e in events), *renew]
    db.conn.executemany(f"UPDATE {OUTBOX} SET lease_until = ? WHERE sequence = ?", [(lease, s) for s in leased])
    return events


MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class Backoff:
    """When a failed delivery is tried again, and when an event is given up."""

    first: float
    cap: float
    max_age: float

    def delay(self, attempts: int, jitter: float) -> float:
        """Exponential from `first`, capped; `jitter` in [0, 1) spreads retries over ±50%."""
        # The doublings are bounded: past ~1024 attempts (a small cap, a long max age) 2 ** n
        # no longer fits a float, and the OverflowError would fail the settle of every batch
        # holding that event, forever.  2 ** 64 times any sane `first` is past any cap.
        doublings = min(max(attempts - 1, 0), MAX_DOUBLINGS)
        return min(self.cap, self.first * 2**doublings) * (0.5 + jitter)

    def gives_up(self, created_at: str, now: datetime) -> bool:
        """Whether an event created at `created_at` whose attempt failed at `now` is past the
        maximum age: `failed` for good (the forwarder counts it so, with the same `now`)."""
        return now - parse_stored(created_at) >= timedelta(seconds=self.max_age)


def settle(db: sqlite_utils.Database, events: list[tuple[Event, Outcome]], backoff: Backoff, jitter: Any) -> None:
    """Write the outcomes of deliveries in one transaction."""
    with transaction(db):
        write_outcomes(db, datetime.now(timezone.utc), events, backoff, jitter)


def exchange(
    db: sqlite_utils.Database,
    finished: list[tuple[Event, Outcome]],
    backoff: Backoff,
    jitter: Any,
    limit: int,
    lease_seconds: float,
    renew: tuple[int, ...] = (),
    now: datetime | None = None,
) -> list[Event]:
    """`settle` and `claim` in one transaction: the forwarder's one write per round, so that
    each commit (and its wait for the disk) is shared by every delivery that finished."""
    now = now or datetime.now(timezone.utc)
    with transaction(db):
        write_outcomes(db, now, finished, backoff, jitter)
        return take_due(db, now, limit, lease_seconds, renew)


SUCCESSORS_WAIT_SQL = f"""
UPDATE {OUTBOX} SET next_attempt_at = :retry_at
WHERE state = 'pending' AND next_attempt_at < :retry_at AND sequence > :sequence
  AND order_key = (SELECT order_key FROM {OUTBOX} WHERE sequence = :sequence)
"""


def write_outcomes(
    db: sqlite_utils.Database, now: datetime, events: list[tuple[Event, Outcome]], backoff: Backoff, jitter: Any
) -> None:
    stamp = utc_timestamp(now)
    for event, outcome in events:
        attempts = event.attempts + 1
        if outcome.delivered:
            db.conn.execute(
                f"UPDATE {OUTBOX} SET state = 'delivered', delivered_at = ?, attempts = ?, last_attempt_at = ?,"
                " last_status = ?, last_error = NULL, lease_until = NULL WHERE sequence = ?",
                [stamp, attempts, stamp, outcome.status, event.sequence],
            )
            continue
        given_up = backoff.gives_up(event.created_at, now)
        retry_at = utc_timestamp(now + timedelta(seconds=backoff.delay(attempts, jitter())))
        db.conn.execute(
            f"UPDATE {OUTBOX} SET state = ?, next_attempt_at = ?, attempts = ?, last_attempt_at = ?,"
            " last_status = ?, last_error = ?, lease_until = NULL WHERE sequence = ?",
            ["failed" if given_up else "pending", retry_at, attempts, stamp, outcome.status, outcome.error,
             event.sequence],
        )  # fmt: skip
        if not given_up:  # the later events of its MessageID wait for it (see RECORD_SQL)
            db.conn.execute(SUCCESSORS_WAIT_SQL, {"retry_at": retry_at, "sequence": event.sequence})


def pending_count(db: sqlite_utils.Database) -> int:
    return int(db.execute(f"SELECT count(*) FROM {OUTBOX} WHERE state = 'pending'").fetchone()[0])


def oldest_pending(db: sqlite_utils.Database) -> str | None:
    """When the oldest pending event was committed, or None: one look into the index on
    (state, created_at), whatever the backlog."""
    return db.execute(f"SELECT min(created_at) FROM {OUTBOX} WHERE state = 'pending'").fetchone()[0]


def data_version(db: sqlite_utils.Database) -> int:
    """A number that changes when another connection commits: unchanged means nothing new to
    claim (SQLite's count of other connections' commits, PostgreSQL's newest sequence)."""
    return int(db.execute(dialect_of(db).commits_seen).fetchone()[0])


def payload(db: sqlite_utils.Database, event: Event, include_raw: bool = False) -> dict[str, Any]:
    """The JSON body of an event: its type, id, sequence and time, and its row's columns
    under their own names in `data`; an MO's parts with their bytes in base64."""
    table = TABLES[event.type]
    columns = [c for c in TABLE_COLUMNS[table] if include_raw or c not in NOT_SENT]  # not SELECT *: no blob unasked
    found = db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id = ?", [event.source_id]).fetchone()
    data = dict(zip(columns, found or (), strict=False))
    if isinstance(data.get("raw_envelope"), bytes):
        data["raw_envelope"] = raw_text(data["raw_envelope"])
    if event.type == "message":
        data["parts"] = message_parts(db, event.source_id)
    return {
        "type": event.type,
        "id": event.event_id,
        "sequence": event.sequence,
        "timestamp": event.created_at,
        "data": data,
    }


def message_parts(db: sqlite_utils.Database, message: int) -> list[dict[str, Any]]:
    columns = [c for c in PART_COLUMNS if c not in ("id", "message")]
    rows = db.execute(f"SELECT {', '.join(columns)} FROM {PARTS} WHERE message = ? ORDER BY position", [message])
    parts = []
    for found in rows.fetchall():
        part = dict(zip(columns, found, strict=True))
        part["data"] = base64.b64encode(part["data"]).decode("ascii")
        parts.append(part)
    return parts


# About what one /events answer holds: an MO can carry 20 MiB of parts, so `limit` MOs could
# be gigabytes.  An answer stops at the event that passes this (always one event at least).
PAGE_BYTES = 8 * 1024 * 1024


def events_after(db: sqlite_utils.Database, after: int, limit: int, include_raw: bool = False) -> list[dict]:
    """The events after sequence `after`, in sequence order, as the webhook would send them:
    at most `limit`, and fewer once they make about PAGE_BYTES (`next_after` goes on)."""
    rows = db.execute(
        f"SELECT sequence, event_id, type, source_id, created_at, attempts FROM {OUTBOX}"
        " WHERE sequence > ? ORDER BY sequence LIMIT ?",
        [after, limit],
    )
    found, size = [], 0
    for row in rows.fetchall():
        found.append(payload(db, Event(*row), include_raw))
        size += sum(len(part.get("data", "")) for part in found[-1]["data"].get("parts", ())) + 2048
        if size >= PAGE_BYTES:
            break
    return found


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

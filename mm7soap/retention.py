"""Retention (issue 19): deleting what is older than an age, a short transaction at a time.

`prune` deletes the delivery reports, read replies and MO messages (with their parts) stored
longer ago than the age, then the outbox's events delivered longer ago than it
(`outbox_admin.prune`), then reclaims the space.  It never deletes a row whose event is not
delivered (pending or failed): the application has not had it yet.  Such a row stays until
its event is delivered, and the next prune takes it.

Every deletion is a batch in its own `BEGIN IMMEDIATE` transaction, with a pause between
batches (`connections.in_batches`), so the service's writes wait for one batch at most and
MMSCs keep being answered.  Rows are taken in id order, which is commit order, from the
oldest: the first row inside the age ends the pass, without reading the newer rows.

Space: SQLite puts the pages of deleted rows on its free list, and new rows use them, so a
database pruned every day stops growing at about `retention_days` of traffic.  The file
gives pages back to the filesystem only in `auto_vacuum = INCREMENTAL` mode: then each prune
runs `PRAGMA incremental_vacuum` a few thousand pages at a time, each step a short write.  A
database is switched to that mode by one full VACUUM (`prune --vacuum`), which rewrites the
whole file and holds the write lock meanwhile: an explicit, one-off maintenance step, never
run by itself.  (New databases are not made incremental: its pointer maps cost every write.)

On PostgreSQL the rows are deleted by the same statements; the space of deleted rows is
reusable only once VACUUM has seen them.  Autovacuum waits until a fifth of a table is dead,
weeks of a daily prune at 90 days of retention, and the tables grow meanwhile: so each prune
runs VACUUM on the tables it deleted from (it cannot run inside a transaction; its lock lets
reads and writes go on; a table autovacuum is busy with is skipped).  It also gives back the
empty pages at a table's end.  `prune --vacuum` is VACUUM FULL of every table pruned: each
rewritten, all its free space given back, and locked meanwhile (reports wait for it, past
`busy_timeout_ms` the VACUUM gives up rather than hold the intake).

`python -m mm7soap.retention` prunes every hour while the service runs (gunicorn's master
starts it beside the workers when `retention_days` is set, see mm7soap/supervisor.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import takewhile
from typing import Any

import sqlite_utils

from mm7soap import outbox_admin
from mm7soap.connections import in_batches
from mm7soap.dialects import POSTGRESQL, SQLITE, dialect_of
from mm7soap.schema import MESSAGES, OUTBOX, PARTS, READ_REPLIES, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.supervisor import die_with_the_master
from mm7soap.times import utc_timestamp

log = logging.getLogger(__name__)

# Each table pruned, and the type of its rows' outbox events.
EVENT_TYPES = {REPORTS: "delivery_report", READ_REPLIES: "read_reply", MESSAGES: "message"}
# An MO can carry 20 MiB of parts: a batch deletes messages up to about this many bytes of
# parts (one message at least), so that it stays short.
BATCH_BYTES = 32 * 1024 * 1024
VACUUM_STEP_PAGES = 2048  # 8 MiB of 4 KiB pages per incremental vacuum step
INCREMENTAL = 2  # PRAGMA auto_vacuum
INTERVAL = 3600.0  # seconds between the housekeeping's prunes
NICENESS = 10  # beside gunicorn, the MMSC's answers come first


@dataclass
class Pruned:
    """What a prune did."""

    cutoff: str  # rows stored before this were old
    # Rows deleted, by table: the three kinds of request, the MO's parts and the outbox's events.
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*EVENT_TYPES, PARTS, OUTBOX), 0))
    kept: int = 0  # old rows kept: their events are not delivered yet
    free_bytes: int = 0  # free pages in the file after it, which new rows use
    returned_bytes: int = 0  # given back to the filesystem (incremental vacuum or VACUUM)
    vacuumed: bool = False  # a full VACUUM ran
    gives_back_later: bool = False  # later prunes give back what they free (SQLite, incremental)

    def summary(self) -> str:
        d = self.deleted
        return (
            f"deleted {d[REPORTS]} delivery reports, {d[READ_REPLIES]} read replies, {d[MESSAGES]} MO"
            f" messages ({d[PARTS]} parts) stored before {self.cutoff}, and {d[OUTBOX]} delivered events"
        )


def prune(
    db: sqlite_utils.Database,
    older_than_seconds: float,
    batch: int = 1000,
    pause: float = 0.005,
    vacuum: bool = False,
    stopping: threading.Event | None = None,
) -> Pruned:
    """Delete what was stored more than `older_than_seconds` ago, `batch` rows per transaction,
    except rows whose events are not delivered; then reclaim the space (`vacuum`: a full
    VACUUM, which also makes a SQLite database incremental; on PostgreSQL, VACUUM FULL).
    `stopping` ends it between batches."""
    if batch < 1 or older_than_seconds < 0:
        raise ValueError("batch must be at least 1 and the age 0 or more")
    now = datetime.now(timezone.utc)
    pruned = Pruned(utc_timestamp(now - timedelta(seconds=older_than_seconds)))
    tables = set(db.table_names())
    for table in EVENT_TYPES:
        if table in tables:
            in_batches(db, old_rows_step(db, table, pruned, batch, OUTBOX in tables), pause, stopping)
    pruned.deleted[OUTBOX] = outbox_admin.prune(db, older_than_seconds, batch, pause, stopping)
    if stopping is None or not stopping.is_set():
        reclaim(db, pruned, vacuum, pause, stopping)
    return pruned


def old_rows_step(
    db: sqlite_utils.Database, table: str, pruned: Pruned, batch: int, has_outbox: bool
) -> Callable[[int], int | None]:
    """One batch of `table`'s old rows after id `after`: deleted but for those whose events
    are not delivered; where the next batch starts, or None once a row inside the age (or
    the end) is reached."""
    sizes = ", content_bytes" if table == MESSAGES else ""

    def step(after: int) -> int | None:
        rows = db.conn.execute(
            f"SELECT id, received_at{sizes} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", [after, batch]
        ).fetchall()
        old = list(takewhile(lambda row: row[1] < pruned.cutoff, rows))
        taken = within_bytes(old) if sizes else old
        ids = [row[0] for row in taken]
        undelivered = undelivered_events(db, EVENT_TYPES[table], ids) if has_outbox else set()
        delete(db, table, [row_id for row_id in ids if row_id not in undelivered], pruned)
        pruned.kept += len(undelivered)
        if len(taken) < len(old):
            return ids[-1]  # the rest of this batch's old messages, in the next transaction
        return rows[-1][0] if len(old) == len(rows) == batch else None

    return step


def within_bytes(rows: list[tuple]) -> list[tuple]:
    """The first messages whose parts make at most BATCH_BYTES together (the first one always)."""
    total = 0
    for count, row in enumerate(rows):
        total += row[2] or 0
        if total > BATCH_BYTES and count:
            return rows[:count]
    return rows


def undelivered_events(db: sqlite_utils.Database, event_type: str, ids: list[int]) -> set[int]:
    """Those of the rows `ids` whose outbox event is pending or failed (by the partial index
    of migration 7: the condition is written as its WHERE, so SQLite uses it)."""
    if not ids:
        return set()
    marks = ", ".join("?" * len(ids))
    found = db.conn.execute(
        f"SELECT source_id FROM {OUTBOX} WHERE type = ? AND state != 'delivered' AND source_id IN ({marks})",
        [event_type, *ids],
    )
    return {row[0] for row in found}


def delete(db: sqlite_utils.Database, table: str, ids: list[int], pruned: Pruned) -> None:
    """Delete rows of `table` (an MO's parts first: they refer to it), counted in `pruned`."""
    if not ids:
        return
    marks = ", ".join("?" * len(ids))
    if table == MESSAGES:
        pruned.deleted[PARTS] += db.conn.execute(f"DELETE FROM {PARTS} WHERE message IN ({marks})", ids).rowcount
    pruned.deleted[table] += db.conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids).rowcount


def reclaim(
    db: sqlite_utils.Database, pruned: Pruned, vacuum: bool, pause: float, stopping: threading.Event | None
) -> None:
    """Make the space of the deleted rows usable again, each engine its own way."""
    RECLAIM[dialect_of(db).name](db, pruned, vacuum, pause, stopping)


def reclaim_sqlite(
    db: sqlite_utils.Database, pruned: Pruned, vacuum: bool, pause: float, stopping: threading.Event | None
) -> None:
    """Give free pages back to the filesystem: all at once with `vacuum` (a full VACUUM, after
    which the database is incremental), else in short steps if it is incremental already."""
    page_size = pragma(db, "page_size")
    before = pragma(db, "page_count")
    if vacuum:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with the VACUUM
        db.execute("VACUUM")
        pruned.vacuumed = pruned.gives_back_later = True
    elif pragma(db, "auto_vacuum") == INCREMENTAL:
        free = pragma(db, "freelist_count")
        while free and not (stopping is not None and stopping.is_set()):
            # Run to its end by executescript: sqlite3's execute() steps the pragma once,
            # which frees one page (github.com/diesel-rs/diesel/pull/5145).
            db.conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
            free, before_step = pragma(db, "freelist_count"), free
            if free >= before_step:
                break  # no progress: never spin
            time.sleep(pause)
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the file shrinks when the WAL is copied back
    pruned.returned_bytes = (before - pragma(db, "page_count")) * page_size
    pruned.free_bytes = pragma(db, "freelist_count") * page_size


def pragma(db: sqlite_utils.Database, name: str) -> int:
    return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def reclaim_postgresql(db: Any, pruned: Pruned, vacuum: bool, pause: float, stopping: threading.Event | None) -> None:
    """VACUUM the tables rows were deleted from, so that new rows reuse their space now (see
    the module's doc); with `vacuum`, VACUUM FULL of every table pruned.  One table at a
    time, each its own statement outside any transaction; `stopping` ends it between two."""
    present = set(db.table_names())
    tables = [table for table, count in pruned.deleted.items() if (count or vacuum) and table in present]
    before = relation_bytes(db, tables)
    for table in tables:
        if stopping is not None and stopping.is_set():
            break
        # SKIP_LOCKED: a table autovacuum is busy with is being vacuumed already.
        db.execute(f"VACUUM (FULL) {table}" if vacuum else f"VACUUM (SKIP_LOCKED) {table}")
    pruned.vacuumed = vacuum
    pruned.returned_bytes = max(before - relation_bytes(db, tables), 0)


def relation_bytes(db: Any, tables: list[str]) -> int:
    """The size of `tables` on disk, with their indexes and TOAST (large values)."""
    sql = "SELECT coalesce(sum(pg_total_relation_size(name::regclass)), 0) FROM unnest(?::text[]) AS name"
    return int(db.execute(sql, [tables]).fetchone()[0])


# How each engine makes the space of deleted rows usable again, by its dialect's name.
RECLAIM: dict[str, Callable[..., None]] = {SQLITE.name: reclaim_sqlite, POSTGRESQL.name: reclaim_postgresql}


def prune_once(store: Store, older_than_seconds: float, stopping: threading.Event) -> Pruned | None:
    """One prune by the housekeeping process, logged; None when it failed (tried again later)."""
    try:
        # for_writing: never a new empty file where the database was (an unmounted volume)
        pruned = prune(store.connections.for_writing(), older_than_seconds, stopping=stopping)
    except Exception:
        log.exception("pruning failed; trying again in %.0f s", INTERVAL)
        store.connections.discard()
        return None
    log.info("%s; %.1f MiB given back to the filesystem", pruned.summary(), pruned.returned_bytes / 2**20)
    if pruned.kept:
        log.warning(
            "kept %d rows older than the retention: their events are not delivered yet (mm7soap outbox)", pruned.kept
        )
    return pruned


def run_forever(settings: Settings, stopping: threading.Event, interval: float = INTERVAL) -> None:
    """Prune what is older than `retention_days` now, then every `interval` seconds, until
    `stopping` is set."""
    store = Store(settings)
    try:
        while not stopping.is_set():
            prune_once(store, settings.retention_days * 86400.0, stopping)
            stopping.wait(interval)
    finally:
        store.close()


def main() -> None:
    """`python -m mm7soap.retention`: what `mm7soap serve` runs beside gunicorn when
    `retention_days` is set; SIGTERM or SIGINT stop it between two batches."""
    die_with_the_master()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [retention] %(levelname)s %(message)s")
    settings = Settings.from_env()
    if settings.retention_days <= 0:
        log.info("retention_days is 0: everything is kept, nothing to prune")
        return
    os.nice(NICENESS)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("pruning what is older than %g days, every %.0f s", settings.retention_days, INTERVAL)
    run_forever(settings, stopping)


if __name__ == "__main__":
    main()

"""`mm7soap stats` and `mm7soap prune` on a large database: `python benchmarks/stats_large.py`.

Fills a fresh database (schema by `Store.migrate`, rows by plain INSERTs with
`synchronous=OFF`) with `--reports` synthetic delivery reports (1,000,000 by default) spread
over `--days` days up to now, as a campaign's would be: about half the MMS get `Forwarded`
before their final report, most are `Retrieved`, some `Expired`, `Rejected`, …, a few have no
final report yet; about one in twenty is read (a read reply), and there are MO messages
with a part each.  Every row has its outbox event, delivered.  Each report carries a
700-byte envelope, as a Sinch report does, so the table is as large as a real one.

Then times, each once, on that file:

- `mm7soap stats` of the whole database, by day and operator (the default), and by status;
- `mm7soap stats --since` the last 24 hours, by hour and operator (the morning's question);
- `mm7soap prune --older-than` two thirds of the days (deletes a third of everything, in
  batches; prints how long the longest batch held the write lock), `stats` again;
- `mm7soap prune --vacuum`: the full VACUUM that gives the space back to the filesystem
  (and how long it would hold the write lock).

Prints the figures; nothing is asserted.  The database is made in a temporary directory
and removed, unless `--keep PATH`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from click.testing import CliRunner

from mm7soap import retention
from mm7soap.cli import cli
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.times import utc_timestamp

T = TypeVar("T")
OPERATORS = ("0001890", "0001891", "0002011", "0003104", "0004400")
# The final status of an MMS, and how often: most are retrieved.
FINAL = (("Retrieved", 0.85), ("Expired", 0.06), ("Rejected", 0.03), ("Unreachable", 0.02), (None, 0.04))
ENVELOPE = b"<?xml version='1.0'?>" + b"x" * 680  # the size of a Sinch DeliveryReportReq
CHUNK = 50_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time `mm7soap stats` and `prune` on a large database.")
    parser.add_argument("--reports", type=int, default=1_000_000, help="delivery reports (default 1,000,000)")
    parser.add_argument("--days", type=int, default=30, help="days they span, up to now (default 30)")
    parser.add_argument("--keep", type=Path, help="make the database here and keep it")
    parser.add_argument("--seed", type=int, default=19)
    return parser.parse_args(argv)


def campaign(reports: int, days: int, now: datetime, rng: random.Random) -> Iterator[tuple[str, tuple]]:
    """(kind, row) of the synthetic campaign in commit order (`received_at`, as ids are given),
    until `reports` reports; a report due after now has not arrived.  MMS are sent at random
    moments (a Poisson process) at a rate that reaches `reports` a few hours before now."""
    # 1.48 reports an MMS on average (FINAL, and half Forwarded first); 1 % faster than that.
    rate = reports / 1.48 / (days * 86400.0) * 1.01
    sent, number = now - timedelta(days=days), 0
    due: list[tuple[datetime, int, str, tuple]] = []  # what arrives later, soonest first
    scheduled, order = 0, itertools.count()
    while scheduled < reports:
        sent += timedelta(seconds=rng.expovariate(rate))
        if sent >= now:  # a short span, a small campaign: fewer reports than asked
            break
        while due and due[0][0] <= sent:
            yield heapq.heappop(due)[2:]
        for kind, received, row in mms(number, sent, rng):
            if received < now and (kind != "report" or scheduled < reports):
                scheduled += kind == "report"
                heapq.heappush(due, (received, next(order), kind, (utc_timestamp(received), *row)))
        number += 1
    while due:
        yield heapq.heappop(due)[2:]


def mms(number: int, sent: datetime, rng: random.Random) -> Iterator[tuple[str, datetime, tuple]]:
    """The reports, read reply and MO of one MMS: (kind, when it arrives, row without received_at)."""
    message_id, recipient = f"{4711000000000000 + number}", f"1555{number:07d}"
    operator = OPERATORS[number % len(OPERATORS)]
    final = rng.choices([s for s, _ in FINAL], [w for _, w in FINAL])[0]
    statuses = (["Forwarded"] if final is None or rng.random() < 0.5 else []) + ([final] if final else [])
    received = sent
    for status in statuses:
        received += timedelta(seconds=rng.lognormvariate(3.0, 1.2) if status != "Expired" else 2 * 86400.0)
        yield "report", received, (message_id, recipient, utc_timestamp(sent), status, operator)
    if statuses[-1] == "Retrieved" and rng.random() < 0.05:
        yield "read", received + timedelta(minutes=10), (message_id, recipient, utc_timestamp(sent), "Read", operator)
    if number % 100 == 0:
        yield "mo", sent, (recipient, operator)


def fill(path: Path, reports: int, days: int, seed: int) -> dict[str, int]:
    """The database at `path`, migrated by mm7soap, then filled; counts of rows per kind."""
    with Store(Settings(database=str(path), synchronous="OFF")) as store:
        store.migrate()
    counts = {"report": 0, "read": 0, "mo": 0}
    now = datetime.now(timezone.utc)
    rows = campaign(reports, days, now, random.Random(seed))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = WAL")
        while True:
            chunk = list(itertools.islice(rows, CHUNK))
            if not chunk:
                break
            conn.execute("BEGIN")
            for kind, row in chunk:
                counts[kind] += 1
                insert(conn, kind, row, counts[kind])
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return counts


def insert(conn: sqlite3.Connection, kind: str, row: tuple, number: int) -> None:
    """One row and its delivered event (the source id is the row's: ids start at 1)."""
    received_at = row[0]
    if kind == "report":
        conn.execute(
            "INSERT INTO delivery_reports (received_at, message_id, recipient, recipient_kind, sender, sender_kind,"
            " date_sent, date_utc, mm_status, operator_id, transaction_id, namespace, mm7_version, raw_envelope,"
            " fingerprint) VALUES (?, ?, ?, 'Number', '24680', 'ShortCode', ?, ?, ?, ?, ?, 'REL-6-MM7-1-4', '6.8.0',"
            " ?, ?)",
            [received_at, row[1], row[2], row[3], row[3], row[4], row[5], f"tx-{number}", ENVELOPE, f"fp-{number}"],
        )
        event = "delivery_report"
    elif kind == "read":
        conn.execute(
            "INSERT INTO read_replies (received_at, message_id, recipient, recipient_kind, sender, sender_kind,"
            " time_stamp_sent, time_stamp_utc, mm_status, operator_id, transaction_id, namespace, mm7_version,"
            " raw_envelope, fingerprint) VALUES (?, ?, ?, 'Number', '24680', 'ShortCode', ?, ?, ?, ?, ?,"
            " 'REL-6-MM7-1-4', '6.8.0', ?, ?)",
            [received_at, row[1], row[2], row[3], row[3], row[4], row[5], f"rr-{number}", ENVELOPE, f"fp-{number}"],
        )
        event = "read_reply"
    else:
        conn.execute(
            "INSERT INTO messages (received_at, sender, sender_kind, recipients, operator_id, transaction_id,"
            " namespace, mm7_version, part_count, content_bytes, fingerprint, raw_envelope)"
            " VALUES (?, ?, 'Number', '[]', ?, ?, 'REL-6-MM7-1-4', '6.8.0', 1, 5, ?, ?)",
            [received_at, row[1], row[2], f"mo-{number}", f"fp-{number}", ENVELOPE],
        )
        conn.execute(
            "INSERT INTO message_parts (message, position, content_type, size, sha256, data)"
            " VALUES (?, 1, 'text/plain', 5, 'sha', x'68656c6c6f')",
            [number],
        )
        event = "message"
    conn.execute(
        "INSERT INTO outbox (event_id, type, source_id, order_key, created_at, next_attempt_at, state, attempts,"
        " delivered_at) VALUES (?, ?, ?, ?, ?, ?, 'delivered', 1, ?)",
        [f"evt-{event}-{number}", event, number, row[1] if kind != "mo" else None, received_at, received_at,
         received_at],
    )  # fmt: skip


def timed(label: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    print(f"{label:<62} {time.perf_counter() - started:8.2f} s", flush=True)
    return result


def stats_command(path: Path, *args: str) -> Callable[[], None]:
    """`mm7soap stats -d path args…`, in this process (no interpreter start-up)."""

    def run() -> None:
        result = CliRunner().invoke(cli, ["stats", "-d", str(path), *args])
        assert result.exit_code == 0, result.output

    return run


def longest_transaction(db: sqlite3.Connection) -> Callable[[], float]:
    """Traces `db`: how long its longest BEGIN IMMEDIATE … COMMIT held the write lock so far."""
    began: list[float] = []
    longest = [0.0]

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            began.append(time.perf_counter())
        elif sql == "COMMIT" and began:
            longest[0] = max(longest[0], time.perf_counter() - began.pop())

    db.set_trace_callback(trace)
    return lambda: longest[0]


def size(path: Path) -> str:
    """The database's size, WAL copied back into it first."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return f"{path.stat().st_size / 2**20:,.0f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = None if args.keep else Path(tempfile.mkdtemp(prefix="mm7soap-stats-"))
    path = args.keep or workdir / "mm7soap.db"  # type: ignore[operator]
    print(f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    try:
        counts = timed(
            f"fill {args.reports:,} reports over {args.days} days",
            lambda: fill(path, args.reports, args.days, args.seed),
        )
        print(f"  rows: {counts}; {size(path)}", flush=True)
        since = utc_timestamp(datetime.now(timezone.utc) - timedelta(days=1))
        timed("mm7soap stats (whole database, by day and operator)", stats_command(path))
        timed("mm7soap stats --by status (whole database)", stats_command(path, "--by", "status"))
        timed(
            "mm7soap stats --since (the last 24 h) --by hour,operator",
            stats_command(path, "--since", since, "--by", "hour,operator"),
        )
        age = args.days * 2 // 3
        with Store(Settings(database=str(path))) as store:
            held = longest_transaction(store.db.conn)
            pruned = timed(f"mm7soap prune --older-than {age}d", lambda: retention.prune(store.db, age * 86400.0))
            print(
                f"  {pruned.summary()}\n  longest batch held the write lock {held() * 1000:.0f} ms;"
                f" {pruned.free_bytes / 2**20:,.0f} MiB free in the file, {size(path)}",
                flush=True,
            )
            timed("mm7soap stats after the prune", stats_command(path))
            pruned = timed(
                f"mm7soap prune --older-than {age}d --vacuum (a full VACUUM)",
                lambda: retention.prune(store.db, age * 86400.0, vacuum=True),
            )
            print(f"  gave {pruned.returned_bytes / 2**20:,.0f} MiB back; {size(path)}", flush=True)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

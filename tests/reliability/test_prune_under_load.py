"""Retention under load (issue 19): `mm7soap prune` runs over a database full of old rows
while the service, under gunicorn with its production config, takes reports from several
MMSC threads.  Every report is answered 1000, within Sinch's 10 s, with the service's busy
timeout at 1 s: a prune that held the write lock longer than a short batch would have reports
answered 3000.  Nothing recent and nothing whose event is not delivered is deleted; every old
delivered row is gone, MO parts with their messages, and the database (made incremental) gives
the space back in steps meanwhile.

Then the service started with MM7SOAP_RETENTION_DAYS prunes by itself: gunicorn's master
runs `python -m mm7soap.retention` beside its workers.

Run with `pytest -s` to see the figures line (`RELIABILITY prune under load: …`).
"""

from __future__ import annotations

import http.client
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.times import utc_timestamp
from tests.reliability.service import BIN, Client, children, delivery_report, serving

OLD_REPORTS = 120_000
OLD_READ_REPLIES = 4_000
OLD_MESSAGES = 1_000
RECENT_REPORTS = 2_000
UNDELIVERED_EVERY = 400  # one old report in so many has its event pending or failed
SENDERS = 4
PAUSE = 0.01  # between a sender's reports
REQUEST_TIMEOUT = 10.0  # Sinch gives up after 10 s
BUSY_TIMEOUT_MS = 1000
ENVELOPE = b"<env:Envelope>" + b"x" * 700 + b"</env:Envelope>"
PART = bytes(range(256)) * 8  # 2 KiB


@dataclass
class Prefilled:
    kept_reports: set[int] = field(default_factory=set)  # old, but their events not delivered
    recent_reports: set[int] = field(default_factory=set)


def prefill(path: Path, old_days: int = 100) -> Prefilled:
    """A database made incremental at its creation, with old rows (delivered events but for
    a few), then recent ones, written in commit order as the service would have."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before any table: retention gives space back
        db.execute("PRAGMA journal_mode = WAL")
    with Store(Settings(database=str(path))) as store:
        store.migrate()
    now = datetime.now(timezone.utc)
    old = utc_timestamp(now - timedelta(days=old_days))
    recent = utc_timestamp(now - timedelta(hours=1))
    found = Prefilled()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        for number in range(1, OLD_REPORTS + 1):
            state = "delivered"
            if number % UNDELIVERED_EVERY == 0:
                state = "pending" if number % (2 * UNDELIVERED_EVERY) else "failed"
                found.kept_reports.add(number)
            put(db, "report", number, old, state)
        for number in range(1, OLD_READ_REPLIES + 1):
            put(db, "read", number, old, "delivered")
        for number in range(1, OLD_MESSAGES + 1):
            put(db, "mo", number, old, "delivered")
        for number in range(OLD_REPORTS + 1, OLD_REPORTS + RECENT_REPORTS + 1):
            put(db, "report", number, recent, "delivered")
            found.recent_reports.add(number)
        db.execute("COMMIT")
    return found


def put(db: sqlite3.Connection, kind: str, number: int, when: str, state: str) -> None:
    """A row and its event; the row's id is `number` (each table is filled from 1)."""
    if kind == "report":
        db.execute(
            "INSERT INTO delivery_reports (id, received_at, message_id, recipient, mm_status, date_utc,"
            " transaction_id, raw_envelope, fingerprint) VALUES (?, ?, ?, '15551230001', 'Retrieved', ?, ?, ?, ?)",
            [number, when, f"pre-{number}", when, f"pre-tx-{number}", ENVELOPE, f"pre-fp-{number}"],
        )
    elif kind == "read":
        db.execute(
            "INSERT INTO read_replies (id, received_at, message_id, recipient, mm_status, raw_envelope, fingerprint)"
            " VALUES (?, ?, ?, '15551230001', 'Read', ?, ?)",
            [number, when, f"pre-{number}", ENVELOPE, f"pre-rr-{number}"],
        )
    else:
        db.execute(
            "INSERT INTO messages (id, received_at, sender, part_count, content_bytes, raw_envelope, fingerprint)"
            " VALUES (?, ?, '15551230001', 2, ?, ?, ?)",
            [number, when, 2 * len(PART), ENVELOPE, f"pre-mo-{number}"],
        )
        for position in (1, 2):
            db.execute(
                "INSERT INTO message_parts (message, position, content_type, size, sha256, data)"
                " VALUES (?, ?, 'image/jpeg', ?, 'sha', ?)",
                [number, position, len(PART), PART],
            )
    event = {"report": "delivery_report", "read": "read_reply", "mo": "message"}[kind]
    db.execute(
        "INSERT INTO outbox (event_id, type, source_id, created_at, next_attempt_at, state, delivered_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [f"evt-{event}-{number}", event, number, when, when, state, when if state == "delivered" else None],
    )


@dataclass
class Traffic:
    """What the MMSC threads sent while the prune ran."""

    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[str] = field(default_factory=list)  # TransactionIDs answered 1000
    failures: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def send(self, port: int, sender: int) -> None:
        client = Client(port, timeout=REQUEST_TIMEOUT)
        number = 0
        while not self.stopping.is_set():
            number += 1
            transaction_id = f"load-{sender}-{number}"
            started = time.monotonic()
            try:
                answer = client.post(delivery_report(transaction_id))
            except (OSError, http.client.HTTPException) as exc:  # no answer in time, a refused connection
                with self.lock:
                    self.failures.append(f"{transaction_id}: {exc!r}")
                continue
            took = time.monotonic() - started
            with self.lock:
                self.seconds.append(took)
                if answer.acknowledged:
                    self.acknowledged.append(transaction_id)
                else:
                    self.failures.append(f"{transaction_id}: HTTP {answer.http_status} {answer.status_code}")
            time.sleep(PAUSE)
        client.close()


def rows(path: Path, sql: str) -> set:
    with closing(sqlite3.connect(path, timeout=10)) as db:
        return {row[0] for row in db.execute(sql)}


def test_prune_under_load(tmp_path: Path) -> None:
    database = tmp_path / "mm7soap.db"
    prefilled = prefill(database)
    # A report waits at most this long for the write lock, then is answered 3000: a prune that
    # held the lock for longer than a short batch would show as reports not acknowledged.
    with serving(database, MM7SOAP_BUSY_TIMEOUT_MS=str(BUSY_TIMEOUT_MS)) as service:
        traffic = Traffic()
        senders = [threading.Thread(target=traffic.send, args=(service.port, n)) for n in range(SENDERS)]
        for sender in senders:
            sender.start()
        time.sleep(1.0)  # the load is on before the prune starts
        started = time.monotonic()
        pruned = subprocess.run(
            [str(BIN / "mm7soap"), "prune", "-d", str(database), "--older-than", "30d"],
            capture_output=True,
            text=True,
            timeout=50,
        )
        prune_seconds = time.monotonic() - started
        time.sleep(0.5)
        traffic.stopping.set()
        for sender in senders:
            sender.join(REQUEST_TIMEOUT + 5)
    assert pruned.returncode == 0, pruned.stderr
    ordered = sorted(traffic.seconds)
    print(
        f"\nRELIABILITY prune under load: {OLD_REPORTS + OLD_READ_REPLIES + OLD_MESSAGES} old rows pruned in"
        f" {prune_seconds:.1f} s while {SENDERS} MMSC threads sent {len(ordered)} reports:"
        f" p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, p99 {ordered[int(len(ordered) * 0.99)] * 1000:.0f} ms,"
        f" max {ordered[-1] * 1000:.0f} ms; {len(traffic.failures)} not acknowledged\n  {pruned.stdout.strip()}"
    )
    assert traffic.failures == []
    assert len(traffic.acknowledged) > 50 and ordered[-1] < REQUEST_TIMEOUT
    # Everything acknowledged is stored; nothing recent or undelivered went; every old delivered row did.
    stored = rows(database, "SELECT transaction_id FROM delivery_reports WHERE transaction_id LIKE 'load-%'")
    assert stored == set(traffic.acknowledged)
    prefilled_left = rows(database, "SELECT id FROM delivery_reports WHERE transaction_id LIKE 'pre-tx-%'")
    assert prefilled_left == prefilled.kept_reports | prefilled.recent_reports
    assert rows(database, "SELECT count(*) FROM read_replies") == {0}
    assert rows(database, "SELECT count(*) FROM messages") == {0}
    assert rows(database, "SELECT count(*) FROM message_parts") == {0}
    events = rows(database, "SELECT state || ' ' || source_id FROM outbox WHERE event_id LIKE 'evt-%'")
    assert {event for event in events if not event.startswith("delivered")} == {
        f"{'pending' if number % (2 * UNDELIVERED_EVERY) else 'failed'} {number}" for number in prefilled.kept_reports
    }
    assert len(events) == len(prefilled.kept_reports) + len(prefilled.recent_reports)  # the recent ones' events
    assert "gave " in pruned.stdout and "back to the filesystem" in pruned.stdout  # incremental, in steps
    assert rows(database, "PRAGMA integrity_check") == {"ok"}


def test_the_service_prunes_by_itself_with_retention_days(tmp_path: Path) -> None:
    database = tmp_path / "mm7soap.db"
    prefilled = prefill(database)
    with serving(database, MM7SOAP_RETENTION_DAYS="30") as service:
        deadline = time.monotonic() + 30
        while not [pid for pid in children(service.master) if b"mm7soap.retention" in cmdline(pid)]:
            assert time.monotonic() < deadline, "the master started no retention process"  # once ready
            time.sleep(0.1)
        while rows(database, "SELECT count(*) FROM messages") != {0}:
            assert time.monotonic() < deadline, service.log_tail()
            time.sleep(0.2)
        client = Client(service.port)
        try:
            assert client.post(delivery_report("after-the-prune")).acknowledged
        finally:
            client.close()
    left = rows(database, "SELECT id FROM delivery_reports WHERE transaction_id LIKE 'pre-tx-%'")
    assert left == prefilled.kept_reports | prefilled.recent_reports
    logged = (tmp_path / f"gunicorn-{service.port}.log").read_text()
    assert f"[retention] INFO deleted {OLD_REPORTS - len(prefilled.kept_reports)} delivery reports" in logged


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""

"""The SQLite store: one small wrapper over sqlite-utils, with migrations.

A delivery report is committed (WAL, `synchronous=FULL` by default) before the service
answers 1000; any SQLite failure becomes `errors.StoreError`, answered 3000 so the MMSC
retries.  Each process (gunicorn worker) and thread opens its own connection on first use,
so a connection is never shared across a fork.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from mm7soap import errors
from mm7soap.settings import Settings

REPORTS = "delivery_reports"

# Every stored time: UTC, fixed width, so that text order is time order (`--since`).
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_timestamp(moment: datetime) -> str:
    """A time as stored; one without a zone is taken as UTC (Sinch sends UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time given by a person (`2026-11-27`, `…T10:00Z`, `…+01:00`)."""
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))


# Columns of a stored delivery report, in the order a person reads them.
REPORT_COLUMNS: dict[str, type] = {
    "id": int,
    "received_at": str,  # UTC, ISO 8601, when we committed it
    "message_id": str,
    "recipient": str,
    "recipient_kind": str,  # Number, ShortCode or RFC2822Address
    "recipient_display_only": int,
    "recipient_address_coding": str,
    "recipient_address_id": str,
    "sender": str,
    "sender_kind": str,
    "sender_display_only": int,
    "sender_address_coding": str,
    "sender_address_id": str,
    "date_sent": str,  # Date (or TimeStamp) exactly as sent
    "date_utc": str,  # the same, normalised to UTC; NULL when it was not an xs:dateTime
    "mm_status": str,  # exactly as sent, 3GPP value or not
    "mm_status_extension": str,
    "status_text": str,
    "mms_relay_server_id": str,
    "applic_id": str,
    "reply_applic_id": str,
    "aux_applic_info": str,
    "ua_prof": str,
    "ua_timestamp": str,
    "transaction_id": str,
    "namespace": str,  # e.g. REL-6-MM7-1-4
    "mm7_version": str,
    "operator_id": str,  # X-Mblox-Carrier-Id / x-mblox-operator-id, leading zeros kept
    "client_address": str,
    "raw_envelope": bytes,
}


def migrate_1_delivery_reports(db: sqlite_utils.Database) -> None:
    db[REPORTS].create(REPORT_COLUMNS, pk="id", not_null={"received_at", "message_id", "mm_status"})
    db[REPORTS].create_index(["message_id"], index_name="delivery_reports_message_id")
    # The two ways a resend is recognised (issue 2): same TransactionID and MessageID, or
    # the same MessageID, Recipient, MMStatus and Date.  A report without TransactionID
    # (NULL) never collides on the first.
    db[REPORTS].create_index(
        ["transaction_id", "message_id"], index_name="delivery_reports_resend_by_transaction", unique=True
    )
    db.execute(
        "CREATE UNIQUE INDEX delivery_reports_resend_by_content ON delivery_reports"
        " (message_id, recipient, mm_status, ifnull(date_sent, ''))"
    )


def migrate_2_health(db: sqlite_utils.Database) -> None:
    # One row, rewritten by every health check: a real durable write, so a read-only
    # file, a full disk or a held lock shows up in /health as it would for a report.
    db.execute("CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at TEXT NOT NULL)")


# Each migration runs once, in order; `PRAGMA user_version` counts those applied.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    migrate_1_delivery_reports,
    migrate_2_health,
)


@dataclass(frozen=True)
class Stored:
    """The outcome of storing a report: its row id, and whether it was already there."""

    id: int
    duplicate: bool


class Store:
    """The database of one mm7soap instance."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.database
        self.busy_timeout_ms = settings.busy_timeout_ms
        self.synchronous = settings.synchronous.upper()
        self._local = threading.local()
        # Every connection opened, one per thread, with the process that opened it: close()
        # closes this process's.  One inherited across a fork is kept here but never used or
        # closed again, since closing it could checkpoint a WAL the parent is still writing.
        self._opened: list[tuple[int, sqlite_utils.Database]] = []
        self._opened_lock = threading.Lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite_utils.Database:
        """This process's and thread's connection, opened on first use (after any fork)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = self._connect()
            self._local.db, self._local.pid = db, os.getpid()
            with self._opened_lock:
                self._opened.append((os.getpid(), db))
        return db

    def _connect(self) -> sqlite_utils.Database:
        # check_same_thread=False only so close() may close another thread's connection;
        # each connection is used by the one thread that opened it (see `db`).
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return sqlite_utils.Database(conn)

    def close(self) -> None:
        """Close every connection this process opened (not those inherited across a fork)."""
        pid = os.getpid()
        with self._opened_lock:
            mine = [db for opener, db in self._opened if opener == pid]
            self._opened = [(opener, db) for opener, db in self._opened if opener != pid]
        for db in mine:
            db.conn.close()
        self._local = threading.local()

    def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version.  Safe to run concurrently."""
        db = self.db
        with transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(db)
                db.execute(f"PRAGMA user_version = {number}")
        return len(MIGRATIONS)

    def save_delivery_report(self, row: dict[str, Any]) -> Stored:
        """Commit one report durably, or find it already stored; StoreError otherwise."""
        columns = [c for c in REPORT_COLUMNS if c != "id"]
        sql = (
            f"INSERT INTO {REPORTS} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
            " ON CONFLICT DO NOTHING"
        )
        try:
            with transaction(self.db) as db:
                cursor = db.execute(sql, [row.get(c) for c in columns])
                if cursor.rowcount == 1:
                    return Stored(id=cursor.lastrowid or 0, duplicate=False)
                existing = self.find_resent(row)
                return Stored(id=existing, duplicate=True)
        except sqlite3.Error as exc:
            raise errors.StoreError(f"the report could not be stored: {exc}") from exc

    def check_writable(self) -> None:
        """Commit one small write, as a report would be; StoreError when that fails."""
        try:
            with transaction(self.db) as db:
                db.execute(
                    "INSERT INTO health (id, checked_at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    [datetime.now(timezone.utc).isoformat()],
                )
        except sqlite3.Error as exc:
            raise errors.StoreError(f"the database is not writable: {exc}") from exc

    def find_resent(self, row: dict[str, Any]) -> int:
        found = self.db.execute(
            f"SELECT id FROM {REPORTS} WHERE message_id = ? AND"
            " ((transaction_id = ?) OR (recipient IS ? AND mm_status = ? AND ifnull(date_sent, '') = ifnull(?, '')))",
            [
                row["message_id"],
                row.get("transaction_id"),
                row.get("recipient"),
                row["mm_status"],
                row.get("date_sent"),
            ],
        ).fetchone()
        if found is None:  # only a constraint we do not know about could get here
            raise errors.StoreError("the report was neither stored nor found")
        return int(found[0])

    def delivery_reports(
        self,
        *,
        message_id: str | None = None,
        recipient: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stored reports, newest first, filtered on whatever is given."""
        where, params = [], []
        for column, value in (("message_id", message_id), ("recipient", recipient), ("mm_status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("received_at >= ?")
            params.append(utc_timestamp(since))
        if REPORTS not in self.db.table_names():
            return iter(())
        return self.db[REPORTS].rows_where(
            " AND ".join(where) or None, params, order_by="received_at DESC, id DESC", limit=limit
        )


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection; ROLLBACK when anything fails,
    the COMMIT itself included (a full disk fails there), so no transaction is left open."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise

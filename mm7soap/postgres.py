"""The PostgreSQL store's connections (issue 20): `MM7SOAP_DATABASE=postgresql://…`.

Several mm7soap instances share one PostgreSQL database, so that losing a host loses no
acknowledged report and a resend is recognised whichever instance it reaches.  The
statements are those of the SQLite store (mm7soap.store, mm7soap.outbox, …): `PgDatabase`
takes them with SQLite's placeholders (`?`, `:name`) and runs them through psycopg 3 with
its own (`%s`, `%(name)s`), translated once per statement text.  What PostgreSQL says
differently is in mm7soap.dialects, its schema in mm7soap.postgres_schema.

Each process writes through one connection: its group commit (mm7soap.commit) has one
leader at a time, which commits every waiting report in one transaction.  Each thread that
reads (/events, the forwarder, a CLI command) has its own.  So an instance holds a few
connections per worker, not one per thread, and a pool would hold no fewer.  A connection
that failed is closed and the next use opens another: the service recovers by itself once
the database is back, and every request meanwhile is answered 3000.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from mm7soap import errors, postgres_batch
from mm7soap.dialects import POSTGRESQL, Dialect
from mm7soap.postgres_batch import ROW_ERRORS

if TYPE_CHECKING:
    from mm7soap.commit import Ticket

SCHEMES = ("postgresql", "postgres")

# Each token that needs translating, or a string or quoted name to leave alone.
TOKENS = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|:(\w+)|\?|%")


def is_postgresql(database: str) -> bool:
    """Whether `database` names a PostgreSQL database rather than a SQLite file."""
    return database.split("://", 1)[0].lower() in SCHEMES and "://" in database


def redacted(database: str) -> str:
    """`database` (or any URL) without its password: fit for logs, errors and /health."""
    if "://" not in database:
        return database
    parts = urlsplit(database)
    if parts.password is None:
        return database
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's placeholders as psycopg's, for a statement run with parameters: psycopg then
    reads every `%` as a placeholder, in a string too, so a literal one is doubled."""

    def swap(found: re.Match[str]) -> str:
        token = found.group(0)
        if token == "?":
            return "%s"
        if found.group(1):
            return f"%({found.group(1)})s"
        return token.replace("%", "%%")  # a string, a quoted name, a `::` cast, a `%`

    return TOKENS.sub(swap, sql)


# A statement that writes nothing by itself: when it fails because the connection it was sent
# on, idle until then, turned out broken, it can be sent again on a new one.
WRITES_NOTHING = re.compile(r"\s*(SELECT|BEGIN)\b", re.IGNORECASE)


class PgDatabase:
    """One psycopg connection, taking the statements written for sqlite3: `execute`,
    `executemany`, `query` and `in_transaction`, as mm7soap's modules use them.  It is its
    own `conn`, as a sqlite-utils Database has one.

    With `reopen`, a connection found broken when it is used again (the server restarted, or
    ended it, since its last statement) is replaced at once, and the statement sent again, when
    that is safe: the connection was idle (no transaction of ours is lost with it) and the
    statement writes nothing (a read, or a group commit's BEGIN).  Otherwise the error is the
    caller's: a 3000, the MMSC retries."""

    dialect: Dialect = POSTGRESQL

    def __init__(
        self, connection: psycopg.Connection[Any], reopen: Callable[[], psycopg.Connection[Any]] | None = None
    ) -> None:
        self.connection = connection
        self.reopen = reopen
        # Whether this transaction holds the outbox's lock (mm7soap.dialects): taken at a group
        # commit's BEGIN, given up by its COMMIT or ROLLBACK (not by a ROLLBACK TO a savepoint).
        self.outbox_locked = False

    @property
    def conn(self) -> PgDatabase:
        return self

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        if sql in ("COMMIT", "ROLLBACK"):
            self.outbox_locked = False
        # Without parameters psycopg sends the text as it is: nothing to translate.
        text = sql if params is None else translate(sql)
        idle = self.reopen is not None and not self.in_transaction
        try:
            return self.connection.execute(text, params)
        except psycopg.OperationalError:
            if not (idle and self.connection.closed and WRITES_NOTHING.match(sql)):
                raise
        assert self.reopen is not None
        self.connection.close()
        self.connection = self.reopen()
        return self.connection.execute(text, params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any] | dict[str, Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(translate(sql), params)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        cursor = self.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    @property
    def in_transaction(self) -> bool:
        return self.connection.info.transaction_status != pq.TransactionStatus.IDLE

    def table_names(self) -> list[str]:
        found = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1"
        )
        return [row[0] for row in found.fetchall()]

    def close(self) -> None:
        self.connection.close()


def synchronous_commit(synchronous: str) -> str:
    """SQLite's `synchronous` setting as PostgreSQL's `synchronous_commit`: FULL and EXTRA
    wait for the disk (on); NORMAL and OFF may lose the last commits in a crash (off)."""
    return "on" if synchronous.upper() in ("FULL", "EXTRA") else "off"


class PgConnections:
    """The connections of each process to one PostgreSQL database: one that writes, and one
    per thread that reads; the same small interface as SQLite's
    mm7soap.connections.Connections, which mm7soap.commit uses."""

    def __init__(
        self, url: str, busy_timeout_ms: int, synchronous: str, prepare: Callable[[], object] | None = None
    ) -> None:
        self.path = url
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.prepare = prepare  # the migrations, once per process
        self._local = threading.local()
        self._opened: list[tuple[int, PgDatabase]] = []
        self._lock = threading.Lock()
        self._prepared: set[int] = set()
        self._writer: tuple[int, PgDatabase] | None = None

    @property
    def db(self) -> PgDatabase:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid() or db.connection.closed:
            db = self._connect()
            self._local.db, self._local.pid = db, os.getpid()
            with self._lock:
                self._opened.append((os.getpid(), db))
        return db

    def for_writing(self) -> PgDatabase:
        """The process's writing connection.  Its group commit has one leader at a time, so
        one connection writes for every thread of the process: a worker's 16 threads do not
        hold 16 connections of a server that has a few hundred for all the instances."""
        if os.getpid() not in self._prepared and self.prepare is not None:
            self.prepare()
            self._prepared.add(os.getpid())
        writer = self._writer
        if writer is None or writer[0] != os.getpid() or writer[1].connection.closed:
            writer = (os.getpid(), self._connect())
            with self._lock:
                self._opened.append(writer)
            self._writer = writer
        return writer[1]

    def begin(self, db: PgDatabase) -> None:
        """BEGIN a group commit's transaction holding the outbox's lock from the start, in the
        same round trip: its reports' ids and its events' sequences are then drawn in commit
        order across instances, as on SQLite (`/events`, stats' last report, retention).

        Before the first row, not at the first event: a writer holding an uncommitted row
        while it waited for the lock deadlocked with the holder when that one stored the same
        resend (tests/test_postgresql_writers.py)."""
        lock = db.dialect.outbox_lock
        db.execute(f"BEGIN; {lock}" if lock else "BEGIN")
        db.outbox_locked = lock is not None

    def check_committed(self) -> None:
        """Nothing to check: a COMMIT that returned is in the database the URL names."""

    def spoils_batch(self, exc: BaseException) -> bool:
        """A failure of the database rather than of one row (a broken constraint, a value
        PostgreSQL cannot hold)."""
        return isinstance(exc, psycopg.Error) and not isinstance(exc, ROW_ERRORS)

    def write_batch(self, db: PgDatabase, batch: list[Ticket], one_by_one: Callable[[Any, list[Ticket]], None]) -> None:
        """A group commit's writes: reports in one round trip (mm7soap.postgres_batch)."""
        postgres_batch.write_batch(db, batch, self.begin, one_by_one)

    def recover(self, db: PgDatabase | None, exc: BaseException) -> None:
        """Leave no transaction open; close a connection that broke, so the next write
        opens a new one (the database restarted, or was unreachable for a while)."""
        if db is None:
            return
        try:
            if not db.connection.closed and db.in_transaction:
                db.execute("ROLLBACK")
        except psycopg.Error:
            self.forget(db)
            return
        if db.connection.closed or isinstance(exc, psycopg.OperationalError):
            self.forget(db)

    def discard(self) -> None:
        """Close this thread's connection and the process's writing one: the next use opens
        new ones (after a failure that may have left them unusable)."""
        for db in (getattr(self._local, "db", None), self._writer[1] if self._writer else None):
            if db is not None:
                self.forget(db)

    def forget(self, db: PgDatabase) -> None:
        """Close `db` if this process opened it; the next use opens another."""
        with self._lock:
            if (os.getpid(), db) not in self._opened:
                return  # another process's, inherited across a fork
            self._opened = [(pid, other) for pid, other in self._opened if other is not db]
        if getattr(self._local, "db", None) is db:
            self._local.db = None
        if self._writer is not None and self._writer[1] is db:
            self._writer = None
        db.close()

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            mine = [db for opener, db in self._opened if opener == pid]
            self._opened = [(opener, db) for opener, db in self._opened if opener != pid]
        for db in mine:
            db.close()
        self._local = threading.local()
        self._writer = None

    def _connect(self) -> PgDatabase:
        return PgDatabase(self._open(), reopen=self._open)

    def _open(self) -> psycopg.Connection[Any]:
        try:
            connection = psycopg.connect(
                self.path,
                autocommit=True,  # transactions are the callers' BEGIN … COMMIT, as on SQLite
                connect_timeout=max(2, math.ceil(self.busy_timeout_ms / 1000)),
                application_name="mm7soap",
                # A host that stops answering fails a request in seconds, not TCP's minutes.
                tcp_user_timeout=max(2000, 2 * self.busy_timeout_ms),
                options=options_after(
                    self.path,
                    f"-c synchronous_commit={synchronous_commit(self.synchronous)}"
                    f" -c lock_timeout={int(self.busy_timeout_ms)}",
                ),
            )
        except psycopg.Error as exc:
            raise errors.StoreError(f"cannot connect to {redacted(self.path)}: {first_line(exc)}") from None
        return connection


@contextmanager
def read_only(url: str, seconds: float) -> Iterator[PgDatabase]:
    """A connection of its own that only reads and gives up after `seconds` (a scrape of
    /metrics, which must answer whatever the database is doing)."""
    try:
        connection = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(2, math.ceil(seconds)),
            application_name="mm7soap-metrics",
            options=options_after(
                url, f"-c default_transaction_read_only=on -c statement_timeout={int(seconds * 1000)}"
            ),
        )
    except psycopg.Error as exc:
        raise errors.StoreError(f"cannot connect to {redacted(url)}: {first_line(exc)}") from None
    with closing(connection):
        yield PgDatabase(connection)


def options_after(url: str, ours: str) -> str:
    """The URL's own `options` (a search_path, say), then ours: psycopg's keyword would
    otherwise replace the URL's."""
    try:
        given = conninfo_to_dict(url).get("options") or ""
    except psycopg.Error:
        given = ""  # a URL psycopg cannot read fails at connect, with its own message
    return f"{given} {ours}".strip()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

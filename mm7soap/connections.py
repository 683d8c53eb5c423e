"""The SQLite connections of one Store: one per process and thread, opened on first use, and
re-opened when the database file they write is no longer the one at the configured path.

A connection holds its file open.  When the file is deleted or replaced underneath (an
operator restores a backup, a deploy swaps the volume), SQLite goes on writing the old,
unlinked file: every report acknowledged then would be lost.  So before a write the path is
checked to name the file the connection opened, and again after the commit: a report
committed to a file that is no longer the database is answered 3000, and the MMSC's retry
lands in the new file.  A missing file is never created by a write: that is more likely
an unmounted volume than a first start, and the master creates the database at start.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import sqlite_utils

from mm7soap import errors
from mm7soap.dialects import dialect_of

# A file, as the kernel knows it: the same path may name another file after a rename.
FileIdentity = tuple[int, int]
MEMORY = ":memory:"

# The pause between tries for SQLite's write lock: short, since another process holds it
# for one commit (about a millisecond), and growing only a little.
FIRST_PAUSE = 0.0001
LONGEST_PAUSE = 0.002


class StoreConnections(Protocol):
    """What a store's engine provides to mm7soap.store and mm7soap.commit: this thread's
    connection, a write transaction on it, and what to do when one fails.  SQLite's is
    `Connections` below, PostgreSQL's mm7soap.postgres.PgConnections."""

    path: str
    prepare: Callable[[], object] | None

    @property
    def db(self) -> Any: ...
    def for_writing(self) -> Any: ...
    def begin(self, db: Any) -> None: ...
    def write_batch(self, db: Any, batch: list[Any], one_by_one: Callable[[Any, list[Any]], None]) -> None: ...
    def check_committed(self) -> None: ...
    def spoils_batch(self, exc: BaseException) -> bool: ...
    def recover(self, db: Any, exc: BaseException) -> None: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


def file_identity(path: str) -> FileIdentity | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class Connections:
    """Each thread's connection of each process; connections are never shared across a fork."""

    def __init__(
        self, path: str, busy_timeout_ms: int, synchronous: str, prepare: Callable[[], object] | None = None
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.prepare = prepare  # what a file needs before a process writes it (the migrations)
        self._local = threading.local()
        # Every connection opened, with the process that opened it: close() closes this
        # process's.  One inherited across a fork is kept here but never used or closed
        # again, since closing it could checkpoint a WAL the parent is still writing.
        self._opened: list[tuple[int, sqlite_utils.Database]] = []
        self._lock = threading.Lock()
        self._prepared: dict[int, set[FileIdentity]] = {}  # files each process has migrated

    @property
    def db(self) -> sqlite_utils.Database:
        """This process's and thread's connection, opened on first use (after any fork)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = self._connect()
            self._local.db, self._local.pid = db, os.getpid()
            self._local.identity = file_identity(self.path)
            with self._lock:
                self._opened.append((os.getpid(), db))
        return db

    def for_writing(self) -> sqlite_utils.Database:
        """This thread's connection to the file now at the path; StoreError if there is none."""
        if self.path == MEMORY:
            return self.db
        now = file_identity(self.path)
        if now is None:
            raise errors.StoreError(f"the database file {self.path} is missing")
        db = self.db
        if self._local.identity != now:  # replaced since this connection opened it
            self.discard()
            db = self.db
        prepared = self._prepared.get(os.getpid(), set())
        if now not in prepared and self.prepare is not None:
            try:
                self.prepare()  # a file this process has not written yet may lack the schema
            except BaseException:
                self.discard()  # it may have opened read-only, or found garbage
                raise
            self._prepared[os.getpid()] = prepared | {now}
        return db

    def begin(self, db: sqlite_utils.Database) -> None:
        """BEGIN IMMEDIATE, retried every fraction of a millisecond up to the busy timeout."""
        begin_immediate(db.conn, self.busy_timeout_ms)

    def write_batch(
        self, db: sqlite_utils.Database, batch: list[Any], one_by_one: Callable[[Any, list[Any]], None]
    ) -> None:
        """A group commit's writes, each in its savepoint: SQLite is in this process, a
        statement costs no round trip."""
        one_by_one(db, batch)

    def spoils_batch(self, exc: BaseException) -> bool:
        """A SQLite failure other than a broken constraint, which is one row's own."""
        return isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError)

    def recover(self, db: sqlite_utils.Database | None, exc: BaseException) -> None:
        """Leave no transaction open; drop a connection a failure may have spoilt (a file
        opened read-only stays read-only, an I/O error may repeat), but not for a busy lock."""
        if db is None:
            return
        try:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
        except sqlite3.Error:
            self.discard()
            return
        if self.spoils_batch(exc) and not (isinstance(exc, sqlite3.OperationalError) and busy(exc)):
            self.discard()

    def check_committed(self) -> None:
        """StoreError if the file just committed to is no longer the one at the path."""
        if self.path != MEMORY and file_identity(self.path) != self._local.identity:
            self.discard()
            raise errors.StoreError(f"the database file {self.path} was replaced or deleted during the commit")

    def discard(self) -> None:
        """Close this thread's connection: the next use opens a new one (after a failure
        that may have left it unusable: a read-only file opened read-only stays so)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            return
        with self._lock:
            self._opened = [(pid, other) for pid, other in self._opened if other is not db]
        self._local.db = None
        db.conn.close()

    def _connect(self) -> sqlite_utils.Database:
        # check_same_thread=False only so close() may close another thread's connection;
        # each connection is used by the one thread that opened it (see `db`).
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            set_wal(conn, self.busy_timeout_ms)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            return sqlite_utils.Database(conn)
        except BaseException:
            # A file that is not a database opens, then fails at the first statement: close it
            # here, or it holds the file open until the garbage collector finds it (Python
            # 3.13 warns then, in whichever test or request happens to be running).
            conn.close()
            raise

    def close(self) -> None:
        """Close every connection this process opened (not those inherited across a fork)."""
        pid = os.getpid()
        with self._lock:
            mine = [db for opener, db in self._opened if opener == pid]
            self._opened = [(opener, db) for opener, db in self._opened if opener != pid]
        for db in mine:
            db.conn.close()
        self._local = threading.local()


def set_wal(conn: sqlite3.Connection, timeout_ms: int) -> None:
    """journal_mode WAL, tried again until `timeout_ms`: on a new file, processes starting
    together (workers, instances) switch it at the same moment, and the switch answers
    "database is locked" at once rather than wait as the busy timeout says."""
    until_not_busy(conn, "PRAGMA journal_mode = WAL", timeout_ms)


def busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def begin_immediate(conn: sqlite3.Connection, timeout_ms: int) -> None:
    """BEGIN IMMEDIATE, retried every fraction of a millisecond until `timeout_ms`."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        until_not_busy(conn, "BEGIN IMMEDIATE", timeout_ms)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")


def until_not_busy(conn: sqlite3.Connection, sql: str, timeout_ms: int) -> None:
    """`sql`, run again while SQLite answers busy or locked, after a pause growing from
    FIRST_PAUSE to LONGEST_PAUSE, until `timeout_ms`."""
    deadline = time.monotonic() + timeout_ms / 1000
    pause = FIRST_PAUSE
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if not busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)


@contextmanager
def transaction(db: Any) -> Iterator[Any]:
    """A write transaction (SQLite: BEGIN IMMEDIATE) … COMMIT on an autocommit connection of
    either engine; ROLLBACK when anything fails, the COMMIT itself included (a full disk
    fails there), so no transaction is left open."""
    db.conn.execute(dialect_of(db).begin)
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def in_batches(
    db: Any,
    step: Callable[[int], int | None],
    pause: float,
    stopping: threading.Event | None = None,
) -> None:
    """Long work as short write transactions: `step(after)` runs in its own BEGIN IMMEDIATE …
    COMMIT, again and again, with a `pause` between, until it returns None instead of where
    the next one starts (first 0), or `stopping` is set.  A report waits for one step at
    most, never for the whole work (outbox prune, retention)."""
    after: int | None = 0
    while after is not None and not (stopping is not None and stopping.is_set()):
        with transaction(db):
            after = step(after)
        if after is None:
            return
        if stopping is None:
            time.sleep(pause)
        elif stopping.wait(pause):
            return

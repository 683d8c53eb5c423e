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

import sqlite_utils

from mm7soap import errors

# A file, as the kernel knows it: the same path may name another file after a rename.
FileIdentity = tuple[int, int]
MEMORY = ":memory:"


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
            conn.execute("PRAGMA journal_mode = WAL")
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


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection; ROLLBACK when anything fails,
    the COMMIT itself included (a full disk fails there), so no transaction is left open."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def in_batches(
    db: sqlite_utils.Database,
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

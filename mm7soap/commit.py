"""Group commit: requests that arrive together are committed together, each acknowledged
only after the commit that holds it.

With `synchronous=FULL` every commit waits for the disk, and with several threads in
several gunicorn workers every commit also waited for the others': SQLite's busy handler
sleeps 1, 2, 5 … 100 ms between tries, which made the tail latency hundreds of
milliseconds (issue 7).  Here the threads of one process hand their writes to whichever of
them leads: the first to find no commit in progress.  It runs all the writes waiting in one
transaction, each in a savepoint of its own, and commits once.  A write that fails is rolled back to its
savepoint and fails alone; a commit that fails fails every write in it.  The lock between
processes is still SQLite's, but it is taken with short retries rather than those sleeps.
What is the engine's own (taking the lock, a failure that spoils the batch, recovering from
it) is its connections' (mm7soap.connections for SQLite, mm7soap.postgres for PostgreSQL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlite_utils

from mm7soap import errors

if TYPE_CHECKING:
    from mm7soap.connections import StoreConnections

Work = Callable[[sqlite_utils.Database], Any]
# Told of each commit: how many writes it held and how many seconds it took (mm7soap.metrics).
CommitObserver = Callable[[int, float], None]


@dataclass(eq=False)
class Ticket:
    """One write waiting for a commit, and its outcome once committed (or not)."""

    work: Work
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """The writes of one process, committed in groups by whichever thread is leading."""

    def __init__(
        self, connections: StoreConnections, busy_timeout_ms: int, observe: CommitObserver | None = None
    ) -> None:
        self.connections = connections  # the calling thread's connection is the leader's
        self.busy_timeout_ms = busy_timeout_ms
        self.observe = observe
        # Guards `pending` and `leading`; notified when a leader is done.  Each waiting
        # thread wakes then, and one whose write was committed returns at once: waiting on
        # one lock for the leader's turn, it could queue behind the next leader's whole commit.
        self.changed = threading.Condition()
        self.pending: list[Ticket] = []
        self.leading = False

    def run(self, work: Work) -> Any:
        """Run `work` in a transaction and commit it (perhaps with others' work); its result,
        or StoreError.  Returns only once the commit is durable."""
        ticket = Ticket(work)
        with self.changed:
            self.pending.append(ticket)
            while self.leading and not ticket.done:
                self.changed.wait()
            batch = self.lead() if not ticket.done else []
        if batch:  # nobody was committing: this thread commits what has queued up
            try:
                self.commit(batch)
            finally:
                self.step_down()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def lead(self) -> list[Ticket]:
        """Become the leader (with `changed` held) and take every write waiting."""
        self.leading = True
        batch, self.pending = self.pending, []
        return batch

    def step_down(self) -> None:
        """The leader is done: wake those whose writes it committed, and the next leader."""
        with self.changed:
            self.leading = False
            self.changed.notify_all()

    def commit(self, batch: list[Ticket]) -> None:
        db: sqlite_utils.Database | None = None
        started = time.perf_counter()
        try:
            db = self.connections.for_writing()
            self.connections.begin(db)
            self.connections.write_batch(db, batch, self.run_each)
            db.conn.execute("COMMIT")
            self.connections.check_committed()
        except BaseException as exc:
            self.connections.recover(db, exc)
            for ticket in batch:
                ticket.error = ticket.error or store_error(exc)
            if not isinstance(exc, Exception):
                raise
        else:  # a commit that failed is counted by its requests' 3000s, not here
            if self.observe is not None:
                self.observe(len(batch), time.perf_counter() - started)
        finally:
            for ticket in batch:  # whatever happened, no ticket is left waiting or acknowledged
                ticket.done = True

    def run_each(self, db: sqlite_utils.Database, batch: list[Ticket]) -> None:
        if len(batch) == 1:  # alone: a failure rolls the transaction back, no savepoint needed
            batch[0].result = batch[0].work(db)
            return
        for ticket in batch:
            db.conn.execute("SAVEPOINT write")
            try:
                ticket.result = ticket.work(db)
            except Exception as exc:
                if self.connections.spoils_batch(exc) or not db.conn.in_transaction:
                    # The database, not this write, is in trouble (read-only, full, an I/O
                    # error; SQLite may have rolled back already): the batch fails together.
                    raise
                ticket.error = store_error(exc)
                db.conn.execute("ROLLBACK TO write")
            db.conn.execute("RELEASE write")


def store_error(exc: BaseException) -> errors.MM7Error:
    if isinstance(exc, errors.MM7Error):
        return exc
    # The first line: PostgreSQL's messages go on with hints ("This probably means…").
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return errors.StoreError(f"not stored: {reason}")

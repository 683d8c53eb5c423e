"""/health's check, answered within `health_timeout` whatever the database is doing.

The check is a write made as a report's is (`Store.check_writable`: the file checks, the
migrations, BEGIN IMMEDIATE, COMMIT), so 200 still means "a report would be stored now".
But that write may wait: for another writer's lock up to `busy_timeout_ms` (5 s), and for a
stalled disk or a hung network mount without any limit.  A load balancer whose probe gave up
first saw a timeout, not a 503.

So the write runs in a thread of its own and the probe waits for it at most the timeout; past
it the answer is 503 and why.  (A shorter busy timeout only for the check would bound the lock,
not an fsync or a `stat` that hangs.)  Threads cannot pile up under a probe every second with
a stuck database: a probe that finds a check still running waits for that one rather than
starting another, so each process has at most one check thread, stuck or not.

The check thread may outlive the probe that started it, so it writes on a connection of its own
(`Store.separate_writes`: the same steps as a report's commit, file checks and migrations
included) that `Store.close` does not close under it, and closes that connection when it ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from mm7soap import errors
from mm7soap.commit import GroupCommit
from mm7soap.store import Store

log = logging.getLogger(__name__)

THREAD_NAME = "mm7soap-health"
# The share of the timeout the probe waits: the rest is for writing the 503, so that it is on
# the wire before a load balancer with that same timeout gives up.
WAIT_SHARE = 0.95


class Attempt:
    """One check write in its own thread; `error` says why it failed once the thread is done."""

    def __init__(self, store: Store, writes: GroupCommit) -> None:
        self.store = store
        self.writes = writes
        self.error: str | None = None
        self.thread = threading.Thread(target=self.run, name=THREAD_NAME, daemon=True)

    def run(self) -> None:
        try:
            self.store.check_writable(self.writes)
        except errors.MM7Error as exc:
            self.error = exc.details or exc.status_text
        except Exception as exc:  # /health answers 503 with a reason, never a traceback
            log.exception("the health check failed unexpectedly")
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.writes.connections.discard()  # this thread ends here, and its connection


class WriteCheck:
    """Whether a report could be stored right now, known within `timeout` seconds."""

    def __init__(self, store: Store, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._lock = threading.Lock()
        self._current: Attempt | None = None
        self._writes: tuple[int, GroupCommit] | None = None  # made in the process that checks

    def why_not(self) -> str | None:
        """None when a check write committed; otherwise why not, after at most `timeout`."""
        deadline = time.monotonic() + self.timeout * WAIT_SHARE
        attempt = self.attempt()
        attempt.thread.join(max(0.0, deadline - time.monotonic()))
        if attempt.thread.is_alive():
            return f"the check write did not finish in time (health_timeout {self.timeout:g} s)"
        return attempt.error

    def attempt(self) -> Attempt:
        """The check running now, or a new one when none is (after a fork none is: the
        parent's threads are not alive in the child)."""
        with self._lock:
            if self._current is None or not self._current.thread.is_alive():
                if self._writes is None or self._writes[0] != os.getpid():
                    self._writes = (os.getpid(), self.store.separate_writes())
                self._current = Attempt(self.store, self._writes[1])
                self._current.thread.start()
            return self._current

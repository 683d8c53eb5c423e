"""Writers of two instances on one PostgreSQL database (issue 20): a resend reaching both at
once must not make them deadlock.

Found by tests/reliability/test_scale_out.py: instance A's group commit stored X then W while
B's stored W then X (each a resend the other had too).  Each held its first row, uncommitted,
and the outbox's advisory lock (mm7soap.dialects) was taken only at the first event; A held
the lock and waited for B's W, B waited for the lock: PostgreSQL broke the deadlock after a
second (`deadlock_timeout`) and a whole batch was answered 3000.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import closing, suppress
from typing import Any

import psycopg

from mm7soap.schema import REPORT_COLUMNS, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import RESENT_REPORT_SQL, Store, Stored, announced, insert_once

# Long enough for the other writer to store its first row, when it is not waiting for the lock.
MEET_SECONDS = 1.5


def row(name: str) -> dict[str, Any]:
    return {"message_id": f"mid-{name}", "mm_status": "Retrieved", "fingerprint": f"fingerprint-{name}"}


def storing(first: str, second: str, met: threading.Barrier) -> Callable[[Any], list[Stored]]:
    """A group commit's work storing two reports, `first` then `second`, that meets the other
    writer after storing its first row, each as save_delivery_report would."""

    def work(db: Any) -> list[Stored]:
        stored = []
        for number, name in enumerate((first, second)):
            found = insert_once(db, REPORTS, REPORT_COLUMNS, row(name), RESENT_REPORT_SQL[REPORTS])
            if number == 0:
                with suppress(threading.BrokenBarrierError):  # the other writer waits for us: go on
                    met.wait(MEET_SECONDS)
            stored.append(announced(db, found, "delivery_report", f"mid-{name}"))
        return stored

    return work


def test_two_instances_storing_the_same_reports_in_opposite_order_both_commit(postgresql_url: str) -> None:
    instances = [Store(Settings(database=postgresql_url)) for _ in range(2)]
    met = threading.Barrier(2)
    results: dict[int, Any] = {}

    def write(index: int, first: str, second: str) -> None:
        try:
            results[index] = instances[index].writes.run(storing(first, second, met))
        except Exception as exc:  # the test says which writer failed, and why
            results[index] = exc

    try:
        instances[0].migrate()
        threads = [
            threading.Thread(target=write, args=(0, "x", "w")),
            threading.Thread(target=write, args=(1, "w", "x")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for store in instances:
            store.close()
    assert not [result for result in results.values() if isinstance(result, Exception)], results
    assert sorted(stored.duplicate for both in results.values() for stored in both) == [False, False, True, True]
    with closing(psycopg.connect(postgresql_url)) as conn:
        assert conn.execute(f"SELECT count(*) FROM {REPORTS}").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (2,)

"""Watching the statements a connection runs, on either back end: the tests that count a
prune's transactions, or store a report between two of them, run on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mm7soap.postgres import PgDatabase


def trace_statements(db: Any, seen: Callable[[str], object]) -> None:
    """Call `seen(sql)` with each statement `db` runs, before it runs: SQLite's trace callback,
    or on PostgreSQL a wrapper of the connection's `execute` (which `db.conn.execute` is too),
    given the statement as written, SQLite's placeholders and all."""
    if not isinstance(db, PgDatabase):
        db.conn.set_trace_callback(seen)
        return
    run = db.execute

    def traced(sql: str, params: Any = None) -> Any:
        seen(sql)
        return run(sql, params)

    db.execute = traced  # type: ignore[method-assign]

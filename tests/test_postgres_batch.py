"""A group commit's reports on PostgreSQL in one round trip (mm7soap.postgres_batch): the
same rows, events, resends and failures as one statement at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mm7soap import errors, outbox, postgres_batch
from mm7soap.commit import Ticket
from mm7soap.dialects import POSTGRESQL
from mm7soap.postgres import translate
from mm7soap.schema import OUTBOX, READ_REPLIES, READ_REPLY_COLUMNS, REPORT_COLUMNS, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import RowWrite, Store
from tests.backends import fail_inserts_into


@pytest.fixture
def store(postgresql_url: str) -> Iterator[Store]:
    with Store(Settings(database=postgresql_url, busy_timeout_ms=2000)) as made:
        made.migrate()
        yield made


def report(number: int, status: str = "Retrieved") -> RowWrite:
    row: dict[str, Any] = {column: None for column in REPORT_COLUMNS if column not in ("id", "received_at")}
    row.update(
        message_id=f"msg-{number}",
        recipient="15551230001",
        mm_status=status,
        transaction_id=f"tx-{number}-{status}",
        namespace="REL-6-MM7-1-4",
        fingerprint=f"report-{number}-{status}",
        raw_envelope=b"<Envelope/>\x00\xff",
    )
    return RowWrite(REPORTS, REPORT_COLUMNS, row, "delivery_report", row["message_id"])


def read_reply(number: int) -> RowWrite:
    row: dict[str, Any] = {column: None for column in READ_REPLY_COLUMNS if column not in ("id", "received_at")}
    row.update(message_id=f"msg-{number}", mm_status="Read", fingerprint=f"reply-{number}")
    return RowWrite(READ_REPLIES, READ_REPLY_COLUMNS, row, "read_reply", row["message_id"])


def commit(store: Store, works: list[Any]) -> list[Ticket]:
    """One group commit of `works`, as a leader commits what has queued up."""
    batch = [Ticket(work) for work in works]
    store.writes.commit(batch)
    assert all(ticket.done for ticket in batch)
    return batch


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many writes each pipelined round trip carried."""
    sent: list[int] = []
    send = postgres_batch.send_in_one_round_trip

    def counted(db: Any, writes: list[RowWrite]) -> Any:
        sent.append(len(writes))
        return send(db, writes)

    monkeypatch.setattr(postgres_batch, "send_in_one_round_trip", counted)
    return sent


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(found) for found in store.db.execute(sql).fetchall()]


def test_a_batch_of_reports_is_one_round_trip_with_each_row_and_event(store: Store, round_trips: list[int]) -> None:
    works = [report(1, "Forwarded"), report(2), read_reply(3), report(1, "Retrieved")]
    batch = commit(store, works)
    assert round_trips == [4]
    assert [ticket.error for ticket in batch] == [None] * 4
    assert [ticket.result.duplicate for ticket in batch] == [False] * 4
    stored = rows(store, f"SELECT id, message_id, mm_status, raw_envelope, received_at FROM {REPORTS} ORDER BY id")
    assert [(r[1], r[2], bytes(r[3])) for r in stored] == [
        ("msg-1", "Forwarded", b"<Envelope/>\x00\xff"),
        ("msg-2", "Retrieved", b"<Envelope/>\x00\xff"),
        ("msg-1", "Retrieved", b"<Envelope/>\x00\xff"),
    ]
    # Each ticket's result names its own row, and received_at is the stored one.
    assert [(t.result.id, t.result.received_at) for t in (batch[0], batch[1], batch[3])] == [
        (r[0], r[4]) for r in stored
    ]
    events = rows(
        store, f"SELECT type, source_id, order_key, created_at, next_attempt_at FROM {OUTBOX} ORDER BY sequence"
    )
    assert [(e[0], e[1], e[2]) for e in events] == [
        ("delivery_report", stored[0][0], "msg-1"),
        ("delivery_report", stored[1][0], "msg-2"),
        ("read_reply", batch[2].result.id, "msg-3"),
        ("delivery_report", stored[2][0], "msg-1"),
    ]
    assert all(created == due for _, _, _, created, due in events)  # none waits for a retry


def test_resends_in_a_batch_find_their_stored_row_and_make_no_event(store: Store, round_trips: list[int]) -> None:
    [first] = commit(store, [report(1)])  # alone: written the ordinary way
    batch = commit(store, [report(1), report(2), report(2)])
    assert round_trips == [3]
    assert [(t.error, t.result.duplicate) for t in batch] == [(None, True), (None, False), (None, True)]
    assert batch[0].result.id == first.result.id
    assert batch[2].result.id == batch[1].result.id
    assert rows(store, f"SELECT count(*) FROM {REPORTS}") == [(2,)]
    assert rows(store, f"SELECT count(*) FROM {OUTBOX}") == [(2,)]


def test_a_report_behind_one_waiting_for_a_retry_is_due_no_earlier(store: Store) -> None:
    commit(store, [report(1, "Forwarded")])
    store.db.execute(f"UPDATE {OUTBOX} SET next_attempt_at = '2999-01-01T00:00:00.000000Z'")
    commit(store, [report(1, "Retrieved"), report(2)])
    due = rows(store, f"SELECT order_key, next_attempt_at FROM {OUTBOX} ORDER BY sequence")
    assert due[1] == ("msg-1", "2999-01-01T00:00:00.000000Z")  # as mm7soap.outbox.RECORD_SQL
    assert due[2][1] < "2999"


def test_a_failing_report_fails_alone_and_the_others_are_stored(store: Store, round_trips: list[int]) -> None:
    # A row's own failure (a broken constraint), not the database's: the others are stored.
    store.db.execute(f"ALTER TABLE {REPORTS} ADD CONSTRAINT refuse CHECK (message_id != 'msg-2')")
    batch = commit(store, [report(1), report(2), report(3)])
    assert round_trips == [3]  # tried in one round trip, then one by one
    assert batch[0].error is None and batch[2].error is None
    assert isinstance(batch[1].error, errors.StoreError)
    assert rows(store, f"SELECT message_id FROM {REPORTS} ORDER BY id") == [("msg-1",), ("msg-3",)]
    assert rows(store, f"SELECT order_key FROM {OUTBOX} ORDER BY sequence") == [("msg-1",), ("msg-3",)]


def test_a_failing_database_fails_the_whole_batch(store: Store) -> None:
    with fail_inserts_into(store.db, REPORTS, when="NEW.message_id = 'msg-2'"):  # "disk full"
        batch = commit(store, [report(1), report(2), report(3)])
    assert all(isinstance(ticket.error, errors.StoreError) for ticket in batch)
    assert rows(store, f"SELECT count(*) FROM {REPORTS}") == [(0,)]
    assert rows(store, f"SELECT count(*) FROM {OUTBOX}") == [(0,)]


def test_a_batch_with_another_write_in_it_goes_one_by_one(store: Store, round_trips: list[int]) -> None:
    other = []
    batch = commit(store, [report(1), lambda db: other.append(db.execute("SELECT 1").fetchone()), report(2)])
    assert round_trips == []
    assert [ticket.error for ticket in batch] == [None] * 3 and other == [(1,)]
    assert rows(store, f"SELECT count(*) FROM {OUTBOX}") == [(2,)]


def generic_plan(store: Store, sql: str, params: list[Any] | dict[str, Any]) -> list[str]:
    """The generic plan PostgreSQL keeps for `sql` once psycopg has prepared it (at its sixth
    run on a connection), as PostgreSQL would choose it on this database now.  The statement
    is run once, prepared at once, to find its prepared statement; nothing else here is."""
    connection = store.connections.for_writing().connection

    def prepared() -> set[str]:
        found = connection.execute("SELECT name FROM pg_prepared_statements", prepare=False)
        return {name for (name,) in found}

    connection.execute("SET plan_cache_mode = force_generic_plan", prepare=False)
    try:
        before = prepared()
        connection.execute(sql, params, prepare=True)
        [name] = prepared() - before
        [count] = connection.execute(
            "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = %s", [name], prepare=False
        ).fetchone()
        plan = connection.execute(f"EXPLAIN EXECUTE {name}({', '.join(['NULL'] * count)})", prepare=False)
        return [line for (line,) in plan]
    finally:
        connection.execute("RESET plan_cache_mode", prepare=False)


def index_scans(plan: list[str]) -> list[tuple[str, str, str]]:
    """Each index scan of a plan: (index, table and alias, its Index Cond)."""
    scans = []
    for line, following in zip(plan, [*plan[1:], ""], strict=True):
        if " using " in line and "Index Cond: " in following:
            index, _, table = line.split(" using ", 1)[1].split("  (")[0].partition(" on ")
            scans.append((index, table, following.split("Index Cond: ", 1)[1]))
    return scans


def test_a_message_ids_pending_events_are_looked_up_by_its_message_id_on_a_new_database(store: Store) -> None:
    """Four statements look up the pending events of one MessageID: a new event's due time
    (the latest of its MessageID's), written by a batch's report and by an event of its own;
    the claim's "no earlier event of its MessageID still pending"; a failed delivery's
    successors made to wait.  On a new, empty outbox a scan of outbox_due costs PostgreSQL
    the same as going to the MessageID, and the generic plan psycopg's prepared statements
    keep was the walk through every pending event until autovacuum's first statistics: one
    client committing 32 reports at a time stored 1,900 a second instead of 11,000, fewer
    as the backlog grew.  They must go to the MessageID in outbox_pending_order; the claim
    alone walks outbox_due, for the due events."""
    write = report(1)
    names = [column for column in write.columns if column != "id"]
    row = {**write.row, "received_at": "2026-12-04T12:00:00.000Z"}
    event = {"event_id": "evt_2", "type": "message", "source_id": 1, "order_key": "m", "created_at": "2026"}
    statements: dict[str, tuple[str, Any]] = {
        "a batch's report": (
            postgres_batch.row_and_event_sql(write.table, tuple(write.columns), write.event_type),
            [*(row.get(column) for column in names), "evt_1", "m", "m"],
        ),
        "an event of its own": (translate(outbox.record_sql(POSTGRESQL)), event),
        "the claim": (translate(outbox.claim_sql(POSTGRESQL)), {"now": "2026", "limit": 2}),
        "a failure's successors": (translate(outbox.SUCCESSORS_WAIT_SQL), {"retry_at": "2026", "sequence": 1}),
    }
    for name, (sql, params) in statements.items():
        plan = generic_plan(store, sql, params)
        scans, shown = index_scans(plan), f"{name}:\n" + "\n".join(plan)
        conditions = [condition.lstrip("(") for index, _, condition in scans if index == "outbox_pending_order"]
        assert any(condition.startswith("order_key = ") for condition in conditions), shown
        walks = [table for index, table, _ in scans if index == "outbox_due"]
        assert walks == (["outbox o"] if name == "the claim" else []), shown

"""Retention (issue 19): `mm7soap prune` and MM7SOAP_RETENTION_DAYS delete what is older than
the age, in short transactions, never a row whose event is not delivered; then the space.

Rows are stored by the real app (with their outbox events), then made old by moving their
times back, as if they had been stored 100 days ago."""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from mm7soap import outbox_admin, postgres, retention
from mm7soap.cli import cli
from mm7soap.connections import transaction
from mm7soap.schema import MIGRATIONS
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.supervisor import RetentionProcess
from mm7soap.times import utc_timestamp
from tests.backends import only_postgresql, only_sqlite
from tests.helpers import migrate_to
from tests.statements import trace_statements
from tests.test_cli import post_mo
from tests.test_stored_right import acknowledged, read_reply, report

DAY = 86400.0
OLD = utc_timestamp(datetime.now(timezone.utc) - timedelta(days=100))
TYPES = {"delivery_reports": "delivery_report", "read_replies": "read_reply", "messages": "message"}


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test of a database here runs on SQLite and on PostgreSQL (tests/conftest.py);
    those about SQLite's own mechanics (PRAGMAs, its migrations, a file) on SQLite only."""
    return backend_settings


def store_reports(app: Any, *names: str) -> list[int]:
    """Delivery reports stored by the app, one MessageID each; their ids."""
    for name in names:
        acknowledged(app, report(f"tx-{name}", MessageID=f"<MessageID>{name}</MessageID>"))
    marks = ", ".join("?" * len(names))
    found = app.store.db.execute(f"SELECT id FROM delivery_reports WHERE message_id IN ({marks}) ORDER BY id", names)
    return [row[0] for row in found]


def make_old(app: Any, table: str, ids: list[int], state: str | None = "delivered") -> None:
    """Rows stored 100 days ago, their events (created then) now in `state` (None: no event,
    as for a row of a release before the outbox)."""
    db = app.store.db
    with transaction(db):
        for row_id in ids:
            db.execute(f"UPDATE {table} SET received_at = ? WHERE id = ?", [OLD, row_id])
            event = [TYPES[table], row_id]
            if state is None:
                db.execute("DELETE FROM outbox WHERE type = ? AND source_id = ?", event)
                continue
            delivered = OLD if state == "delivered" else None
            db.execute(
                "UPDATE outbox SET created_at = ?, state = ?, delivered_at = ? WHERE type = ? AND source_id = ?",
                [OLD, state, delivered, *event],
            )


def ids(app: Any, table: str) -> list[int]:
    return [row[0] for row in app.store.db.execute(f"SELECT id FROM {table} ORDER BY id")]


def events(app: Any) -> list[tuple[str, int, str]]:
    return app.store.db.execute("SELECT type, source_id, state FROM outbox ORDER BY sequence").fetchall()


def prune(settings: Settings, **options: Any) -> retention.Pruned:
    with Store(settings) as store:
        return retention.prune(store.db, 90 * DAY, pause=0, **options)


# --- What goes, what stays -------------------------------------------------------------------


def test_only_rows_older_than_the_age_go(app, settings):
    old = store_reports(app, "old-1", "old-2", "old-3")
    recent = store_reports(app, "new-1", "new-2")
    make_old(app, "delivery_reports", old)
    pruned = prune(settings)
    assert ids(app, "delivery_reports") == recent
    assert pruned.deleted["delivery_reports"] == 3 and pruned.kept == 0
    assert [(kind, source, state) for kind, source, state in events(app)] == [
        ("delivery_report", recent[0], "pending"),
        ("delivery_report", recent[1], "pending"),
    ]  # the old rows' delivered events went too, the recent ones' (pending) stay


def test_read_replies_and_rows_without_an_event_go(app, settings):
    acknowledged(app, read_reply("tx-rr-1", "Read"), "ReadReplyRsp")
    acknowledged(app, read_reply("tx-rr-2", "Deleted"), "ReadReplyRsp")
    old, recent = ids(app, "read_replies")
    make_old(app, "read_replies", [old], state=None)  # stored before the outbox existed
    pruned = prune(settings)
    assert ids(app, "read_replies") == [recent]
    assert pruned.deleted["read_replies"] == 1


def test_a_message_goes_with_its_parts(app, settings):
    post_mo(app, "15551230001", "old", "mo-old")
    post_mo(app, "15551230002", "new", "mo-new")
    old, recent = ids(app, "messages")
    make_old(app, "messages", [old])
    pruned = prune(settings)
    assert ids(app, "messages") == [recent]
    parts = app.store.db.execute("SELECT DISTINCT message FROM message_parts").fetchall()
    assert parts == [(recent,)]
    assert (pruned.deleted["messages"], pruned.deleted["message_parts"]) == (1, 2)


def test_a_row_whose_event_is_not_delivered_stays_until_it_is(app, settings):
    pending, failed, delivered = store_reports(app, "pending", "failed", "delivered")
    make_old(app, "delivery_reports", [pending], "pending")
    make_old(app, "delivery_reports", [failed], "failed")
    make_old(app, "delivery_reports", [delivered], "delivered")
    pruned = prune(settings)
    assert ids(app, "delivery_reports") == [pending, failed]
    assert pruned.kept == 2 and pruned.deleted["delivery_reports"] == 1
    assert [state for _, _, state in events(app)] == ["pending", "failed"]  # events stay too
    make_old(app, "delivery_reports", [failed], "delivered")  # retried by hand, and delivered
    assert prune(settings).kept == 1
    assert ids(app, "delivery_reports") == [pending]


def test_an_old_message_with_an_undelivered_event_keeps_its_parts(app, settings):
    post_mo(app, "15551230001", "old", "mo-old")
    [message] = ids(app, "messages")
    make_old(app, "messages", [message], "failed")
    assert prune(settings).kept == 1
    assert app.store.db.execute("SELECT count(*) FROM message_parts").fetchone() == (2,)


def test_rows_are_taken_in_commit_order_until_the_first_inside_the_age(app, settings):
    """A row older than the age after a newer one (a clock set back) waits for a later prune:
    the first row inside the age ends the pass, so the newer rows are never read."""
    first, second, third = store_reports(app, "a", "b", "c")
    make_old(app, "delivery_reports", [first, third])
    prune(settings)
    assert ids(app, "delivery_reports") == [second, third]


def test_events_delivered_long_ago_go_and_undelivered_ones_never(app, settings):
    store_reports(app, "a", "b", "c", "d")
    db = app.store.db
    recently = utc_timestamp(datetime.now(timezone.utc) - timedelta(days=1))
    with transaction(db):  # events of recent rows: only the one delivered long ago goes
        set_event = "UPDATE outbox SET state = ?, created_at = ?, delivered_at = ? WHERE source_id = ?"
        db.execute(set_event, ["delivered", OLD, OLD, 1])
        db.execute(set_event, ["failed", OLD, None, 2])
        db.execute(set_event, ["delivered", OLD, recently, 3])  # after many retries
    pruned = prune(settings)
    assert pruned.deleted["outbox"] == 1
    assert [(source, state) for _, source, state in events(app)] == [(2, "failed"), (3, "delivered"), (4, "pending")]
    assert ids(app, "delivery_reports") == [1, 2, 3, 4]


@only_sqlite
def test_events_are_read_by_sequence_never_sorted(settings):
    """The events' pass reads the next events by the primary key: not all delivered events
    sorted by sequence in each batch (`outbox_state_created` then a sort)."""
    with Store(settings) as store:
        store.migrate()
        plan = store.db.execute("EXPLAIN QUERY PLAN " + outbox_admin.PRUNE_SQL, [0, 1000]).fetchall()
    assert [row[3] for row in plan] == ["SEARCH outbox USING INTEGER PRIMARY KEY (rowid>?)"]


def test_an_age_of_zero_takes_every_delivered_row(app, settings):
    everything = store_reports(app, "a", "b")
    with transaction(app.store.db):
        app.store.db.execute("UPDATE outbox SET state = 'delivered', delivered_at = created_at")
    with Store(settings) as store:
        pruned = retention.prune(store.db, 0, pause=0)
    assert pruned.deleted["delivery_reports"] == len(everything) and ids(app, "delivery_reports") == []
    with pytest.raises(ValueError):
        retention.prune(app.store.db, -1)


# --- Batches -----------------------------------------------------------------------------------


def test_rows_are_deleted_in_batches_of_short_transactions(app, settings):
    old = store_reports(app, *(f"old-{n}" for n in range(5)))
    make_old(app, "delivery_reports", old)
    begun: list[str] = []
    with Store(settings) as store:
        trace_statements(store.db, lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
        pruned = retention.prune(store.db, 90 * DAY, batch=2, pause=0)
    assert pruned.deleted["delivery_reports"] == 5
    # Reports: 2, 2, 1 (which ends it); read replies and messages: 1 each; events: 2, 2, 1.
    assert len(begun) == 3 + 1 + 1 + 3


def test_reports_are_stored_between_the_batches(app, settings):
    old = store_reports(app, *(f"old-{n}" for n in range(6)))
    make_old(app, "delivery_reports", old)
    stored: list[str] = []
    with Store(settings) as store:

        def between(sql: str) -> None:  # before each batch, an MMSC's report is stored
            if sql.startswith("BEGIN") and len(stored) < 3:
                stored.append(f"during-{len(stored)}")
                store_reports(app, stored[-1])

        trace_statements(store.db, between)
        retention.prune(store.db, 90 * DAY, batch=2, pause=0)
    found = app.store.db.execute("SELECT message_id FROM delivery_reports ORDER BY id").fetchall()
    assert [row[0] for row in found] == ["during-0", "during-1", "during-2"]


def test_messages_are_deleted_a_few_megabytes_at_a_time(app, settings, monkeypatch):
    for number in range(3):
        post_mo(app, f"1555123000{number}", "old", f"mo-{number}")
    make_old(app, "messages", ids(app, "messages"))
    size = app.store.db.execute("SELECT content_bytes FROM messages").fetchone()[0]
    monkeypatch.setattr(retention, "BATCH_BYTES", size + 1)  # one message per transaction
    begun: list[str] = []
    with Store(settings) as store:
        trace_statements(store.db, lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
        pruned = retention.prune(store.db, 90 * DAY, pause=0)
    assert pruned.deleted["messages"] == 3 and ids(app, "messages") == []
    assert len(begun) == 1 + 1 + 3 + 1  # reports, read replies, three messages, events


def test_stopping_ends_it_between_two_batches(app, settings):
    old = store_reports(app, *(f"old-{n}" for n in range(4)))
    make_old(app, "delivery_reports", old)
    stopping = threading.Event()
    with Store(settings) as store:
        trace_statements(store.db, lambda sql: stopping.set() if sql == "COMMIT" else None)
        pruned = retention.prune(store.db, 90 * DAY, batch=2, pause=0, stopping=stopping)
    assert pruned.deleted["delivery_reports"] == 2 and len(ids(app, "delivery_reports")) == 2
    assert pruned.deleted["outbox"] == 0 and len(events(app)) == 4  # nothing more once stopped


# --- Space -------------------------------------------------------------------------------------


def pragma(settings: Settings, name: str) -> int:
    with closing(sqlite3.connect(settings.database)) as db:
        return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def fill(app: Any, prefix: str, count: int = 300, text: str = "x" * 2000) -> list[int]:
    """Reports with a long StatusText, so that they take many pages."""
    for number in range(count):
        body = report(f"tx-{prefix}-{number}", MessageID=f"<MessageID>{prefix}-{number}</MessageID>")
        acknowledged(app, body.replace(b"</MMStatus>", f"</MMStatus><StatusText>{text}</StatusText>".encode()))
    return ids(app, "delivery_reports")


@only_sqlite
def test_freed_pages_are_used_by_new_rows(app, settings):
    make_old(app, "delivery_reports", fill(app, "old"))
    pruned = prune(settings)
    assert pragma(settings, "auto_vacuum") == 0 and pruned.returned_bytes == 0
    assert pruned.free_bytes > 300 * 2000  # the old reports' pages, free
    pages = pragma(settings, "page_count")
    fill(app, "new")
    # The new rows need as many pages as the old ones: the file barely grew, they took those.
    assert pragma(settings, "page_count") - pages < pruned.free_bytes / 4096 / 10


@only_sqlite
def test_vacuum_gives_the_space_back_and_makes_later_prunes_give_theirs(app, settings):
    make_old(app, "delivery_reports", fill(app, "first"))
    app.store.close()  # VACUUM wants no other connection in a transaction; the app's is idle anyway
    pruned = prune(settings, vacuum=True)
    assert pruned.vacuumed and pruned.returned_bytes > 300 * 2000 and pruned.free_bytes == 0
    assert pragma(settings, "auto_vacuum") == retention.INCREMENTAL
    make_old(app, "delivery_reports", fill(app, "second"))
    size = checkpointed_size(settings)
    pruned = prune(settings)  # incremental now: in steps, without VACUUM
    assert not pruned.vacuumed and pruned.returned_bytes > 300 * 2000 and pruned.free_bytes == 0
    assert pragma(settings, "freelist_count") == 0
    assert checkpointed_size(settings) < size - 300 * 2000


def checkpointed_size(settings: Settings) -> int:
    """The database file's size once the WAL is copied into it."""
    with closing(sqlite3.connect(settings.database)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(settings.database)


@only_sqlite
def test_the_incremental_vacuum_runs_in_steps(app, settings, monkeypatch):
    make_old(app, "delivery_reports", fill(app, "first"))
    prune(settings, vacuum=True)
    make_old(app, "delivery_reports", fill(app, "second"))
    monkeypatch.setattr(retention, "VACUUM_STEP_PAGES", 16)
    steps: list[str] = []
    with Store(settings) as store:
        store.db.conn.set_trace_callback(lambda sql: steps.append(sql) if "incremental_vacuum" in sql else None)
        pruned = retention.prune(store.db, 90 * DAY, pause=0)
    assert all(sql.strip() == "PRAGMA incremental_vacuum(16);" for sql in steps)
    freed = pruned.returned_bytes // 4096
    assert len(steps) > 5 and len(steps) <= -(-freed // 16) + 1  # 16 pages a step, not one


# PostgreSQL compresses a long value: random text does not shrink, and takes its own size.
RANDOM_TEXT = base64.b64encode(os.urandom(1500)).decode()


def table_bytes(settings: Settings, table: str = "delivery_reports") -> int:
    """A table's size on disk, its TOAST (long values) and indexes included."""
    with Store(settings) as store:
        return retention.relation_bytes(store.db, [table])


@only_postgresql
def test_on_postgresql_each_prune_vacuums_so_new_rows_take_the_space_of_the_old(app, settings):
    """Autovacuum is off for the table: only the prune's own VACUUM can make the deleted rows'
    space free.  Recent rows after the old ones keep it from being cut off the table's end."""
    app.store.migrate()
    app.store.db.execute(
        "ALTER TABLE delivery_reports SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
    )
    empty = table_bytes(settings)
    old = fill(app, "old", text=RANDOM_TEXT)
    fill(app, "recent", 10, RANDOM_TEXT)
    grown = table_bytes(settings) - empty
    make_old(app, "delivery_reports", old)
    assert prune(settings).deleted["delivery_reports"] == 300
    pruned = table_bytes(settings)
    fill(app, "new", text=RANDOM_TEXT)
    # Without the VACUUM the new rows go after the old ones: the table grows by as much again.
    assert table_bytes(settings) - pruned < grown / 4


@only_postgresql
def test_on_postgresql_vacuum_is_vacuum_full_which_gives_the_space_back(app, settings):
    old = fill(app, "old", text=RANDOM_TEXT)
    fill(app, "recent", 10, RANDOM_TEXT)  # a plain VACUUM can only cut empty pages off the end
    make_old(app, "delivery_reports", old)
    assert prune(settings).returned_bytes < 300 * 2000
    wait_until_every_older_transaction_ended(settings)
    before = table_bytes(settings)
    pruned = prune(settings, vacuum=True)  # the rows deleted by the prune before
    assert pruned.vacuumed and not pruned.gives_back_later
    assert pruned.returned_bytes > 300 * 2000
    assert table_bytes(settings) < before - 300 * 2000


def wait_until_every_older_transaction_ended(settings: Settings) -> None:
    """VACUUM FULL keeps the deleted rows a transaction still running anywhere in the cluster
    began before (its own snapshot counts them): other test runs may share this cluster."""
    with Store(settings) as store:
        now = str(store.db.execute("SELECT pg_current_xact_id()").fetchone()[0])
        wait_for(
            lambda: store.db.execute("SELECT pg_snapshot_xmin(pg_current_snapshot()) > ?::xid8", [now]).fetchone()[0]
        )


# --- The migration -----------------------------------------------------------------------------


@only_sqlite
def test_migration_7_replaces_the_message_id_index_and_adds_retentions(settings):
    with Store(settings) as store:
        db = store.db
        with transaction(db):
            migrate_to(db, 6)
        db.execute(
            "INSERT INTO delivery_reports (received_at, message_id, recipient, mm_status, fingerprint)"
            " VALUES ('2026-11-27T10:00:00.000000Z', 'm1', 'r1', 'Retrieved', 'fp')"
        )
        assert "delivery_reports_message_id" in {index.name for index in db["delivery_reports"].indexes}
        store.migrate()
        indexes = {index.name for table in db.tables for index in table.indexes}
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "delivery_reports_message_id" not in indexes
        assert {
            "delivery_reports_message",
            "delivery_reports_received_at",
            "read_replies_received_at",
            "outbox_undelivered",
        } <= indexes
        assert db.execute("SELECT count(*) FROM delivery_reports").fetchone() == (1,)
        sql = "SELECT source_id FROM outbox WHERE type = ? AND state != 'delivered' AND source_id IN (?, ?)"
        plan = db.execute("EXPLAIN QUERY PLAN " + sql, ["delivery_report", 1, 2]).fetchall()
        assert "outbox_undelivered" in plan[0][3]
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM delivery_reports WHERE message_id = 'm1'").fetchall()
        assert "delivery_reports_message" in plan[0][3]  # lookups by MessageID keep an index


@only_sqlite
def test_a_database_without_an_outbox_is_pruned(settings):
    with Store(settings) as store:
        db = store.db
        for migration in MIGRATIONS[:5]:
            migration(db)
        db.execute(
            "INSERT INTO delivery_reports (received_at, message_id, recipient, mm_status, fingerprint)"
            " VALUES (?, 'm1', 'r1', 'Retrieved', 'fp')",
            [OLD],
        )
        pruned = retention.prune(db, 90 * DAY, pause=0)
    assert pruned.deleted["delivery_reports"] == 1 and pruned.deleted["outbox"] == 0


# --- The command -------------------------------------------------------------------------------


def run(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["prune", "-d", settings.database, *args], env=env)


def test_the_command_prunes_and_says_what_it_did(app, settings):
    old = store_reports(app, "old-1", "old-2", "kept")
    make_old(app, "delivery_reports", old[:2])
    make_old(app, "delivery_reports", old[2:], "failed")
    result = run(settings, "--older-than", "90d")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("deleted 2 delivery reports, 0 read replies, 0 MO messages (0 parts) stored before ")
    assert lines[0].endswith(", and 2 delivered events")
    assert lines[1] == "kept 1 older rows: their events are not delivered yet (mm7soap outbox)"
    assert ids(app, "delivery_reports") == old[2:]


def test_the_command_takes_the_age_from_retention_days(app, settings):
    old = store_reports(app, "old", "new")
    make_old(app, "delivery_reports", old[:1])
    result = run(settings, env={"MM7SOAP_RETENTION_DAYS": "120"})
    assert result.exit_code == 0 and ids(app, "delivery_reports") == old  # 100 days is not old enough
    result = run(settings, env={"MM7SOAP_RETENTION_DAYS": "99.5"})
    assert result.exit_code == 0 and ids(app, "delivery_reports") == old[1:]


def test_the_command_needs_an_age(app, settings):
    result = run(settings, env={"MM7SOAP_RETENTION_DAYS": "0"})
    assert result.exit_code == 2 and "give --older-than (e.g. 90d) or set MM7SOAP_RETENTION_DAYS" in result.output
    result = run(settings, "--older-than", "soon")
    assert result.exit_code == 2 and "is not an age" in result.output


def test_the_command_with_vacuum(app, settings):
    make_old(app, "delivery_reports", fill(app, "old", 50))
    app.store.close()
    result = run(settings, "--older-than", "90d", "--vacuum")
    assert result.exit_code == 0, result.output
    assert "VACUUM gave " in result.output
    # SQLite is incremental from then on; PostgreSQL's later prunes run a plain VACUUM.
    later = "from now on each prune gives back what it frees" in result.output
    assert later == (not postgres.is_postgresql(settings.database))


def test_the_command_refuses_a_missing_database(tmp_path):
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, ["prune", "-d", str(missing), "--older-than", "90d"])
    assert result.exit_code == 2 and "no database at" in result.output
    assert not missing.exists()


@only_sqlite
def test_the_command_migrates_a_database_of_an_earlier_release(settings):
    with Store(settings) as store:
        migrate_to(store.db, 6)
    assert run(settings, "--older-than", "1d").exit_code == 0
    assert pragma(settings, "user_version") == len(MIGRATIONS)


# --- While the service runs --------------------------------------------------------------------


def test_the_housekeeping_prunes_at_start_then_every_interval(app, settings):
    rows = store_reports(app, "old", "waiting", "new")
    make_old(app, "delivery_reports", rows[:1])
    make_old(app, "delivery_reports", rows[1:2], "pending")
    stopping = threading.Event()
    keeping = replace(settings, retention_days=90)
    thread = threading.Thread(target=retention.run_forever, args=(keeping, stopping, 0.05))
    thread.start()
    try:
        wait_for(lambda: ids(app, "delivery_reports") == rows[1:])
        make_old(app, "delivery_reports", rows[1:2])  # its event delivered: the next round takes it
        wait_for(lambda: ids(app, "delivery_reports") == rows[2:])
    finally:
        stopping.set()
        thread.join(10)
    assert not thread.is_alive()


@only_sqlite
def test_the_housekeeping_never_creates_a_missing_database(settings, tmp_path, caplog):
    missing = replace(settings, database=str(tmp_path / "gone.db"))  # its volume not mounted
    with Store(missing) as store, caplog.at_level(logging.ERROR, logger="mm7soap.retention"):
        assert retention.prune_once(store, 90 * DAY, threading.Event()) is None
    assert "pruning failed" in caplog.text and not os.path.exists(missing.database)


@only_postgresql
def test_the_housekeeping_logs_a_database_it_cannot_reach_without_its_password(settings, caplog):
    url = urlsplit(settings.database)
    gone = replace(settings, database=url._replace(path="/no_such_database").geturl())
    with Store(gone) as store, caplog.at_level(logging.ERROR, logger="mm7soap.retention"):
        assert retention.prune_once(store, 90 * DAY, threading.Event()) is None
    assert "pruning failed" in caplog.text and 'database "no_such_database" does not exist' in caplog.text
    assert url.password and url.password not in caplog.text


def test_the_retention_process_beside_gunicorn(app, settings, monkeypatch):
    """What gunicorn's master starts when retention_days is set: `python -m mm7soap.retention`,
    with the service's settings; stopped with SIGTERM."""
    old = store_reports(app, "old", "new")
    make_old(app, "delivery_reports", old[:1])
    process = RetentionProcess(replace(settings, retention_days=90))
    process.start()
    try:
        wait_for(lambda: ids(app, "delivery_reports") == old[1:], timeout=30)
    finally:
        process.stop()
    assert process.process is not None and process.process.returncode == 0


def test_the_retention_process_does_nothing_without_retention_days(settings):
    """`python -m mm7soap.retention` with retention_days 0 ends at once."""
    with Store(settings) as store:
        store.migrate()
    env = {**os.environ, "MM7SOAP_DATABASE": settings.database, "MM7SOAP_RETENTION_DAYS": "0"}
    done = subprocess.run([sys.executable, "-m", "mm7soap.retention"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0 and b"nothing to prune" in done.stderr


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)

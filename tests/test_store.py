"""The store: durable, idempotent, migrated, and failing loudly (3000) rather than acking."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mm7soap import store as store_module
from mm7soap.settings import Settings
from mm7soap.store import MIGRATIONS, Store, transaction
from tests.backends import (
    INTEGRITY_ERRORS,
    durability,
    latest_version,
    on_postgresql,
    only_postgresql,
    only_sqlite,
    other_connection,
    schema_version,
    set_read_only,
    set_schema_version,
    write_lock_held,
)
from tests.helpers import assert_fault, call, data, migrate_to

NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


@only_sqlite
def test_wal_and_synchronous_full_by_default(app):
    db = app.store.db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@only_postgresql
def test_a_report_waits_for_the_disk_by_default_on_postgresql(app):
    assert app.store.db.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_migrations_are_recorded_and_idempotent(settings):
    with Store(settings) as store:
        assert store.migrate() == latest_version(store.db)
        assert store.migrate() == latest_version(store.db)
        assert schema_version(store.db) == latest_version(store.db)
        assert {"delivery_reports", "read_replies", "messages", "message_parts", "outbox"} <= set(
            store.db.table_names()
        )


def test_a_schema_newer_than_this_release_is_left_as_it_is(settings):
    """During a rolling upgrade an instance of the earlier release restarts on a database the
    new one has migrated: it must not set the schema's version back, or the next new instance
    would run the last migration again."""
    with Store(settings) as store:
        store.migrate()
        newer = latest_version(store.db) + 1
        set_schema_version(store.db, newer)
        store.migrate()
        assert schema_version(store.db) == newer


def test_stores_migrating_at_once_make_one_schema(settings):
    """Instances (or workers) starting together migrate one database at the same moment: each
    finds the schema up to date, made once (on PostgreSQL, under an advisory lock)."""
    stores = [Store(replace(settings, busy_timeout_ms=10_000)) for _ in range(4)]
    start = threading.Barrier(len(stores))
    outcomes: list[object] = []

    def migrate(store: Store) -> None:
        start.wait()
        try:
            outcomes.append(store.migrate())
        except Exception as exc:  # reported by the assertion below
            outcomes.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        db = stores[0].db
        assert outcomes == [latest_version(db)] * len(stores)
        assert schema_version(db) == latest_version(db)
        if on_postgresql(db):
            assert db.execute("SELECT count(*) FROM mm7soap_schema").fetchone()[0] == 1
    finally:
        for store in stores:
            store.close()


@only_sqlite
def test_lookup_by_message_id_uses_an_index(app):
    plan = app.store.db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM delivery_reports WHERE message_id = ?", ["x"]
    ).fetchall()
    assert any("USING INDEX" in str(step) for step in plan)


@only_postgresql
def test_lookup_by_message_id_can_use_an_index_on_postgresql(app):
    """With a handful of rows PostgreSQL rightly reads the table; without that choice it
    must find an index that the condition on message_id narrows."""
    db = app.store.db
    db.execute("SET enable_seqscan = off")
    try:
        plan = [row[0] for row in db.execute("EXPLAIN SELECT * FROM delivery_reports WHERE message_id = 'x'")]
    finally:
        db.execute("RESET enable_seqscan")
    # The index that leads with message_id, not one it could be found in by reading all of it
    # ("Index Scan using …" or "Bitmap Index Scan on …", as the planner's estimates fall).
    assert any(re.search(r"\b(using|on) delivery_reports_message\b", step) for step in plan), plan
    assert any("Index Cond: (message_id = " in step for step in plan), plan


def test_a_report_is_committed_before_the_answer(app, settings):
    response = call(app, data("sinch_delivery_report.xml"))
    assert response.status == 200
    # A separate connection, as another process would open, sees the committed row.
    with other_connection(settings.database) as other:
        assert other.execute("SELECT message_id FROM delivery_reports").fetchall() == [("481516234200000001",)]


def test_database_locked_past_busy_timeout_is_a_server_fault_3000_and_no_row(app, settings):
    with write_lock_held(settings.database):
        response = call(app, data("sinch_delivery_report.xml"))
    error = assert_fault(response, "Server", 3000, NS)
    assert error is not None
    assert response.text("Header/TransactionID") == "tx-20261127-0042"
    assert list(app.store.delivery_reports()) == []
    # Once the lock is gone the same report is stored and acknowledged.
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    assert len(list(app.store.delivery_reports())) == 1


@only_sqlite
def test_disk_full_is_a_server_fault_3000_and_no_row(app):
    db = app.store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    big = data("sinch_delivery_report.xml").replace(b"<StatusText>Success", b"<StatusText>" + b"x" * 200_000)
    response = call(app, big)
    assert_fault(response, "Server", 3000, NS)
    # The connection that failed is closed, with its transaction: the next write opens another.
    assert app.store.db is not db
    assert list(app.store.delivery_reports()) == []


@only_postgresql
def test_a_connection_the_server_ended_is_replaced_at_its_next_use(app, settings):
    """PostgreSQL restarted, or an administrator ended the connection while it was idle: the
    next report's BEGIN finds it ended and is sent again on a new connection, so that report
    is stored and acknowledged.  (Ended inside a transaction, or the server down: a 3000,
    tests/test_postgres_connections.py and tests/test_postgresql.py.)"""
    ended = app.store.db.connection.info.backend_pid
    with other_connection(settings.database) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [ended])
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    assert len(list(app.store.delivery_reports())) == 1
    assert app.store.db.connection.info.backend_pid != ended


def test_read_only_database_is_a_server_fault_3000(app):
    set_read_only(app.store.db, True)
    response = call(app, data("sinch_delivery_report.xml"))
    assert_fault(response, "Server", 3000, NS)
    set_read_only(app.store.db, False)
    assert list(app.store.delivery_reports()) == []


def test_each_process_opens_its_own_connection(settings, monkeypatch):
    with Store(settings) as store:
        first = store.db
        assert store.db is first
        monkeypatch.setattr("mm7soap.store.os.getpid", lambda: -1)  # as after a fork
        assert store.db is not first
    first.conn.close()  # the test's own "parent" connection


# What each `synchronous` setting is on each engine: PostgreSQL's synchronous_commit waits
# for the disk (on) or not (off).
DURABILITY = {"OFF": ("OFF", "off"), "NORMAL": ("NORMAL", "off"), "FULL": ("FULL", "on"), "EXTRA": ("EXTRA", "on")}


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL", "FULL", "EXTRA"])
def test_synchronous_setting_is_applied(settings, synchronous):
    with Store(replace(settings, synchronous=synchronous)) as store:
        expected = DURABILITY[synchronous][on_postgresql(store.db)]
        assert durability(store.db) == expected


@only_sqlite
def test_a_database_of_an_earlier_release_is_migrated_and_keeps_its_reports(settings):
    """A database made before read replies and MO messages existed (schema version 2)."""
    with Store(settings) as store:
        db = store.db
        with transaction(db):
            migrate_to(db, 2)
        db.execute(
            "INSERT INTO delivery_reports (received_at, message_id, mm_status) VALUES ('t', 'old-1', 'Retrieved')"
        )
        assert "messages" not in db.table_names()
        assert store.migrate() == len(MIGRATIONS)
        assert [row["message_id"] for row in store.delivery_reports()] == ["old-1"]
        assert {"read_replies", "messages", "message_parts"} <= set(db.table_names())
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_message_parts_belong_to_a_stored_message(app):
    """The foreign key is enforced: a part cannot point at no message."""
    with pytest.raises(INTEGRITY_ERRORS):
        app.store.db.execute(
            "INSERT INTO message_parts (message, position, content_type, size, sha256, data)"
            " VALUES (999, 1, 'text/plain', 0, '', ?)",
            [b""],
        )


def move_aside(path: str, to: Path) -> None:
    """The database file renamed away: the path no longer names the file a connection holds."""
    os.replace(path, to)
    for suffix in ("-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


@only_sqlite
def test_a_deleted_database_is_a_server_fault_and_is_not_recreated(app, settings, tmp_path):
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    move_aside(settings.database, tmp_path / "aside.db")
    assert_fault(call(app, data("sinch_delivery_report.xml")), "Server", 3000, NS)
    assert not Path(settings.database).exists()


@only_sqlite
def test_a_replaced_database_is_reopened_and_migrated(app, settings, tmp_path):
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    sqlite3.connect(tmp_path / "empty.db").close()
    move_aside(settings.database, tmp_path / "old.db")
    os.replace(tmp_path / "empty.db", settings.database)
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    with closing(sqlite3.connect(settings.database)) as new:
        assert new.execute("SELECT message_id FROM delivery_reports").fetchall() == [("481516234200000001",)]


@only_sqlite
def test_a_report_committed_to_a_file_replaced_meanwhile_is_not_acknowledged(app, settings, tmp_path):
    """The file is swapped between BEGIN and COMMIT: the commit went to the old file, so the
    answer is 3000 and the MMSC's retry lands in the new one."""
    sqlite3.connect(tmp_path / "new.db").close()
    insert_once = store_module.insert_once

    def swap_then_insert(*args: object) -> object:
        move_aside(settings.database, tmp_path / "old.db")
        os.replace(tmp_path / "new.db", settings.database)
        return insert_once(*args)

    app.store.migrate()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "insert_once", swap_then_insert)
        assert_fault(call(app, data("sinch_delivery_report.xml")), "Server", 3000, NS)
    assert call(app, data("sinch_delivery_report.xml")).status == 200
    with closing(sqlite3.connect(settings.database)) as new:
        assert new.execute("SELECT count(*) FROM delivery_reports").fetchone() == (1,)


@only_sqlite
def test_a_connection_to_a_file_that_is_not_a_database_is_closed(settings, tmp_path, monkeypatch):
    """sqlite3.connect opens any file; the first PRAGMA finds it is not a database.  That
    connection is closed there, not left holding the file until the garbage collector."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database" * 100)
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recorded_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recorded_connect)
    with Store(replace(settings, database=str(path))) as store, pytest.raises(sqlite3.DatabaseError):
        store.migrate()
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")

"""`mm7soap copy` (issue 20): a SQLite database filled through the service, moved into a real
PostgreSQL database, row by row and byte by byte, whose ids, sequences and `/events` go on
as they would have on SQLite."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import sqlite_utils
from click.testing import CliRunner

from mm7soap import outbox, outbox_admin
from mm7soap.cli import cli
from mm7soap.copying import TABLES, CopyError, copy_database
from mm7soap.outbox import Backoff, Outcome
from mm7soap.schema import MIGRATIONS
from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp
from tests.helpers import call, migrate_to
from tests.test_deliver import BASE, JPEG, PNG, ROOT, envelope, post, with_picture
from tests.test_mime import part
from tests.test_stored_right import acknowledged, read_reply, report

BACKOFF = Backoff(first=60, cap=600, max_age=86400)


def app_on(database: str) -> MM7WsgiApp:
    return MM7WsgiApp(Settings(database=database, busy_timeout_ms=200))


def fill(app: MM7WsgiApp) -> None:
    """What a SQLite instance holds after a while: reports (one resent), read replies (one
    resent), MOs with binary attachments (one resent), events delivered, retried, pending."""
    for n, status in enumerate(["Forwarded", "Retrieved", "Forwarded", "Retrieved", "Rejected"]):
        acknowledged(app, report(tx=f"tx-{n}", status=status, MessageID=f"<MessageID>msg-{n // 2}</MessageID>"))
    acknowledged(app, report(tx="tx-again", status="Retrieved", MessageID="<MessageID>msg-0</MessageID>"))
    for tx, status in (("rr-1", "Read"), ("rr-2", "Deleted"), ("rr-3", "Read")):  # rr-3 resends rr-1
        acknowledged(app, read_reply(tx, status), "ReadReplyRsp")
    every_part = BASE.replace("mo-1", "mo-2").replace("cid:x", "cid:nowhere")  # both parts are its content
    two_parts = [part(ROOT, envelope(every_part, tx="mo-2")), *with_picture(b"")[1:]]
    two_parts.append(part(["Content-Type: image/jpeg", "Content-ID: <y>"], JPEG))
    for parts in (with_picture(envelope(tx="mo-1")), two_parts, with_picture(envelope(tx="mo-1-again"))):
        assert post(app, parts).text("Body/DeliverRsp/Status/StatusCode") == "1000"
    db = app.store.db
    first, second, third = outbox.claim(db, 3, 30)
    outcomes = [Outcome(first.sequence, True, 204), Outcome(second.sequence, False, 503, "receiver down")]
    outbox.settle(db, [(first, outcomes[0]), (second, outcomes[1])], BACKOFF, lambda: 0.5)
    assert third.sequence  # leased by a forwarder at the copy: stays leased


def table_rows(db: Any, table: str, key: str) -> list[dict[str, Any]]:
    """Every row of a table in key order, on either engine (a sqlite-utils or Pg database)."""
    return list(db.query(f"SELECT * FROM {table} ORDER BY {key}"))


@pytest.fixture
def source(tmp_path: Path) -> Iterator[str]:
    """A SQLite database filled through the service."""
    path = str(tmp_path / "mm7soap.db")
    app = app_on(path)
    fill(app)
    app.store.close()
    yield path


@pytest.fixture
def copied(source: str, postgresql_url: str) -> Iterator[tuple[MM7WsgiApp, MM7WsgiApp]]:
    """The source copied; an app on each side."""
    copy_database(source, postgresql_url)
    apps = app_on(source), app_on(postgresql_url)
    yield apps
    for app in apps:
        app.store.close()


def test_every_row_is_copied_column_by_column_and_byte_for_byte(copied):
    lite, pg = copied
    for table, key in TABLES:
        got, expected = table_rows(pg.store.db, table, key), table_rows(lite.store.db, table, key)
        assert got == expected, table
    counts = {table: len(table_rows(pg.store.db, table, key)) for table, key in TABLES}
    assert counts == {"delivery_reports": 5, "read_replies": 2, "messages": 2, "message_parts": 3, "outbox": 9}
    parts = table_rows(pg.store.db, "message_parts", "id")
    assert [p["data"] for p in parts] == [PNG, PNG, JPEG]
    assert isinstance(table_rows(pg.store.db, "delivery_reports", "id")[0]["raw_envelope"], bytes)
    states = [(e["state"], e["attempts"], e["last_error"]) for e in table_rows(pg.store.db, "outbox", "sequence")]
    assert sorted(states, key=str) == sorted(
        [("delivered", 1, None), ("pending", 1, "receiver down"), *[("pending", 0, None)] * 7], key=str
    )


def test_new_rows_go_on_past_the_copied_ids_and_sequences_and_a_resend_is_still_one(copied):
    lite, pg = copied
    largest = {table: max(r[key] for r in table_rows(lite.store.db, table, key)) for table, key in TABLES}
    acknowledged(pg, report(tx="tx-0-resent", status="Forwarded", MessageID="<MessageID>msg-0</MessageID>"))
    assert len(table_rows(pg.store.db, "delivery_reports", "id")) == 5  # recognised: fingerprints came along

    acknowledged(pg, report(tx="after-copy", status="Retrieved", MessageID="<MessageID>msg-new</MessageID>"))
    assert post(pg, with_picture(envelope(tx="mo-new").replace(b"mo-1", b"mo-new"))).status == 200
    new_report = table_rows(pg.store.db, "delivery_reports", "id")[-1]
    new_parts = table_rows(pg.store.db, "message_parts", "id")
    new_events = table_rows(pg.store.db, "outbox", "sequence")[-2:]
    # Above, not next: PostgreSQL draws an id for the resend's INSERT … ON CONFLICT too.
    assert new_report["message_id"] == "msg-new" and new_report["id"] > largest["delivery_reports"]
    assert table_rows(pg.store.db, "messages", "id")[-1]["id"] > largest["messages"]
    assert new_parts[-1]["id"] > largest["message_parts"]
    assert largest["outbox"] < new_events[0]["sequence"] < new_events[1]["sequence"]
    assert new_events[0]["source_id"] == new_report["id"]


def test_the_outbox_goes_on_past_sequences_pruned_before_the_copy(tmp_path, postgresql_url):
    """A cursor at the newest event (`after=8`) must see the next one even when events up to
    8 were delivered and pruned on SQLite: the next sequence is 9 there, so 9 here."""
    lite = app_on(str(tmp_path / "mm7soap.db"))
    for n in range(8):
        acknowledged(lite, report(tx=f"tx-{n}", MessageID=f"<MessageID>msg-{n}</MessageID>"))
    delivered = [(e, Outcome(e.sequence, True, 200)) for e in outbox.claim(lite.store.db, 8, 30)]
    outbox.settle(lite.store.db, delivered, BACKOFF, lambda: 0.5)
    acknowledged(lite, report(tx="tx-kept", MessageID="<MessageID>msg-kept</MessageID>"))
    lite.store.db.execute("DELETE FROM outbox WHERE sequence > 5")  # the newest, delivered, pruned
    assert outbox_admin.prune(lite.store.db, 0, 100) == 5
    lite.store.close()

    copy_database(lite.store.path, postgresql_url)
    pg = app_on(postgresql_url)
    acknowledged(pg, report(tx="tx-new", MessageID="<MessageID>msg-new</MessageID>"))
    [event] = table_rows(pg.store.db, "outbox", "sequence")
    assert event["sequence"] == 10
    pg.store.close()


def events_page(app: MM7WsgiApp, after: int) -> dict[str, Any]:
    response = call(app, method="GET", path="/events", query=f"after={after}&limit=1000")
    assert response.status == 200
    return json.loads(response.body)


def test_events_after_a_cursor_are_the_same_on_both(copied):
    lite, pg = copied
    for after in (0, 2, 7, 9):
        assert events_page(pg, after) == events_page(lite, after), after
    assert len(events_page(pg, 2)["events"]) == 7
    assert events_page(pg, 0)["events"][-1]["data"]["parts"]  # an MO with its parts in base64


INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1"


def test_the_target_has_every_index_of_its_schema_after_the_copy(source, postgresql_url):
    """The copy drops each table's indexes and builds them again after its rows."""
    pg = app_on(postgresql_url)
    pg.store.migrate()
    before = pg.store.db.execute(INDEXES).fetchall()
    assert len(before) > 10
    copy_database(source, postgresql_url)
    assert pg.store.db.execute(INDEXES).fetchall() == before
    pg.store.close()


def test_a_target_holding_rows_is_refused_and_left_alone(copied, source, postgresql_url):
    _, pg = copied
    before = {table: table_rows(pg.store.db, table, key) for table, key in TABLES}
    with pytest.raises(CopyError, match=r"already holds rows \(delivery_reports, read_replies, messages"):
        copy_database(source, postgresql_url)
    assert {table: table_rows(pg.store.db, table, key) for table, key in TABLES} == before


def test_a_target_holding_only_events_is_refused(source, postgresql_url):
    pg = app_on(postgresql_url)
    pg.store.migrate()
    pg.store.db.execute(
        "INSERT INTO outbox (event_id, type, source_id, created_at, next_attempt_at) VALUES ('e', 't', 1, '', '')"
    )
    pg.store.close()
    with pytest.raises(CopyError, match=r"already holds rows \(outbox\)"):
        copy_database(source, postgresql_url)


def test_a_writer_on_the_target_waits_for_the_copy_to_end(source, postgresql_url):
    """An instance started on the target too early stores nothing in the middle of the copy
    (past its lock timeout its request is answered 3000)."""
    late_report = "INSERT INTO read_replies (received_at, message_id, mm_status) VALUES ('', 'm-late', 'Read')"

    def write_meanwhile(copied: Any) -> None:
        if copied.table == "delivery_reports":
            other = psycopg.connect(postgresql_url, autocommit=True, options="-c lock_timeout=200")
            with closing(other), pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(late_report)

    copy_database(source, postgresql_url, write_meanwhile)


FAIL_ON_EVENTS = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'disk full'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();
"""


def test_a_copy_failing_at_the_last_table_leaves_the_target_empty_and_can_run_again(source, postgresql_url):
    pg = app_on(postgresql_url)
    pg.store.migrate()
    pg.store.db.execute(FAIL_ON_EVENTS)
    with pytest.raises(CopyError, match="nothing copied: disk full"):
        copy_database(source, postgresql_url)
    assert {table: table_rows(pg.store.db, table, key) for table, key in TABLES} == {t: [] for t, _ in TABLES}

    pg.store.db.execute("DROP TRIGGER refuse ON outbox")
    copied = copy_database(source, postgresql_url)
    assert [c.rows for c in copied] == [5, 2, 2, 3, 9]
    pg.store.close()


def test_a_source_in_use_is_copied_as_one_snapshot(source, postgresql_url):
    """A report stored while the copy runs (after its table, before the outbox's) is in
    neither table of the target: never an event whose row was not copied."""
    writer = app_on(source)

    def store_meanwhile(copied: Any) -> None:
        if copied.table == "delivery_reports":
            acknowledged(writer, report(tx="meanwhile", MessageID="<MessageID>msg-meanwhile</MessageID>"))

    copy_database(source, postgresql_url, store_meanwhile)
    writer.store.close()
    pg = app_on(postgresql_url)
    events = table_rows(pg.store.db, "outbox", "sequence")
    assert len(events) == 9
    for event in events:
        table = outbox.TABLES[event["type"]]
        assert pg.store.db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [event["source_id"]]).fetchone()
    pg.store.close()
    with closing(sqlite3.connect(source)) as lite:  # it was stored, after the snapshot
        assert lite.execute("SELECT count(*) FROM outbox").fetchone()[0] == 10


def test_a_source_of_an_older_release_is_migrated_first(tmp_path, postgresql_url):
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrate_to(old, 4)  # before fingerprints (migration 5) and the outbox (6)
    old["delivery_reports"].insert(
        {"received_at": "2026-01-01T00:00:00.000000Z", "message_id": "m-1", "mm_status": "Retrieved"}
    )
    old.close()
    copy_database(str(path), postgresql_url)
    with closing(psycopg.connect(postgresql_url)) as pg:
        [(fingerprint,)] = pg.execute("SELECT fingerprint FROM delivery_reports").fetchall()
    assert fingerprint  # the resend of this report will be recognised on PostgreSQL
    with closing(sqlite3.connect(path)) as lite:
        assert lite.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_source_of_a_newer_release_is_refused(source, postgresql_url):
    with closing(sqlite3.connect(source)) as lite:
        lite.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(CopyError, match="written by a newer mm7soap"):
        copy_database(source, postgresql_url)


def test_a_file_no_mm7soap_wrote_is_refused_and_left_as_it_was(tmp_path, postgresql_url):
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as lite:
        lite.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(CopyError, match="is not an mm7soap database"):
        copy_database(str(other), postgresql_url)
    with closing(sqlite3.connect(other)) as lite:
        assert lite.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]


def test_a_source_whose_columns_differ_is_refused_by_name(source, postgresql_url):
    with closing(sqlite3.connect(source)) as lite:
        lite.execute("ALTER TABLE read_replies ADD COLUMN note TEXT")
    with pytest.raises(CopyError, match="read_replies has other columns on each side: note"):
        copy_database(source, postgresql_url)


def test_not_a_postgresql_target_nor_a_missing_source(source, tmp_path, postgresql_url):
    with pytest.raises(CopyError, match="must be a postgresql:// URL"):
        copy_database(source, str(tmp_path / "other.db"))
    with pytest.raises(CopyError, match="no SQLite database at"):
        copy_database(str(tmp_path / "missing.db"), postgresql_url)
    assert not (tmp_path / "missing.db").exists()


def many_reports(path: Path, count: int) -> None:
    """`count` delivery reports with their events: copies of one stored through the service."""
    app = app_on(str(path))
    acknowledged(app, report())
    app.store.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as lite:
        columns = [row[1] for row in lite.execute("PRAGMA table_info(delivery_reports)")]
        kept = ", ".join(c for c in columns if c not in ("id", "transaction_id", "fingerprint"))
        lite.execute("BEGIN")
        lite.execute(
            "WITH RECURSIVE n(k) AS (SELECT 2 UNION ALL SELECT k + 1 FROM n WHERE k < ?)"
            f" INSERT INTO delivery_reports (transaction_id, fingerprint, {kept})"
            f" SELECT 'tx-' || k, 'fingerprint-' || k, {kept} FROM delivery_reports, n",
            [count],
        )
        lite.execute(
            "INSERT INTO outbox (event_id, type, source_id, order_key, created_at, next_attempt_at)"
            " SELECT 'evt_' || id, 'delivery_report', id, message_id, received_at, received_at"
            " FROM delivery_reports WHERE id > 1"
        )
        lite.execute("COMMIT")


def test_a_big_table_streams_through_and_is_never_held_in_memory(tmp_path, postgresql_url):
    """20,000 reports of about 1 KiB each: the copy holds a few of them at a time."""
    many_reports(tmp_path / "big.db", 20_000)
    tracemalloc.start()
    try:
        copied = copy_database(str(tmp_path / "big.db"), postgresql_url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [c.rows for c in copied] == [20_000, 0, 0, 0, 20_000]
    assert peak < 4 * 2**20, peak


# --- The command ------------------------------------------------------------------------------


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password, "the test cluster's URL has a password"
    return password


def test_the_command_prints_each_table_and_never_the_password(source, postgresql_url):
    result = CliRunner().invoke(cli, ["copy", "--from", source, "--to", postgresql_url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"copying {source} into postgresql://") and ":***@" in lines[0]
    assert [line.split()[:2] for line in lines[1:6]] == [
        ["delivery_reports", "5"],
        ["read_replies", "2"],
        ["messages", "2"],
        ["message_parts", "3"],
        ["outbox", "9"],
    ]
    assert lines[1].endswith("rows, next id 6") and lines[5].endswith("rows, next sequence 10")
    assert lines[6].startswith("committed: 21 rows in ")
    assert password_of(postgresql_url) not in result.output

    again = CliRunner().invoke(cli, ["copy", "--from", source], env={"MM7SOAP_DATABASE": postgresql_url})
    assert again.exit_code == 1
    assert "already holds rows" in again.output and password_of(postgresql_url) not in again.output


def test_a_wrong_password_fails_cleanly_and_says_neither_password(source, postgresql_url):
    wrong = urlsplit(postgresql_url)
    wrong = wrong._replace(netloc=wrong.netloc.replace(password_of(postgresql_url), "not-the-pass-w0rd"))
    result = CliRunner().invoke(cli, ["copy", "--from", source, "--to", wrong.geturl()])
    assert result.exit_code == 1
    assert "Error: nothing copied: cannot connect to postgresql://" in result.output
    assert "password authentication failed" in result.output
    assert "not-the-pass-w0rd" not in result.output and password_of(postgresql_url) not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback

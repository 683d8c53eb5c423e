"""How a process holds its PostgreSQL connections (issue 20): one that writes for all its
threads, and a broken one replaced without a restart."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest

from mm7soap.namespaces import MM7_NAMESPACES
from mm7soap.postgres import PgConnections
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.transport import MM7WsgiApp
from tests.helpers import call, template

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


def report(number: int) -> bytes:
    return template(
        "delivery_report_template.xml",
        namespace=REL6,
        version="6.3.0",
        transaction_id=f"tx-{number}",
        message_id=f"msg-{number}",
        status="Retrieved",
    )


def status_code(response) -> str:
    return response.text("Body/DeliveryReportRsp/Status/StatusCode") or response.text(
        "Body/Fault/detail/VASPErrorRsp/Status/StatusCode"
    )


def backends(url: str) -> list[tuple[int, str]]:
    """The server processes connected to `url`'s database, by pid, with their application."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid != pg_backend_pid()"
        ).fetchall()
    return [(int(pid), name) for pid, name in rows]


def test_the_threads_of_a_process_write_through_one_connection(postgresql_url: str) -> None:
    app = MM7WsgiApp(Settings(database=postgresql_url, busy_timeout_ms=2000))
    try:
        one_at_a_time = threading.Lock()  # so that every thread leads its own group commit
        codes: list[str] = []

        def post(number: int) -> None:
            with one_at_a_time:
                codes.append(status_code(call(app, report(number))))

        threads = [threading.Thread(target=post, args=(number,)) for number in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert codes == ["1000"] * 32
        assert len(list(app.store.delivery_reports())) == 32
        # The writer, and the reading connection of the thread that migrated and of this one:
        # not one per thread that happened to lead a group commit.
        assert len([pid for pid, name in backends(postgresql_url) if name == "mm7soap"]) <= 3
    finally:
        app.store.close()


def end_every_connection(url: str) -> int:
    """What a restart, a failover or an idle kill does to the service's connections: ended by
    the server, unknown to the client until it uses them.  How many were ended."""
    with psycopg.connect(url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid != pg_backend_pid()"
        ).fetchall()
    return len(ended)


def test_connections_ended_by_the_server_are_replaced_at_their_next_use(postgresql_url: str) -> None:
    """The group commit's BEGIN and a read write nothing: sent on a connection that turned out
    ended, they are sent again on a new one, so the report after a restart is stored and
    acknowledged at once, and a read (as of /events) answers."""
    app = MM7WsgiApp(Settings(database=postgresql_url, busy_timeout_ms=2000))
    try:
        assert status_code(call(app, report(1))) == "1000"
        assert [row["message_id"] for row in app.store.delivery_reports()] == ["msg-1"]
        assert end_every_connection(postgresql_url) >= 2  # the writer and this thread's reader
        assert [row["message_id"] for row in app.store.delivery_reports()] == ["msg-1"]
        assert status_code(call(app, report(2))) == "1000"
        assert end_every_connection(postgresql_url) >= 2
        assert status_code(call(app, report(3))) == "1000"
        stored = sorted(row["message_id"] for row in app.store.delivery_reports())
        assert stored == ["msg-1", "msg-2", "msg-3"]
    finally:
        app.store.close()


@pytest.mark.parametrize(
    ("statements", "sent_broken"),
    [
        (["BEGIN"], "SELECT 1"),  # in a transaction: what it held is gone with the connection
        ([], "UPDATE mm7soap_schema SET version = version"),  # a write: it may have happened
        ([], "WITH found AS (SELECT 1) SELECT * FROM found"),  # not known to write nothing
    ],
)
def test_a_connection_ended_under_a_transaction_or_a_write_is_the_callers_error(
    postgresql_url: str, statements: list[str], sent_broken: str
) -> None:
    """Only what writes nothing, on a connection that was idle, is sent again: anything else
    fails (a 3000 for a report, which the MMSC re-sends) rather than be done twice or half."""
    connections = PgConnections(postgresql_url, 2000, "FULL", prepare=None)
    try:
        store = Store(Settings(database=postgresql_url))
        store.migrate()  # a table to write to
        store.close()
        db = connections.db
        for statement in statements:
            db.execute(statement)
        end_every_connection(postgresql_url)
        with pytest.raises(psycopg.OperationalError):
            db.execute(sent_broken)
        assert db.connection.closed
        assert connections.db.execute("SELECT 1").fetchone() == (1,)  # the next use, on a new one
    finally:
        connections.close()


def test_a_second_process_settings_change_nothing_of_the_first(postgresql_url: str) -> None:
    """Two apps (two instances) on one database share its rows, not their connections."""
    first = MM7WsgiApp(Settings(database=postgresql_url, busy_timeout_ms=2000))
    second = MM7WsgiApp(replace(first.settings, port=8081))
    try:
        assert status_code(call(first, report(1))) == "1000"
        assert status_code(call(second, report(2))) == "1000"
        assert status_code(call(second, report(1))) == "1000"  # a resend, to the other instance
        assert sorted(r["message_id"] for r in first.store.delivery_reports()) == ["msg-1", "msg-2"]
    finally:
        first.store.close()
        second.store.close()

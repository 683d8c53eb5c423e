"""How a process holds its PostgreSQL connections (issue 20): one that writes for all its
threads, and a broken one replaced without a restart."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest

from mm7soap.namespaces import MM7_NAMESPACES
from mm7soap.settings import Settings
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


def test_a_broken_connection_is_a_3000_then_replaced_without_a_restart(postgresql_url: str) -> None:
    settings = Settings(database=postgresql_url, busy_timeout_ms=2000)
    app = MM7WsgiApp(settings)
    try:
        assert status_code(call(app, report(1))) == "1000"
        # The server ends every connection of the service (a restart, a failover, an idle kill).
        with psycopg.connect(postgresql_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid != pg_backend_pid()"
            )
        assert status_code(call(app, report(2))) == "3000"  # its connection was gone: not stored
        assert status_code(call(app, report(2))) == "1000"  # the MMSC's retry, on a new connection
        assert status_code(call(app, report(3))) == "1000"
        # This thread's reading connection was ended too: its next use fails once (as a read
        # of /events would) and the one after opens a new one.
        with pytest.raises(psycopg.OperationalError):
            list(app.store.delivery_reports())
        stored = sorted(row["message_id"] for row in app.store.delivery_reports())
        assert stored == ["msg-1", "msg-2", "msg-3"]
    finally:
        app.store.close()


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

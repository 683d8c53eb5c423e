"""`received_at` is the commit time, so its text order is the order of ids and of the outbox
sequence (issue 18): taken inside the write transaction, not when the request arrived.  With
two workers and the arrival time, 27 of 176 adjacent pairs were out of order."""

from __future__ import annotations

import http.client
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

from tests.helpers import SINCH_CONTENT_TYPE
from tests.test_serving import BIN, free_port, run, wait_until_listening
from tests.test_stored_right import report


def post(port: int, number: int) -> int:
    body = report(tx=f"tx-{number}", MessageID=f"<MessageID>order-{number}</MessageID>")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/mm7", body, {"Content-Type": SINCH_CONTENT_TYPE})
        return conn.getresponse().status
    finally:
        conn.close()


def test_received_at_follows_commit_order_across_two_workers(tmp_path):
    port, database = free_port(), tmp_path / "order.db"
    env = {"MM7SOAP_DATABASE": str(database), "MM7SOAP_PORT": str(port), "MM7SOAP_WORKERS": "2"}
    for process in run([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"], env):
        wait_until_listening(port, process)
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda number: post(port, number), range(200))) == {200}
    with closing(sqlite3.connect(database)) as db:  # a connection's own `with` only commits
        rows = db.execute(
            "SELECT r.id, r.received_at, o.sequence, o.created_at FROM delivery_reports r"
            " JOIN outbox o ON o.source_id = r.id AND o.type = 'delivery_report' ORDER BY r.id"
        ).fetchall()
    assert len(rows) == 200
    assert [row[1] for row in rows] == sorted(row[1] for row in rows)  # text order is id order
    assert [row[2] for row in rows] == sorted(row[2] for row in rows)  # and sequence order
    assert all(received_at == created_at for _, received_at, _, created_at in rows)

"""The service under gunicorn: `mm7soap serve` and `gunicorn -c gunicorn.conf.py`."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import SINCH_CONTENT_TYPE, data

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/mm7", body, {"Content-Type": SINCH_CONTENT_TYPE, "X-Mblox-Carrier-Id": "0001890"})
    response = conn.getresponse()
    result = response.status, response.getheader("Content-Type", ""), response.read()
    conn.close()
    return result


def wait_until_listening(port: int, process: subprocess.Popen) -> None:
    """Until /health answers: the socket listens before any worker has booted."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass  # not listening yet, or a worker still booting let the 2 s pass
        finally:
            conn.close()  # also after a timeout, or the socket is left to the garbage collector
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def run(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(params=["mm7soap serve", "gunicorn -c gunicorn.conf.py"])
def served(request, tmp_path) -> Iterator[tuple[int, Path]]:
    port, database = free_port(), tmp_path / "served.db"
    if request.param == "mm7soap serve":
        command = [str(BIN / "mm7soap"), "serve", "--database", str(database), "--port", str(port), "--workers", "2"]
        env: dict[str, str] = {}
    else:
        command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"]
        env = {"MM7SOAP_DATABASE": str(database), "MM7SOAP_PORT": str(port)}
    for process in run(command, env):
        wait_until_listening(port, process)
        yield port, database


def test_served_under_gunicorn_stores_then_acknowledges(served):
    port, database = served
    for _ in range(4):  # more requests than workers, so each worker's connection is used
        status, content_type, body = post(port, data("sinch_delivery_report.xml"))
        assert status == 200
        assert content_type == "text/xml; charset=utf-8"
        assert b"<StatusCode>1000</StatusCode>" in body
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*), max(operator_id) FROM delivery_reports").fetchone() == (1, "0001890")


def test_mm7soap_send_passes_against_mm7soap_serve(served, tmp_path):
    """The MMSC simulator, as an operator runs it, against the service as deployed."""
    port, database = served
    url = f"http://127.0.0.1:{port}/mm7"
    report = ["--message-id", "served-1", "--recipient", "15551230001", "--sender", "24680"]
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(bytes(range(256)) * 16)
    commands = [
        [*report, "--carrier-id", "0001890"],
        [*report, "--read-reply", "--format", "swa"],
        ["--deliver", str(picture), "--sender", "15551230001", "--recipient", "24680", "--linked-id", "served-mo"],
        [*report, "--count", "40", "--concurrency", "4", "--status", "Forwarded"],
    ]
    for arguments in commands:
        done = subprocess.run(
            [str(BIN / "mm7soap"), "send", url, *arguments], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "FAIL" not in done.stdout
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*) FROM read_replies").fetchone() == (1,)
        assert conn.execute("SELECT data FROM message_parts").fetchall() == [(picture.read_bytes(),)]
        retrieved = conn.execute("SELECT count(*) FROM delivery_reports WHERE mm_status = 'Retrieved'").fetchone()
        forwarded = conn.execute(
            "SELECT count(*), count(DISTINCT date_sent) FROM delivery_reports WHERE mm_status = 'Forwarded'"
        ).fetchone()
    assert retrieved == (1,)
    # 40 reports differing only in TransactionID and Date (to the millisecond): those sent in
    # the same millisecond are resends of one another, so each distinct Date is stored once.
    assert 1 <= forwarded[0] <= 40 and forwarded[0] == forwarded[1]


@pytest.mark.parametrize("access_log", ["other", "all", "off"])
def test_one_line_per_mm7_request_the_request_logs_unless_access_log_says_otherwise(tmp_path, access_log):
    """Under gunicorn, which writes its access line before it closes the body: with `other`
    (the default) a report has its request line only (with the client's address), /health its
    access line; `all` keeps both; `off` leaves the request line alone."""
    port = free_port()
    command = [str(BIN / "mm7soap"), "serve", "--database", str(tmp_path / "lines.db"), "--port", str(port)]
    env = {"MM7SOAP_LOG_LEVEL": "info", "MM7SOAP_ACCESS_LOG": access_log, "MM7SOAP_WORKERS": "1"}
    for process in run(command, env):
        wait_until_listening(port, process)
        assert post(port, data("sinch_delivery_report.xml"))[0] == 200
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0]
    request_lines = [line for line in output.splitlines() if "operation=DeliveryReport" in line]
    assert len(request_lines) == 1 and " client=127.0.0.1 " in request_lines[0], output
    access_lines = [line for line in output.splitlines() if '"POST /mm7 HTTP/1.1"' in line or '"GET /health' in line]
    expected = {"other": ["GET"], "all": ["GET", "POST"], "off": []}[access_log]
    assert sorted({line.split('"')[1].split()[0] for line in access_lines}) == expected, output

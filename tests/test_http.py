"""The HTTP layer: /health, methods, size limit, chunked bodies, stalled clients, who may post."""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import replace

import pytest

from tests.helpers import assert_fault, call, data
from tests.test_serving import BIN, free_port, run, wait_until_listening

ENVELOPE = data("sinch_delivery_report.xml")


def test_health_is_200_json_when_writable(app):
    response = call(app, method="GET", path="/health", content_type="")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"status": "ok", "database": "writable"}


def test_health_is_503_while_the_database_is_locked_and_recovers(app, settings):
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = call(app, method="GET", path="/health", content_type="")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status == 503
    assert json.loads(response.body)["database"] == "not writable"
    assert call(app, method="GET", path="/health", content_type="").status == 200


def test_health_is_503_when_the_write_is_refused(app, settings):
    """Any refused write (a read-only file, a full disk; here triggers) is 503.  The check
    writes on a connection of its own (mm7soap/health.py), so the refusal is the file's."""
    refusal = "BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
    with closing(sqlite3.connect(settings.database, isolation_level=None)) as conn:
        conn.execute(f"CREATE TRIGGER refuse_insert BEFORE INSERT ON health {refusal}")
        conn.execute(f"CREATE TRIGGER refuse_update BEFORE UPDATE ON health {refusal}")
        response = call(app, method="GET", path="/health", content_type="")
        assert response.status == 503
        assert "readonly" in json.loads(response.body)["error"]
        conn.execute("DROP TRIGGER refuse_insert")
        conn.execute("DROP TRIGGER refuse_update")
    assert call(app, method="GET", path="/health", content_type="").status == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "GET"])
def test_other_methods_are_405_with_allow(app, method):
    response = call(app, ENVELOPE, method=method)
    assert response.status == 405
    assert response.headers["Allow"] == "POST, GET"
    assert_fault(replace(response, status=500), "Client", 4003)


class Untouchable(io.RawIOBase):
    def read(self, size=-1):
        raise AssertionError("the body was read")


def test_body_over_the_limit_is_413_without_reading_it(make_app):
    app = make_app(max_body_bytes=1000)
    environ_body = Untouchable()
    captured = {}
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/mm7",
        "CONTENT_TYPE": "text/xml",
        "CONTENT_LENGTH": str(5 * 1024 * 1024),
        "wsgi.input": environ_body,
        "REMOTE_ADDR": "192.0.2.1",
    }
    body = b"".join(app(environ, lambda status, headers: captured.update(status=status, headers=dict(headers))))
    assert captured["status"].startswith("413")
    assert captured["headers"]["Connection"] == "close"
    assert b"<StatusCode>2004</StatusCode>" in body


def test_chunked_body_without_content_length_is_read(app):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/mm7",
        "CONTENT_TYPE": "text/xml",
        "wsgi.input": io.BytesIO(ENVELOPE),
        "REMOTE_ADDR": "192.0.2.1",
    }
    captured = {}
    body = b"".join(app(environ, lambda status, headers: captured.update(status=status)))
    assert captured["status"].startswith("200")
    assert b"<StatusCode>1000</StatusCode>" in body


def test_chunked_body_over_the_limit_is_413(make_app):
    app = make_app(max_body_bytes=len(ENVELOPE) - 1)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/mm7",
        "CONTENT_TYPE": "text/xml",
        "wsgi.input": io.BytesIO(ENVELOPE),
    }
    captured = {}
    app(environ, lambda status, headers: captured.update(status=status))
    assert captured["status"].startswith("413")
    assert list(app.store.delivery_reports()) == []


def test_body_shorter_than_content_length_is_refused(app):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/mm7",
        "CONTENT_TYPE": "text/xml",
        "CONTENT_LENGTH": str(len(ENVELOPE) + 100),
        "wsgi.input": io.BytesIO(ENVELOPE),
    }
    captured = {}
    app(environ, lambda status, headers: captured.update(status=status))
    assert captured["status"].startswith("408")
    assert list(app.store.delivery_reports()) == []


# --- who may post -----------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def guarded(make_app):
    return make_app(auth_user="sinch", auth_password="s3cret:with:colons")


def test_correct_basic_credentials_are_let_in(guarded):
    response = call(guarded, ENVELOPE, headers={"Authorization": basic("sinch", "s3cret:with:colons")})
    assert response.status == 200
    assert response.find("Body/Fault") is None
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert response.text("Header/TransactionID") == "tx-20261127-0042"
    rows = list(guarded.store.delivery_reports())
    assert len(rows) == 1
    row = rows[0]
    stored = {key: row[key] for key in ("message_id", "recipient", "mm_status", "transaction_id", "mm7_version")}
    assert stored == {
        "message_id": "481516234200000001",
        "recipient": "15551230001",
        "mm_status": "Retrieved",
        "transaction_id": "tx-20261127-0042",
        "mm7_version": "6.8.0",
    }
    assert row["client_address"] == "192.0.2.10"


@pytest.mark.parametrize(
    "user, password",
    [
        ("sinch", "s3cret:with:colonz"),  # the last character differs
        ("sinch", "S3cret:with:colons"),  # only the case of the first differs
        ("sinch", "snoloc:htiw:terc3s"),  # the same characters, reversed
        ("sinca", "s3cret:with:colons"),  # a wrong user of the same length
        ("Sinch", "s3cret:with:colons"),
        ("hcnis", "s3cret:with:colons"),
    ],
)
def test_wrong_credentials_of_the_right_length_are_401_and_nothing_is_stored(guarded, user, password):
    assert (len(user), len(password)) == (len("sinch"), len("s3cret:with:colons"))
    response = call(guarded, ENVELOPE, headers={"Authorization": basic(user, password)})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="mm7soap"'
    assert_fault(replace(response, status=500), "Client", 4001)
    assert list(guarded.store.delivery_reports()) == []


@pytest.mark.parametrize(
    "authorization",
    [None, basic("sinch", "wrong"), basic("other", "s3cret:with:colons"), "Bearer x", "Basic !!!notbase64", "Basic "],
)
def test_missing_or_wrong_credentials_are_401_and_nothing_is_stored(guarded, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = call(guarded, ENVELOPE, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="mm7soap"'
    assert_fault(replace(response, status=500), "Client", 4001)
    assert list(guarded.store.delivery_reports()) == []


def test_ip_allow_list(make_app):
    refused = make_app(allow_ips=("198.51.100.0/24", "2001:db8::/32"))
    response = call(refused, ENVELOPE)  # the helpers post from 192.0.2.10
    assert response.status == 403
    assert_fault(replace(response, status=500), "Client", 4007)
    assert list(refused.store.delivery_reports()) == []
    allowed = make_app(allow_ips=("2001:db8::/32", "192.0.2.0/28"))
    assert call(allowed, ENVELOPE).status == 200


def test_x_forwarded_for_only_from_a_trusted_proxy(make_app):
    app = make_app(allow_ips=("198.51.100.7/32",), trusted_proxies=("192.0.2.0/24",))
    # The peer (192.0.2.10) is a trusted proxy: the client is the last untrusted hop.
    response = call(app, ENVELOPE, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert response.status == 200
    assert next(iter(app.store.delivery_reports()))["client_address"] == "198.51.100.7"
    # A forged left-most hop changes nothing.
    assert call(app, ENVELOPE, headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}).status == 403
    untrusted = make_app(allow_ips=("198.51.100.7/32",))
    assert call(untrusted, ENVELOPE, headers={"X-Forwarded-For": "198.51.100.7"}).status == 403


def test_settings_refuse_a_bad_network():
    from mm7soap.settings import Settings

    with pytest.raises(ValueError):
        Settings.from_env({"MM7SOAP_ALLOW_IPS": "10.0.0.0/8,not-an-ip"})


# --- a live gunicorn: chunked transfer and clients that stall -----------------------------


@pytest.fixture
def live(tmp_path):
    port = free_port()
    env = {
        "MM7SOAP_DATABASE": str(tmp_path / "live.db"),
        "MM7SOAP_PORT": str(port),
        "MM7SOAP_READ_TIMEOUT": "1",
        "MM7SOAP_WORKERS": "1",
        "MM7SOAP_THREADS": "4",
    }
    for process in run([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"], env):
        wait_until_listening(port, process)
        yield port, tmp_path / "live.db"


def raw_exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"</env:Envelope>" in b"".join(chunks):
                break
        return b"".join(chunks)


def chunked(body: bytes, size: int = 100) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def test_chunked_request_to_gunicorn(live):
    port, _ = live
    head = b"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_exchange(port, head, chunked(ENVELOPE))
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"<StatusCode>1000</StatusCode>" in answer


def test_a_client_stalling_mid_body_is_dropped_and_blocks_nobody(live):
    port, database = live
    head = f"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {len(ENVELOPE)}\r\n\r\n"
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for sock in stalled:
        sock.sendall(head.encode() + ENVELOPE[:300])
    started = time.monotonic()
    answer = raw_exchange(port, head.encode(), ENVELOPE)
    assert answer.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 1.0  # not queued behind the stalled clients
    for sock in stalled:
        sock.settimeout(10)
        dropped = sock.recv(65536)  # answered and closed after the 1 s read timeout
        assert dropped == b"" or dropped.startswith(b"HTTP/1.1 408")
        sock.close()
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*) FROM delivery_reports").fetchone() == (1,)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /mm7 HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /mm7 HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"POST /mm7 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    ],
)
def test_http_gunicorn_cannot_parse_is_answered_with_a_soap_fault(live, request_bytes):
    port, _ = live
    answer = raw_exchange(port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Content-Type: text/xml; charset=utf-8" in head
    assert b"<html" not in answer
    assert b"<faultcode>env:Client</faultcode>" in body
    assert b"<StatusCode>4004</StatusCode>" in body

"""A client that half-closes (`shutdown(SHUT_WR)`) before its request is whole, then waits to read:
under gunicorn it gets a 408 Fault at once, as a request that stalls does, and nothing is stored.

The worker's event loop reads each request before a thread takes it (mm7soap/serving.py); it
took the end of the client's stream for a dead connection and closed it without a word.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.helpers import Response, assert_fault
from tests.reliability.service import NAMESPACE, Service, delivery_report, serving

# Long, so that an answer within ANSWERED_WITHIN can only be the half-close's doing.
READ_TIMEOUT = 30.0
ANSWERED_WITHIN = 2.0
SOCKET_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    database = tmp_path_factory.mktemp("half-close") / "mm7soap.db"
    with serving(database, MM7SOAP_WORKERS="1", MM7SOAP_READ_TIMEOUT=str(READ_TIMEOUT)) as running:
        yield running


def request(body: bytes) -> bytes:
    return (
        f"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n"
        f'SOAPAction: "{NAMESPACE}"\r\nContent-Length: {len(body)}\r\n\r\n'
    ).encode() + body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails after SOCKET_TIMEOUT of silence."""
    sock.settimeout(SOCKET_TIMEOUT)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_answer(sock: socket.socket) -> Response:
    """One whole answer on a connection that stays open (its head may come apart from its body)."""
    sock.settimeout(SOCKET_TIMEOUT)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed during the answer: {answer!r}"
        answer += chunk
    return parsed(answer)


def content_length(answer: bytes) -> int:
    return int(parsed(answer).headers["Content-Length"])


def parsed(answer: bytes) -> Response:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return Response(int(status_line.split()[1]), headers, body)


def half_close_after(service: Service, sent: bytes, kept_alive: bool) -> tuple[bytes, float]:
    """Sends `sent` (after a whole report first, on a kept-alive connection), shuts the
    sending side, and returns all the server says, and how long it took."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=SOCKET_TIMEOUT) as sock:
        if kept_alive:
            sock.sendall(request(delivery_report("half-close-kept")))
            first = read_answer(sock)
            assert first.status == 200 and first.headers.get("Connection") != "close", first
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        return read_until_closed(sock), time.monotonic() - started


CUT_SHORT = {
    "body": (request(delivery_report("cut-body"))[:-200], "the whole body"),
    "head": (b"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Len", "the whole request head"),
}


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new connection", "kept-alive connection"])
@pytest.mark.parametrize("cut", CUT_SHORT)
def test_a_request_cut_short_by_a_half_close_gets_408_and_is_not_stored(service, cut, kept_alive):
    sent, what = CUT_SHORT[cut]
    answer, waited = half_close_after(service, sent, kept_alive)
    assert answer, "the connection was closed without an answer"
    assert waited < ANSWERED_WITHIN  # at once, not after the read timeout
    assert answer.count(b"HTTP/1.1 ") == 1
    response = parsed(answer)
    assert response.status == 408
    assert response.headers["Connection"] == "close"
    assert_fault(replace(response, status=500), "Client", 4004)
    assert f"before sending {what}" in (response.text("Body/Fault/detail/VASPErrorRsp/Status/Details") or "")
    assert "cut-body" not in {transaction_id for transaction_id, _ in service.rows()}


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new connection", "kept-alive connection"])
def test_a_half_close_before_any_request_is_closed_without_an_answer(service, kept_alive):
    """Nothing was asked, so nothing is answered (this held before the fix too: it keeps the
    fix from answering connections that only went away)."""
    answer, waited = half_close_after(service, b"", kept_alive)
    assert answer == b""
    assert waited < ANSWERED_WITHIN


def test_a_blank_line_after_a_whole_request_then_a_half_close_gets_only_its_answer(service):
    """A CRLF after a request is not the start of another (RFC 9112 §2.2): the client gets
    its 200 and then the close, not a 408 for a request it never began."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(request(delivery_report("blank-line-after")) + b"\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert parsed(answer).status == 200

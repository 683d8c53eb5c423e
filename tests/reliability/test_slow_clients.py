"""Slow and broken clients, against gunicorn with the production config (the issue's "Slow and
broken clients" requirement): connections that stall mid-headers or mid-body, connections that
send nothing, and clients that hang up before reading the answer must not block other requests
beyond the read timeout, and must leave no half-stored report.

Every kind of stall is opened three times over as many times as there are threads in all the
workers, so that holding a thread per stalled connection would show as blocked reports.

Run with `pytest -s` to see the figures line (`RELIABILITY slow clients: …`).
"""

from __future__ import annotations

import selectors
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field

import pytest

from mm7soap.serving import BUFFERED_BODY_LIMIT, HEAD_LIMIT, Arrival, arrival
from mm7soap.settings import Settings
from tests.reliability.service import NAMESPACE, Client, Service, delivery_report, serving

WORKERS = 2
THREADS = Settings().threads  # the production default: 16 per worker
READ_TIMEOUT = 2.0
# Three stalled connections of each kind per thread of the whole service.
STALLED = 3 * WORKERS * THREADS
# "Promptly": a normal report is answered in well under the read timeout.
PROMPT = READ_TIMEOUT / 4
# The worker's event loop wakes at least once a second to close connections past their time.
CLOSE_SLACK = 1.5
# A normal report not answered by then counts as blocked (and fails the test).
NORMAL_TIMEOUT = 3 * READ_TIMEOUT
MID_HEADERS = b"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Len"


def head(body: bytes) -> bytes:
    return (
        f"POST /mm7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n"
        f'SOAPAction: "{NAMESPACE}"\r\nContent-Length: {len(body)}\r\n\r\n'
    ).encode()


@dataclass
class Stalled:
    """One connection that stopped sending: what it sent, and how the server ended it."""

    kind: str
    sock: socket.socket
    quiet_since: float
    transaction_id: str
    closed_at: float | None = None
    answer: bytes = b""

    @property
    def closed_after(self) -> float:
        assert self.closed_at is not None
        return self.closed_at - self.quiet_since


@dataclass
class Figures:
    stalled: dict[str, int] = field(default_factory=dict)
    closed_after: dict[str, tuple[float, float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    hang_ups_stored_before_resend: int = 0
    hang_ups: int = 0
    half_stored: int = 0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    database = tmp_path_factory.mktemp("slow-clients") / "mm7soap.db"
    with serving(database, MM7SOAP_WORKERS=str(WORKERS), MM7SOAP_READ_TIMEOUT=str(READ_TIMEOUT)) as running:
        yield running


def exchange(sock: socket.socket, body: bytes) -> bytes:
    """One complete report on a raw connection, and the whole answer (the connection kept)."""
    sock.sendall(head(body) + body)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed during the answer: {answer!r}"
        answer += chunk
    assert b"<StatusCode>1000</StatusCode>" in answer, answer
    return answer


def content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length: {answer!r}")


def connect(stack: ExitStack, port: int, kind: str, index: int) -> Stalled:
    """A connection that is to stall; every other one first completes a report, so that the
    stall also happens on a kept-alive connection, between requests."""
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    if kind != "idle" and index % 2:
        exchange(sock, delivery_report(f"{kind}-kept-{index}"))
    return Stalled(kind, sock, time.monotonic(), f"{kind}-stalled-{index}")


def stall(stalled: Stalled) -> None:
    """Sends the part of a request this kind of connection stops after (an idle one has been
    quiet since it connected)."""
    if stalled.kind == "idle":
        return
    if stalled.kind == "mid-headers":
        stalled.sock.sendall(MID_HEADERS)
    else:
        body = delivery_report(stalled.transaction_id)
        stalled.sock.sendall(head(body) + body[: len(body) // 2])
    stalled.quiet_since = time.monotonic()


class Watcher(threading.Thread):
    """Reads every stalled connection until the server closes it, noting when it did."""

    def __init__(self, stalled: list[Stalled], deadline: float) -> None:
        super().__init__(daemon=True)
        self.stalled = stalled
        self.deadline = deadline

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for stalled in self.stalled:
                stalled.sock.setblocking(False)
                selector.register(stalled.sock, selectors.EVENT_READ, stalled)
            while selector.get_map() and time.monotonic() < self.deadline:
                for key, _ in selector.select(0.05):
                    if self.read(key.data):
                        selector.unregister(key.fileobj)

    @staticmethod
    def read(stalled: Stalled) -> bool:
        """Whether the server has now closed this connection."""
        try:
            chunk = stalled.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:  # reset: closed too
            chunk = b""
        stalled.answer += chunk
        if chunk:
            return False
        stalled.closed_at = time.monotonic()
        return True


def send_reports(port: int, prefix: str, seconds: float, latencies: list[float]) -> set[str]:
    """Normal reports for `seconds`, alternately on a kept-alive connection and on new ones;
    each must get a 1000. Returns their TransactionIDs."""
    sent: set[str] = set()
    keep_alive = Client(port, timeout=NORMAL_TIMEOUT)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            tid = f"{prefix}-normal-{len(sent)}"
            client = keep_alive if len(sent) % 2 else Client(port, timeout=NORMAL_TIMEOUT)
            started = time.monotonic()
            try:
                answer = client.post(delivery_report(tid))
            except OSError as exc:
                raise AssertionError(f"{tid} got no answer within {NORMAL_TIMEOUT} s: {exc!r}") from None
            finally:
                if client is not keep_alive:
                    client.close()
            latencies.append(time.monotonic() - started)
            assert answer.acknowledged, answer
            sent.add(tid)
    finally:
        keep_alive.close()
    return sent


def stored(service: Service) -> dict[str, list[bytes]]:
    """Every stored report's raw envelope, by TransactionID."""
    found: dict[str, list[bytes]] = {}
    with closing(sqlite3.connect(service.database, timeout=10)) as conn:
        for tid, envelope in conn.execute("SELECT transaction_id, raw_envelope FROM delivery_reports"):
            found.setdefault(tid, []).append(bytes(envelope))
    return found


def assert_survived(service: Service, workers: list[int]) -> None:
    assert service.workers() == workers, f"a worker was replaced:\n{service.log_tail()}"
    assert service.health() == 200


def assert_ended_properly(stalled: Stalled) -> None:
    """Closed within about the read timeout, having got nothing or a SOAP fault (never HTML)."""
    assert stalled.closed_at is not None, f"{stalled.kind}: still open after {READ_TIMEOUT + CLOSE_SLACK} s"
    assert READ_TIMEOUT - 0.2 <= stalled.closed_after <= READ_TIMEOUT + CLOSE_SLACK, stalled
    if not stalled.answer:
        return
    status_line, _, rest = stalled.answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line in (b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 400 Bad Request"), stalled.answer
    assert b"Content-Type: text/xml; charset=utf-8" in headers
    assert b"<html" not in stalled.answer.lower()
    assert b"<faultcode>env:Client</faultcode>" in body, stalled.answer


def stall_phase(service: Service, kind: str, figures: Figures) -> None:
    """STALLED connections of `kind` while a normal client keeps sending reports."""
    workers = service.workers()
    latencies: list[float] = []
    with ExitStack() as stack:
        stalls = [connect(stack, service.port, kind, i) for i in range(STALLED)]
        for stalled in stalls:
            stall(stalled)
        watcher = Watcher(stalls, time.monotonic() + READ_TIMEOUT + CLOSE_SLACK + 1)
        watcher.start()
        sent = send_reports(service.port, kind, READ_TIMEOUT + CLOSE_SLACK, latencies)
        watcher.join()
    for stalled in stalls:
        assert_ended_properly(stalled)
    assert max(latencies) < PROMPT, f"{kind}: a normal report waited {max(latencies):.2f} s"
    rows = stored(service)
    firsts = {f"{kind}-kept-{i}" for i in range(STALLED) if kind != "idle" and i % 2}
    assert {tid for tid in rows if tid.startswith(f"{kind}-")} == sent | firsts  # no stalled body
    assert all(len(rows[tid]) == 1 for tid in sent | firsts)
    assert_survived(service, workers)
    figures.stalled[kind] = len(stalls)
    figures.closed_after[kind] = (min(s.closed_after for s in stalls), max(s.closed_after for s in stalls))
    figures.latencies += latencies


def hang_up(port: int, body: bytes, how: str) -> None:
    """Sends `body` (or half of it) and goes away without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if how == "half-then-close":
            sock.sendall(head(body) + body[: len(body) // 2])
            return
        sock.sendall(head(body) + body)
        if how == "reset":  # RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "shutdown":
            sock.shutdown(socket.SHUT_RDWR)


# How a client goes away after sending its report: FIN, shutdown, RST, or halfway through.
HANG_UPS = ("close", "shutdown", "reset", "half-then-close")


def wait_until_settled(service: Service, seconds: float = READ_TIMEOUT) -> dict[str, list[bytes]]:
    """The stored reports once nothing has been added for a moment (the hung-up requests done)."""
    rows, deadline = stored(service), time.monotonic() + 10 * seconds
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        again = stored(service)
        if again.keys() == rows.keys():
            return again
        rows = again
    raise AssertionError("reports kept arriving")


def hang_up_phase(service: Service, figures: Figures) -> None:
    """Reports whose clients hang up before the answer, among normal traffic; then the MMSC's
    resends of the complete ones, which must be answered 1000 and stored exactly once."""
    workers = service.workers()
    plan = {f"hang-up-{how}-{i}": how for how in HANG_UPS for i in range(STALLED // len(HANG_UPS))}

    def hang_up_all() -> None:
        for tid, how in plan.items():
            hang_up(service.port, delivery_report(tid), how)

    sender = threading.Thread(target=hang_up_all)
    sender.start()
    try:
        sent = send_reports(service.port, "hang-up-phase", READ_TIMEOUT, figures.latencies)
    finally:
        sender.join()
    rows = wait_until_settled(service)
    before = {tid for tid in plan if tid in rows}
    assert all(rows[tid] == [delivery_report(tid)] for tid in before)  # once and whole, or not at all
    assert not any(plan[tid] == "half-then-close" for tid in before)
    complete = [tid for tid, how in plan.items() if how != "half-then-close"]
    resender = Client(service.port)
    try:
        assert all(resender.post(delivery_report(tid)).acknowledged for tid in complete)
    finally:
        resender.close()
    rows = stored(service)
    assert all(rows.get(tid) == [delivery_report(tid)] for tid in [*complete, *sent])
    assert_survived(service, workers)
    figures.hang_ups = len(plan)
    figures.hang_ups_stored_before_resend = len(before)


def half_stored(service: Service) -> int:
    """Rows that are not a complete report as sent, or that no client completed."""
    rows = stored(service)
    wrong = [tid for tid, envelopes in rows.items() if envelopes != [delivery_report(tid)]]
    never_completed = [tid for tid in rows if tid.startswith(("mid-body-stalled-", "hang-up-half-then-close-"))]
    return len(wrong) + len(never_completed)


def test_slow_and_broken_clients_block_nobody_and_half_store_nothing(service: Service) -> None:
    figures = Figures()
    started = time.monotonic()
    for kind in ("mid-headers", "mid-body", "idle"):
        stall_phase(service, kind, figures)
    hang_up_phase(service, figures)
    figures.half_stored = half_stored(service)
    assert figures.half_stored == 0
    assert service.integrity() == "ok"
    print(
        f"\nRELIABILITY slow clients: workers={WORKERS} threads={THREADS} read_timeout={READ_TIMEOUT:g}s"
        f" stalled opened {' '.join(f'{kind}={n}' for kind, n in figures.stalled.items())}"
        f" hang-ups={figures.hang_ups}; normal reports answered 1000: {len(figures.latencies)},"
        f" worst normal latency {max(figures.latencies) * 1000:.0f} ms;"
        f" stalled closed after {' '.join(f'{k}={a:.1f}-{b:.1f}s' for k, (a, b) in figures.closed_after.items())};"
        f" hung-up reports stored before resend {figures.hang_ups_stored_before_resend}/{figures.hang_ups},"
        f" after resend each exactly once; half-stored rows = {figures.half_stored};"
        f" {time.monotonic() - started:.1f} s"
    )


def test_a_kept_alive_connection_idle_longer_than_the_read_timeout_stays_open(service: Service) -> None:
    """The read timeout bounds a request that has begun; between requests gunicorn's keepalive
    (5 s) applies, so an MMSC's pooled connection is not cut after READ_TIMEOUT."""
    client = Client(service.port)
    try:
        assert client.post(delivery_report("keep-alive-1")).acknowledged
        assert client.conn is not None and client.conn.sock is not None
        first = client.conn.sock.getsockname()
        time.sleep(READ_TIMEOUT + CLOSE_SLACK)
        assert client.post(delivery_report("keep-alive-2")).acknowledged
        assert client.conn is not None and client.conn.sock is not None
        assert client.conn.sock.getsockname() == first  # the same connection
    finally:
        client.close()


REPORT = delivery_report("arrival")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", Arrival.PARTIAL),
        (MID_HEADERS, Arrival.PARTIAL),
        (head(REPORT) + REPORT[:100], Arrival.PARTIAL),
        (head(REPORT) + REPORT, Arrival.READY),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", Arrival.READY),
        # the thread reads these bodies itself, so they go to it with the head
        (b"POST /mm7 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Arrival.READY),
        (b"POST /mm7 HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", Arrival.READY),
        (b"POST /mm7 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BUFFERED_BODY_LIMIT + 1), Arrival.READY),
        (b"POST /mm7 HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n", Arrival.READY),
        (b"POST /mm7 HTTP/1.1\nHost: x\n", Arrival.READY),  # gunicorn refuses a bare LF at once
        (b"POST /mm7 HTTP/1.1\r\nX: " + b"a" * HEAD_LIMIT, Arrival.HEAD_TOO_LARGE),
    ],
)
def test_a_thread_takes_a_request_once_it_need_not_wait_for_the_client(data: bytes, expected: Arrival) -> None:
    assert arrival(data) is expected


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


NEXT_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (head(b"x" * 5000) + b"x" * 5000, b"413"),  # refused unread: not drained for keep-alive
        (b"POST /mm7 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    ],
)
def test_a_request_refused_unread_closes_its_connection(tmp_path, request_bytes: bytes, status: bytes) -> None:
    """The answer says `Connection: close` and the connection is closed: a request the client
    pipelined behind it is not read as if the refused one had ended where the server stopped."""
    with (
        serving(tmp_path / "mm7soap.db", MM7SOAP_MAX_BODY_BYTES="1000") as small,
        closing(socket.create_connection(("127.0.0.1", small.port))) as sock,
    ):
        sock.sendall(request_bytes + NEXT_REQUEST)
        answer = read_until_closed(sock)
    head_of_answer = answer.split(b"\r\n\r\n", 1)[0]
    assert head_of_answer.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in head_of_answer
    assert answer.count(b"HTTP/1.1 ") == 1

"""Running under gunicorn: the production configuration, shared by `mm7soap serve` and
`gunicorn -c gunicorn.conf.py mm7soap.wsgi:application`."""

from __future__ import annotations

import os
import selectors
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cached_property, partial
from http import HTTPStatus
from typing import Any

import gunicorn
from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.gthread import TConn, ThreadWorker

from mm7soap import errors, metrics, postgres, requestlog
from mm7soap.envelope import Reply
from mm7soap.settings import ENV_PREFIX, Settings, parse_value
from mm7soap.soap import fault_document
from mm7soap.store import Store
from mm7soap.supervisor import ForwarderProcess, RetentionProcess
from mm7soap.wsgi import create_app


def configured(**overrides: Any) -> Settings:
    """The settings from `MM7SOAP_*` (and the CLI's `overrides`), or an exit at start with one
    line naming the wrong setting: a bad configuration is the operator's to fix, not a crash
    (no traceback), and no value is repeated (the secret)."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:
        why = unparsable(os.environ) or str(exc)
        print(f"mm7soap: bad settings: {why}", file=sys.stderr)
        raise SystemExit(2) from None  # 2, as the CLI's other configuration errors


def unparsable(environ: Mapping[str, str]) -> str | None:
    """Which `MM7SOAP_*` variable is not of its setting's type (Python's own message names
    only the value), or None."""
    for setting in fields(Settings):
        name = ENV_PREFIX + setting.name.upper()
        if name in environ:
            try:
                parse_value(setting.type, environ[name])
            except ValueError:
                return f"{name} is not a valid {setting.type}"
    return None


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn settings for mm7soap; the schema is migrated once, in the master."""

    def on_starting(server: Any) -> None:
        # Before the workers fork: they inherit the request log's handler and the metrics'
        # directory (mm7soap/requestlog.py, mm7soap/metrics.py).
        requestlog.configure(settings)
        metrics.start_multiprocess(settings)
        store = Store(settings)
        try:
            store.migrate()
        except errors.StoreError as exc:  # a wrong URL or password: one line, no traceback
            print(f"mm7soap: {exc.details or exc.status_text}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            store.close()  # workers open their own connections after the fork

    forwarder = ForwarderProcess(settings, exited=metrics.process_exited) if settings.webhook_url else None
    retention = RetentionProcess(settings) if settings.retention_days else None

    def when_ready(server: Any) -> None:
        if forwarder is not None:
            forwarder.start()
        if retention is not None:
            retention.start()

    def child_exit(server: Any, worker: Any) -> None:
        metrics.process_exited(worker.pid)  # its counts kept, its files folded (a SIGKILL too)

    def on_exit(server: Any) -> None:
        if forwarder is not None:
            forwarder.stop()
        if retention is not None:
            retention.stop()
        metrics.stop_multiprocess()

    return {
        "bind": settings.bind,
        "workers": settings.workers,
        # Threads, not sync workers: keep-alive connections are kept (Sinch sends
        # `Connection: Keep-Alive`).  MM7ThreadWorker gives a thread only a request that has
        # arrived, so a stalling client holds no thread (a body over 256 KiB, chunked or
        # behind `Expect: 100-continue` is read by its thread, up to the read timeout).
        "worker_class": "mm7soap.serving.MM7ThreadWorker",
        "threads": settings.threads,
        # Sinch gives up after 10 s and retries; a request still running past the
        # timeout has its worker replaced, and its report was not acknowledged.
        "timeout": settings.timeout,
        "keepalive": 5,
        "loglevel": settings.log_level,
        "accesslog": None if settings.access_log == "off" else "-",
        # gunicorn's own lines, made in less than half the time (mm7soap/accesslog.py).  A name,
        # not the class, so that the benchmark's reference is served with the same logger.
        "logger_class": "mm7soap.accesslog.AccessLogger",
        "errorlog": "-",
        "preload_app": False,
        "on_starting": on_starting,
        "when_ready": when_ready,
        "child_exit": child_exit,
        "on_exit": on_exit,
        **control_socket(settings),  # gunicornc's socket: one per instance, not one per user
    }


# The longest path an AF_UNIX socket can have on Linux (108 bytes with the closing NUL).
UNIX_PATH_MAX = 107


def control_socket(settings: Settings) -> dict[str, Any]:
    """gunicorn's control socket (for `gunicornc`) beside the database, named after it and the
    port: `/var/lib/mm7soap/mm7soap.db.8080.ctl`.

    gunicorn's default, $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl, is one path
    for every instance a user runs, and gunicorn removes whatever is there when it starts, before
    each worker it forks and when it stops: one instance took the other's socket away.  The
    port tells apart instances sharing one database.  No socket at all when the database has no
    folder (`:memory:`, a PostgreSQL URL) or the path is too long for a socket;
    `--control-socket` on gunicorn's command line still chooses one."""
    if settings.database == ":memory:" or postgres.is_postgresql(settings.database):
        return {"control_socket_disable": True}
    path = f"{os.path.abspath(settings.database)}.{settings.port}.ctl"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        return {"control_socket_disable": True}
    return {"control_socket": path}


class CapturedSocket:
    """Takes what gunicorn writes for a request it could not parse (an HTML page)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)


# A request head longer than this is refused (431) rather than buffered; MMSCs send under 2 KiB.
HEAD_LIMIT = 64 * 1024
# A body up to this size is read before a thread takes the request (every report and read
# reply, small MO messages); a larger one is read by the thread, paced by the read timeout.
BUFFERED_BODY_LIMIT = 256 * 1024
RECV_CHUNK = 64 * 1024
# The gthread worker MM7ThreadWorker extends: one event loop calls enqueue_req and
# murder_keepalived, TConn.init makes the parser, and Unreader.take_buffered exists.
EVENT_LOOP_GUNICORN = (27, 0)


class Arrival(Enum):
    PARTIAL = "partial"
    READY = "ready"  # a thread can take it without waiting on the client
    HEAD_TOO_LARGE = "head too large"


def arrival(data: bytes) -> Arrival:
    """How far the request at the start of `data` has arrived."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > HEAD_LIMIT:
            return Arrival.HEAD_TOO_LARGE
        # gunicorn refuses a bare LF in the head at once: it need not wait for more.
        return Arrival.READY if data.count(b"\n") != data.count(b"\r\n") else Arrival.PARTIAL
    length = body_to_buffer(data[:end])
    return Arrival.READY if length is None or len(data) - end - 4 >= length else Arrival.PARTIAL


def body_to_buffer(head: bytes) -> int | None:
    """How much body to read before a thread takes the request, or None to leave it to the
    thread: chunked, too large, behind `Expect: 100-continue` (the client waits for the 100),
    or a Content-Length gunicorn will refuse. gunicorn parses the head; this only decides when."""
    lengths = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return None
        if name == b"content-length":
            lengths.append(value.strip())
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit() or int(lengths[0]) > BUFFERED_BODY_LIMIT:
        return None
    return int(lengths[0])


@dataclass
class Arriving:
    """A request being read by the event loop: its bytes so far, and until when the client may
    stay silent."""

    deadline: float
    data: bytearray = field(default_factory=bytearray)
    watched: bool = False  # registered with the poller


def http_fault(status: int, error: errors.MM7Error) -> bytes:
    """A whole HTTP answer holding `error` as an MM7 Fault; the connection is closed after it."""
    body = fault_document(error, Reply())
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: text/xml; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ClosingResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, closing the connection when the application says `Connection: close`.

    gunicorn drops an application's hop-by-hop headers and keeps the connection alive, so a
    413 for a body refused unread went out with `keep-alive` and gunicorn then read the whole
    body to reach the next request; a 400 or 408 told the client to keep a connection that
    gunicorn closed.  An MM7 answer that refuses a request unread must close it.
    """

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        for name, value in headers:
            if name.lower() == "connection" and value.strip().lower() == "close":
                self.force_close()
        super().process_headers(headers)


class MM7ThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, with two changes for MMSCs and for clients that stall.

    A thread takes a connection only once its request has arrived (the head, and a body of up to
    BUFFERED_BODY_LIMIT). Until then the worker's event loop reads it without blocking, and
    closes it when the client stays silent for the read timeout: 408 (a Fault) if it had begun
    a request, nothing if not. gunicorn gives the thread the connection as soon as it is
    accepted or readable, so a client that stopped mid-headers held a thread until it went away,
    and every connection that sent nothing held one for 5 s: as many as there are threads
    blocked every other MMSC. Between requests gunicorn's keepalive applies, as before.

    gunicorn writes its own HTML page for a broken request line, bad headers or bad
    chunking; an MMSC expects SOAP, so the page is replaced by a Fault with the same status.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arriving: dict[TConn, Arriving] = {}
        # gunicorn's wsgi.create() makes each response from this module global: in this
        # worker process (forked, so the master and other apps are untouched) it is ours.
        gunicorn_wsgi.Response = ClosingResponse
        if tuple(gunicorn.version_info) < EVENT_LOOP_GUNICORN:
            self.log.warning("gunicorn %s: each client stalling mid-request holds a thread", gunicorn.__version__)

    @cached_property
    def read_timeout(self) -> float:
        settings = getattr(self.wsgi, "settings", None)  # the CLI's settings, else the environment's
        return (settings if isinstance(settings, Settings) else Settings.from_env()).read_timeout

    @cached_property
    def reads_requests(self) -> bool:
        """Whether the event loop can read requests itself: plain HTTP/1 from the first byte
        (not TLS, a PROXY header or HTTP/2), and a gunicorn whose internals are the ones known."""
        cfg = self.cfg
        return (
            tuple(gunicorn.version_info) >= EVENT_LOOP_GUNICORN
            and not cfg.is_ssl
            and getattr(cfg, "proxy_protocol", "off") in ("off", False, None)
            and getattr(cfg, "http2_cleartext", "off") in ("off", "upgrade")
        )

    def enqueue_req(self, conn: TConn) -> None:
        """Called by the event loop for a new or readable connection: reads its request first."""
        if not self.reads_requests:
            super().enqueue_req(conn)
            return
        # A kept-alive connection may hold the start of its next request already.
        early = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        self.arriving[conn] = Arriving(time.monotonic() + self.read_timeout, bytearray(early))
        conn.sock.setblocking(False)
        if arrival(early) is Arrival.PARTIAL:
            self.read_request(conn)
        else:
            self.advance(conn)

    def read_request(self, conn: TConn, _fileobj: Any = None) -> None:
        """Reads what has come (the poller's callback while the request is partial)."""
        arriving = self.arriving[conn]
        try:
            chunk = conn.sock.recv(RECV_CHUNK)
        except BlockingIOError:
            chunk = None  # nothing yet
        except OSError as exc:
            self.drop(conn, f"reset mid-request: {exc}")
            return
        if chunk == b"":
            self.ended_early(conn)
            return
        if chunk:
            arriving.data += chunk
            arriving.deadline = time.monotonic() + self.read_timeout
        self.advance(conn)

    def advance(self, conn: TConn) -> None:
        """Waits for more, hands the request to a thread, or refuses it."""
        arriving = self.arriving[conn]
        state = arrival(arriving.data)
        if state is Arrival.PARTIAL:
            if not arriving.watched:
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.read_request, conn))
                arriving.watched = True
            return
        if state is Arrival.HEAD_TOO_LARGE:
            self.refuse(conn, 431, errors.BadHttpError(f"the request head is over {HEAD_LIMIT} bytes", 431))
            return
        self.forget(conn)
        conn.init()  # gunicorn's parser, which reads what is buffered before the socket
        conn.parser.unreader.unread(bytes(arriving.data))
        super().enqueue_req(conn)

    def ended_early(self, conn: TConn) -> None:
        """The client shut its side of the connection (or closed it) before its request was whole.

        It may still be reading (a half-close, `shutdown(SHUT_WR)`), so a request that had
        begun is refused as one that stalls is, 408; closing silently left it waiting for an
        answer that never came. A connection that sent nothing asked nothing: it is just closed.
        """
        data = self.arriving[conn].data
        if not data.strip(b"\r\n"):  # blank lines before a request line are not one (RFC 9112 §2.2)
            self.drop(conn, "closed by the client before it sent a request")
            return
        part = "body" if b"\r\n\r\n" in data else "request head"
        error = errors.RequestTimeoutError(f"the client closed the connection before sending the whole {part}")
        self.refuse(conn, 408, error)

    def murder_keepalived(self, force: bool = False) -> None:
        """Also closes the connections whose client stayed silent mid-request for too long."""
        if force:
            super().murder_keepalived(force=True)
        else:
            super().murder_keepalived()  # older gunicorns take no argument
        now = time.monotonic()
        for conn, arriving in list(self.arriving.items()):
            if not force and arriving.deadline > now:
                continue
            if arriving.data:
                error = errors.RequestTimeoutError(f"the request stalled after {len(arriving.data)} bytes")
                self.refuse(conn, 408, error)
            else:
                self.drop(conn, "no request within the read timeout")

    def forget(self, conn: TConn) -> None:
        arriving = self.arriving.pop(conn, None)
        if arriving is not None and arriving.watched:
            self.poller.unregister(conn.sock)

    def drop(self, conn: TConn, why: str) -> None:
        """Closes a connection that has nothing to answer."""
        self.log.debug("closing connection from %s: %s", conn.client, why)
        self.forget(conn)
        self.nr_conns -= 1
        conn.close()

    def refuse(self, conn: TConn, status: int, error: errors.MM7Error) -> None:
        """Answers a Fault without a thread, then closes (the answer is small: one send)."""
        self.log.info("%s from %s: %s", status, conn.client, error)
        self.forget(conn)
        with suppress(OSError):  # the client went away: nothing more to tell it
            conn.sock.send(http_fault(status, error))
        self.nr_conns -= 1
        conn.close()

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = CapturedSocket()
        super().handle_error(req, captured, addr, exc)  # logs it and picks the status
        status_line = captured.data.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 500
        error = errors.BadHttpError(f"the HTTP request could not be read: {exc}", status)
        try:
            util.write_nonblock(client, http_fault(status, error))
        except OSError:
            self.log.debug("could not send the fault for an unreadable request")


class MM7Gunicorn(BaseApplication):  # type: ignore[misc] - gunicorn ships no type hints
    """gunicorn, configured in code rather than from a file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    MM7Gunicorn(settings).run()

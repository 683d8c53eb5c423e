"""HTTP: the WSGI application an MMSC posts to.

HTTP → here (route, who may post, body size and pace, Content-Encoding, MIME) → `service.Endpoint`
(SOAP/Spyne → service → store) → the answer.  Every answer but the WSDL and /health is a
SOAP envelope in `text/xml`: refusals at the HTTP level are Faults too, with their own
HTTP status.  `SOAPAction` is not looked at: MM7 dispatches on the Body's first child, and
MMSCs send `""`, the namespace URI, anything or nothing (spec.md §1).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from mm7soap import contentcoding, errors, metrics, mime, outbox, requestlog
from mm7soap.access import AccessPolicy, scrape_policy
from mm7soap.envelope import Reply
from mm7soap.health import WriteCheck
from mm7soap.namespaces import DEFAULT_NAME, MM7_NAMESPACES
from mm7soap.records import Inbound
from mm7soap.service import Answer, Endpoint
from mm7soap.settings import Settings
from mm7soap.soap import fault_document
from mm7soap.store import Store
from mm7soap.wsdl import WsdlDocuments

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
XML = "text/xml; charset=utf-8"
HEALTH_PATH = "/health"
EVENTS_PATH = "/events"
METRICS_PATH = "/metrics"
EVENTS_LIMIT = 1000  # the most events one /events answer holds
READ_CHUNK = 64 * 1024

# The HTTP headers in which Sinch names the mobile operator (sinch.md §8); WSGI spells them so.
OPERATOR_HEADERS = ("HTTP_X_MBLOX_CARRIER_ID", "HTTP_X_MBLOX_OPERATOR_ID")


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str = XML
    headers: list[tuple[str, str]] = field(default_factory=list)
    soap: Answer | None = None  # an MM7 request's answer, with what the request was
    error: errors.MM7Error | None = None  # the refusal answered before SOAP was read

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"


class MM7WsgiApp:
    """The WSGI application: one per process, sharing nothing but the database file."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.store.migrate()
        self.endpoint = Endpoint(self.store, settings.service_code)
        self.wsdl = WsdlDocuments(self.endpoint)
        self.access = AccessPolicy(settings)
        self.metrics = metrics.for_service(settings)  # None: metrics off, nothing counted
        self.scrape_access = scrape_policy(settings)
        if self.metrics is not None:
            self.store.observe_commit = self.metrics.committed
        self.write_check = WriteCheck(self.store, settings.health_timeout)
        self.endpoint_paths = {settings.path.rstrip("/"), ""}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            answer = self.route(environ)
        except errors.MM7Error as exc:
            answer = self.fault(exc)
        except Exception:
            log.exception("unexpected failure in the HTTP layer")
            answer = self.fault(errors.MM7Error("unexpected server error"))
        then = self.answered(environ, answer, time.perf_counter() - started)
        headers = [("Content-Type", answer.content_type), *answer.headers, ("Content-Length", str(len(answer.body)))]
        start_response(answer.status_line, headers)
        return AnswerBody(answer.body, then)

    def route(self, environ: dict[str, Any]) -> HttpAnswer:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        if path.rstrip("/") == HEALTH_PATH and method in ("GET", "HEAD"):
            return self.health()
        if path.rstrip("/") == EVENTS_PATH and method == "GET":
            return self.events(environ)
        if path.rstrip("/") == METRICS_PATH and method == "GET" and self.metrics is not None:
            return self.metrics_page(environ)
        if path.rstrip("/") not in self.endpoint_paths:
            raise errors.NotFoundError(f"no MM7 endpoint at {path}")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        wsdl = next((values[-1] for key, values in query.items() if key.lower() == "wsdl"), None)
        if method == "GET" and wsdl is not None:
            return self.wsdl_document(environ, wsdl)
        if method != "POST":
            raise errors.MethodNotAllowedError(f"{method} is not an MM7 request; POST a SOAP envelope")
        client = self.access.check(environ)
        received = self.read_body(environ)
        # The size limit holds for the decoded body too: a bomb is refused as it inflates.
        decoded = contentcoding.decode(environ.get("HTTP_CONTENT_ENCODING"), received, self.settings.max_body_bytes)
        body = mime.read_body(environ.get("CONTENT_TYPE", ""), decoded)
        inbound = Inbound(
            raw_envelope=body.root.data,
            charset=body.root.charset,
            client_address=client,
            operator_id=operator_id(environ),
            attachments=body.attachments,
        )
        return self.soap_answer(self.endpoint.answer(inbound))

    def soap_answer(self, answer: Answer) -> HttpAnswer:
        status = 200 if not answer.fault else self.settings.fault_http_status
        return HttpAnswer(status, answer.body, soap=answer)

    def fault(self, error: errors.MM7Error) -> HttpAnswer:
        """A Fault raised before the envelope was read: the default namespace, no TransactionID."""
        status = error.http_status or self.settings.fault_http_status
        return HttpAnswer(status, fault_document(error, Reply()), headers=list(error.http_headers), error=error)

    def answered(self, environ: dict[str, Any], answer: HttpAnswer, seconds: float) -> Callable[[], None]:
        """What the request came to, to be logged and counted once its answer is sent (by the
        function returned: see AnswerBody).  An MM7 request has one record, made here once,
        for both the log line and the metrics; other answers are only counted."""
        route = route_name(environ, self.endpoint_paths)
        if route != "mm7":
            return partial(self.count_answer, route, answer.status)
        soap = answer.soap or Answer(True, answer.body, error=answer.error or errors.MM7Error())
        client = self.access.client_address(environ)
        record = requestlog.Answered.of(soap, answer.status, operator_id(environ), client, seconds)
        if self.settings.access_log == "other" and requestlog.logs(record):
            # Marked now: gunicorn writes its access line before it closes the body.
            environ[requestlog.LOGGED] = True  # its line says it all: no access line (accesslog.py)
        return partial(self.log_and_count, record)

    def log_and_count(self, record: requestlog.Answered) -> None:
        requestlog.write(record)
        if self.metrics is not None:
            self.metrics.answered(record)

    def count_answer(self, route: str, status: int) -> None:
        if self.metrics is not None:
            self.metrics.http_answered(route, status)

    def metrics_page(self, environ: dict[str, Any]) -> HttpAnswer:
        """`GET /metrics`: Prometheus's text format, to those `metrics_access` lets scrape.
        A refusal is plain text: a scraper is no MMSC."""
        if self.scrape_access is not None:
            try:
                self.scrape_access.check(environ)
            except errors.MM7Error as exc:
                body = f"{exc.details or exc.status_text}\n".encode()
                return HttpAnswer(exc.http_status or 403, body, "text/plain; charset=utf-8", list(exc.http_headers))
        assert self.metrics is not None
        body, content_type = self.metrics.page(environ.get("HTTP_ACCEPT"))
        return HttpAnswer(200, body, content_type)

    def wsdl_document(self, environ: dict[str, Any], name: str) -> HttpAnswer:
        """`?wsdl` is REL-6-MM7-1-4's; `?wsdl=REL-5-MM7-1-0` names another namespace."""
        name = name or DEFAULT_NAME
        if name not in MM7_NAMESPACES:
            raise errors.NotFoundError(f"no WSDL for {name}")
        return HttpAnswer(200, self.wsdl.for_url(request_url(environ), name))

    def health(self) -> HttpAnswer:
        """200 when a report could be stored right now, 503 (and why) when not, within
        `health_timeout` whatever the database is doing (mm7soap/health.py)."""
        why = self.write_check.why_not()
        if why is not None:
            report = {"status": "error", "database": "not writable", "error": why}
            return HttpAnswer(503, json.dumps(report).encode(), "application/json")
        report = {"status": "ok", "database": "writable"}
        return HttpAnswer(200, json.dumps(report).encode(), "application/json")

    def events(self, environ: dict[str, Any]) -> HttpAnswer:
        """`GET /events?after=SEQUENCE&limit=N`: the outbox's events after a sequence, for an
        application that pulls rather than receives webhooks.  The same credentials and allow
        list as the MM7 path; the answers are JSON, refusals too."""
        try:
            self.access.check(environ)
            after, limit = events_query(environ.get("QUERY_STRING", ""))
        except errors.MM7Error as exc:
            status = exc.http_status or 400
            body = json.dumps({"error": exc.details or exc.status_text}).encode()
            return HttpAnswer(status, body, "application/json", list(exc.http_headers))
        found = outbox.events_after(self.store.db, after, limit, bool(self.settings.webhook_include_raw))
        next_after = found[-1]["sequence"] if found else after
        return HttpAnswer(200, outbox.body({"events": found, "next_after": next_after}), "application/json")

    def read_body(self, environ: dict[str, Any]) -> bytes:
        """The request body, refused (413) past the size limit without reading it all, and
        dropped (408) when the client pauses longer than the read timeout."""
        limit = self.settings.max_body_bytes
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        if length.isdigit() and int(length) > limit:
            raise errors.TooLargeError(f"the body is {length} bytes; at most {limit} are accepted")
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            # gunicorn's sockets block without limit; a stalled client would hold a thread.
            sock.settimeout(self.settings.read_timeout)
        stream = environ["wsgi.input"]
        try:
            if length.isdigit():
                body = read_up_to(stream, int(length))
            else:  # chunked: read until the end, but never past the limit
                body = read_up_to(stream, limit + 1)
                if len(body) > limit:
                    raise errors.TooLargeError(f"the body is over {limit} bytes")
        except OSError as exc:  # socket.timeout, a reset connection
            raise errors.RequestTimeoutError(f"the body did not arrive: {exc}") from None
        except errors.MM7Error:
            raise
        except Exception as exc:  # the server's own parse errors: bad chunk sizes, …
            raise errors.BadHttpError(f"the body could not be read: {exc}", 400) from None
        if length.isdigit() and len(body) < int(length):
            raise errors.RequestTimeoutError("the client closed the connection before sending the whole body")
        return body


def read_up_to(stream: Any, size: int) -> bytes:
    """At most `size` bytes, in chunks, until the stream ends."""
    chunks, remaining = [], size
    while remaining > 0:
        chunk = stream.read(min(READ_CHUNK, remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def events_query(query: str) -> tuple[int, int]:
    """`after` (default 0) and `limit` (default 100, at most EVENTS_LIMIT) of /events."""
    values = {key: found[-1] for key, found in parse_qs(query, keep_blank_values=True).items()}
    try:
        after, limit = int(values.get("after", "0")), int(values.get("limit", "100"))
    except ValueError:
        raise errors.ValidationError("after and limit must be whole numbers") from None
    if not 0 <= after < 2**63 or not 1 <= limit <= EVENTS_LIMIT:  # a sequence is an SQLite integer
        raise errors.ValidationError(f"after must be 0 to 2**63-1, limit between 1 and {EVENTS_LIMIT}")
    return after, limit


def route_name(environ: dict[str, Any], endpoint_paths: set[str]) -> str:
    """What a request asked for, as the metrics count it: a few names, whatever the path."""
    path = (environ.get("PATH_INFO", "") or "/").rstrip("/")
    if path in (HEALTH_PATH, EVENTS_PATH, METRICS_PATH):
        return path.lstrip("/")
    if path not in endpoint_paths:
        return "other"
    if environ.get("REQUEST_METHOD", "GET").upper() == "POST":
        return "mm7"
    return "wsdl" if "wsdl" in environ.get("QUERY_STRING", "").lower() else "other"


def operator_id(environ: dict[str, Any]) -> str | None:
    """The operator id as sent: an opaque string whose leading zeros matter."""
    for key in OPERATOR_HEADERS:
        value = environ.get(key)
        if value is not None and value.strip():
            return value.strip()
    return None


def request_url(environ: dict[str, Any]) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '127.0.0.1')}:{environ.get('SERVER_PORT', '80')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{environ.get('PATH_INFO', '') or '/'}"


class AnswerBody(list[bytes]):  # a list: gunicorn iterates one fastest
    """The answer's body, whose `close()` logs and counts the request.  A WSGI server calls it
    once the body is sent (PEP 3333; gunicorn after its access line, in a `finally`), so the
    MMSC has its answer without waiting for the log line's write and the metrics' counts.  The
    price: a scrape just after an answer may not count it yet, and a worker killed between the
    two loses the line and the count of a report it stored and acknowledged (the row is there)."""

    def __init__(self, body: bytes, then: Callable[[], None]) -> None:
        super().__init__((body,))
        self.then = then

    def close(self) -> None:
        then, self.then = self.then, nothing  # once, though a middleware closes it too
        try:
            then()
        except Exception:  # a log or a count that failed must not fail the server's close
            log.exception("the request could not be logged or counted")


def nothing() -> None:
    pass

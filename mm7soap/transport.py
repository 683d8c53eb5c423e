"""HTTP: the WSGI application an MMSC posts to.

HTTP → here (method, path, body, MIME) → `service.Endpoint` (SOAP/Spyne → service → store)
→ the answer.  `SOAPAction` is not looked at: MM7 dispatches on the Body's first child, and
MMSCs send `""`, the namespace URI, anything or nothing (spec.md §1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from mm7soap import errors, mime
from mm7soap.envelope import Reply
from mm7soap.namespaces import DEFAULT_NAME, MM7_NAMESPACES
from mm7soap.service import Answer, Endpoint, Inbound
from mm7soap.settings import Settings
from mm7soap.soap import fault_document
from mm7soap.store import Store
from mm7soap.wsdl import WsdlDocuments

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
XML = "text/xml; charset=utf-8"

# The HTTP headers in which Sinch names the mobile operator (sinch.md §8); WSGI spells them so.
OPERATOR_HEADERS = ("HTTP_X_MBLOX_CARRIER_ID", "HTTP_X_MBLOX_OPERATOR_ID")


class MM7WsgiApp:
    """The WSGI application: one per process, sharing nothing but the database file."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.store.migrate()
        self.endpoint = Endpoint(self.store)
        self.wsdl = WsdlDocuments(self.endpoint)
        self.paths = {settings.path.rstrip("/") or "/", "/"}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, headers, body = self.handle(environ)
        except Exception:
            log.exception("unexpected failure in the HTTP layer")
            status, headers, body = self.fault(errors.MM7Error("unexpected server error"))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def handle(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        if path.rstrip("/") not in {p.rstrip("/") for p in self.paths}:
            return self.fault(errors.MM7Error(f"no MM7 endpoint at {path}"), http_status="404 Not Found")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        wsdl = next((values[-1] for key, values in query.items() if key.lower() == "wsdl"), None)
        if method == "GET" and wsdl is not None:
            # `?wsdl` is REL-6-MM7-1-4's; `?wsdl=REL-5-MM7-1-0` names another namespace.
            name = wsdl or DEFAULT_NAME
            if name not in MM7_NAMESPACES:
                return self.fault(errors.UnsupportedVersion(f"no WSDL for {name}"), http_status="404 Not Found")
            return "200 OK", [("Content-Type", XML)], self.wsdl.for_url(request_url(environ), name)
        if method != "POST":
            status, headers, body = self.fault(
                errors.MM7Error(f"{method} is not an MM7 request; POST a SOAP envelope"),
                http_status="405 Method Not Allowed",
            )
            return status, [*headers, ("Allow", "POST, GET")], body
        try:
            raw_envelope = mime.root_part(environ.get("CONTENT_TYPE", ""), read_body(environ))
        except errors.MM7Error as exc:
            return self.fault(exc)
        inbound = Inbound(
            raw_envelope=raw_envelope,
            client_address=environ.get("REMOTE_ADDR"),
            operator_id=operator_id(environ),
        )
        return self.respond(self.endpoint.answer(inbound))

    def respond(self, answer: Answer) -> tuple[str, list[tuple[str, str]], bytes]:
        status = "200 OK" if not answer.fault or self.settings.fault_http_status == 200 else "500 Internal Server Error"
        return status, [("Content-Type", XML)], answer.body

    def fault(self, error: errors.MM7Error, http_status: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        status, headers, body = self.respond(Answer(fault=True, body=fault_document(error, Reply())))
        return http_status or status, headers, body


def read_body(environ: dict[str, Any]) -> bytes:
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.strip().isdigit():
        return stream.read(int(length))
    return stream.read()


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

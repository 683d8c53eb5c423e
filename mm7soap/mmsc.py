"""An MMSC in a module: MM7 requests written the way Sinch writes them, posted to any MM7
endpoint, and the answers checked the way an MMSC judges them (sinch.md §3: HTTP 200 and a
proper SOAP answer with the matching TransactionID and Status 1000, or it retries).

`mm7soap send` is the command over this; it tests a deployment (this one or any other
VASP endpoint) before a real MMSC is pointed at it.
"""

from __future__ import annotations

import base64
import http.client
import mimetypes
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from mm7soap.namespaces import DEFAULT_NAMESPACE, SOAP_ENV, default_version

# How the request is framed on the wire (`--format`).
SINCH = "sinch"  # multipart/related without a boundary around a bare envelope (delivery reports)
TEXT_XML = "text-xml"
SWA = "swa"  # SOAP with Attachments: a real multipart/related with `start`
FORMATS = (SINCH, TEXT_XML, SWA)

ROOT_CID = "soap-start"
CONTENT_CID = "default.cid"


@dataclass(frozen=True)
class Report:
    """What a DeliveryReportReq or ReadReplyReq says (`read_reply` picks which)."""

    message_id: str
    recipient: str
    sender: str
    status: str
    status_text: str | None = None
    read_reply: bool = False


@dataclass(frozen=True)
class MobileOriginated:
    """What a DeliverReq says, and the files it carries."""

    sender: str
    recipient: str
    files: tuple[Path, ...] = ()
    subject: str | None = None
    linked_id: str | None = None


@dataclass(frozen=True)
class Request:
    """One MM7 request as an MMSC would post it."""

    body: Report | MobileOriginated
    namespace: str = DEFAULT_NAMESPACE
    version: str | None = None
    transaction_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    carrier_id: str | None = None
    wire_format: str = SINCH
    # The request's Date (TimeStamp in a read reply or MO); None: the time it is posted.
    sent_at: datetime | None = None

    @property
    def operation(self) -> str:
        if isinstance(self.body, MobileOriginated):
            return "DeliverReq"
        return "ReadReplyReq" if self.body.read_reply else "DeliveryReportReq"

    @property
    def stamp_name(self) -> str:
        """The element `sent_at` fills."""
        return "Date" if self.operation == "DeliveryReportReq" else "TimeStamp"

    @property
    def mm7_version(self) -> str:
        return self.version or default_version(self.namespace)


def address(parent: etree._Element, ns: str, name: str, value: str) -> None:
    """`<Sender><Number>…` (or `RFC2822Address` for an e-mail address)."""
    kind = "RFC2822Address" if "@" in value else "Number"
    etree.SubElement(etree.SubElement(parent, f"{{{ns}}}{name}"), f"{{{ns}}}{kind}").text = value


def envelope(request: Request, now: datetime | None = None) -> bytes:
    """The SOAP envelope in Sinch's style: `soap-env:` prefix, MM7 as the default namespace."""
    ns, body = request.namespace, request.body
    moment = (now or request.sent_at or utc_now()).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap-env": SOAP_ENV, None: ns})
    header = etree.SubElement(root, f"{{{SOAP_ENV}}}Header")
    transaction = etree.SubElement(header, f"{{{ns}}}TransactionID", {f"{{{SOAP_ENV}}}mustUnderstand": "1"})
    transaction.text = request.transaction_id
    operation = etree.SubElement(etree.SubElement(root, f"{{{SOAP_ENV}}}Body"), f"{{{ns}}}{request.operation}")

    def element(name: str, text: str | None) -> None:
        if text is not None:
            etree.SubElement(operation, f"{{{ns}}}{name}").text = text

    element("MM7Version", request.mm7_version)
    if isinstance(body, Report):
        element("MessageID", body.message_id)
        address(operation, ns, "Recipient", body.recipient)
        address(operation, ns, "Sender", body.sender)
        element(request.stamp_name, moment)
        element("MMStatus", body.status)
        element("StatusText", body.status_text)
    else:
        element("LinkedID", body.linked_id)
        address(operation, ns, "Sender", body.sender)
        address(etree.SubElement(operation, f"{{{ns}}}Recipients"), ns, "To", body.recipient)
        element("TimeStamp", moment)
        element("Subject", body.subject)
        if body.files:
            etree.SubElement(operation, f"{{{ns}}}Content", href=f"cid:{CONTENT_CID}", allowAdaptations="true")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True)


def mime_part(headers: dict[str, str], content: bytes) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("utf-8") + b"\r\n" + content


def multipart(parts: Iterable[bytes], boundary: str) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return out + b"--" + boundary.encode() + b"--\r\n"


def file_part(path: Path) -> bytes:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {
        "Content-Type": f'{content_type}; name="{path.name}"',
        "Content-ID": f"<{path.name}>",
        "Content-Location": path.name,
        "Content-Transfer-Encoding": "binary",
    }
    return mime_part(headers, path.read_bytes())


def http_body(request: Request, now: datetime | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of the request in its wire format."""
    soap = envelope(request, now)
    files = request.body.files if isinstance(request.body, MobileOriginated) else ()
    if request.wire_format == TEXT_XML and not files:
        return "text/xml; charset=utf-8", soap
    if request.wire_format == SINCH and not files:
        return 'multipart/related; type="text/xml";', soap
    boundary = f"mm7-{uuid.uuid4().hex}"
    parts = [mime_part({"Content-Type": "text/xml; charset=utf-8", "Content-ID": f"<{ROOT_CID}>"}, soap)]
    if files:
        inner = f"mm7-content-{uuid.uuid4().hex}"
        content = multipart((file_part(path) for path in files), inner)
        headers = {"Content-Type": f'multipart/mixed; boundary="{inner}"', "Content-ID": f"<{CONTENT_CID}>"}
        parts.append(mime_part(headers, content))
    content_type = f'multipart/related; type="text/xml"; boundary="{boundary}"; start="<{ROOT_CID}>"'
    return content_type, multipart(parts, boundary)


@dataclass(frozen=True)
class HttpReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name.lower()), "")


class Connection:
    """One keep-alive HTTP connection to the endpoint, as an MMSC holds one per sender."""

    def __init__(self, url: str, timeout: float = 10.0, user: str | None = None, password: str | None = None):
        self.url = urlsplit(url)
        self.timeout = timeout
        self.authorization = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.authorization = f"Basic {token}"
        self._connection: http.client.HTTPConnection | None = None

    def post(self, request: Request) -> HttpReply:
        content_type, body = http_body(request)
        headers = {"Content-Type": content_type, "SOAPAction": f'"{request.namespace}"'}
        if request.carrier_id is not None:
            headers["X-Mblox-Carrier-Id"] = request.carrier_id
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        path = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        for attempt in (1, 2):  # a kept-alive connection the server closed is reopened once
            connection = self._open()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                return HttpReply(response.status, response.reason, response.getheaders(), response.read())
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _open(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self.url.hostname or "127.0.0.1", self.url.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Stamps:
    """Send times for requests sent in a burst, never two in one millisecond.

    The Date (or TimeStamp) is written to the millisecond, and a report that says the same
    as a stored one, Date included, is a resend (mm7soap/resend.py): reports posted in the
    same millisecond were stored once and acknowledged N times.  A stamp that would repeat the
    last one is moved on by a millisecond, so each is the time of sending, or just after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: datetime | None = None

    def next(self) -> datetime:
        now = utc_now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        with self._lock:
            if self._last is not None and now <= self._last:
                now = self._last + timedelta(milliseconds=1)
            self._last = now
            return now


def fresh(request: Request, number: int, sent_at: datetime) -> Request:
    """The request as the `number`th of a burst: a TransactionID and a Date of its own, so
    that it is a new request, not a resend of another."""
    return replace(request, transaction_id=f"{request.transaction_id}-{number}", sent_at=sent_at)

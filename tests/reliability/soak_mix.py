"""The soak test's mix of requests: each kind, how to build it, how to send it, and the
answer it must get."""

from __future__ import annotations

import http.client
import random
import socket
from dataclasses import dataclass

from lxml import etree

from mm7soap.namespaces import SOAP_ENV
from tests.helpers import find_local, template
from tests.reliability.service import NAMESPACE, Client

SEED = 20261127
REQUEST_TIMEOUT = 10.0  # Sinch gives up on an answer after 10 s

XML = "text/xml; charset=utf-8"
BOUNDARY = "soak-b0undary"
SWA = f'multipart/related; type="text/xml"; boundary="{BOUNDARY}"; start="<mm7-root>"'
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


@dataclass(frozen=True)
class Kind:
    """One sort of request in the mix and the answer it must get."""

    name: str
    weight: int  # per 100 requests
    http_status: int
    answer: str  # local name of the Body's child: the operation's Rsp, or Fault
    status_code: str

    @property
    def valid(self) -> bool:
        return self.answer != "Fault"


KINDS = (
    Kind("report", 62, 200, "DeliveryReportRsp", "1000"),
    Kind("read_reply", 8, 200, "ReadReplyRsp", "1000"),
    Kind("deliver", 6, 200, "DeliverRsp", "1000"),
    Kind("resend", 6, 200, "DeliveryReportRsp", "1000"),  # of an acknowledged report
    Kind("not_well_formed", 4, 500, "Fault", "4004"),
    Kind("missing_element", 4, 500, "Fault", "4004"),
    Kind("submit_req", 3, 500, "Fault", "4003"),
    Kind("foreign_namespace", 2, 500, "Fault", "4002"),
    Kind("garbage_body", 2, 500, "Fault", "4004"),
    Kind("wrong_method", 2, 405, "Fault", "4003"),  # GET /mm7 without ?wsdl
    Kind("garbage_http", 1, 400, "Fault", "4004"),  # an unparseable request line
)
KIND = {kind.name: kind for kind in KINDS}


@dataclass(frozen=True)
class Request:
    kind: Kind
    body: bytes = b""
    content_type: str = XML
    report: str | None = None  # TransactionID of a new delivery report


def mix(total: int) -> list[Kind]:
    """The kinds of the whole run, in order: seeded, so every run sends the same mix."""
    rng = random.Random(SEED)
    return rng.choices(KINDS, weights=[kind.weight for kind in KINDS], k=total)


def read_reply(index: int) -> bytes:
    return template(
        "read_reply_template.xml",
        namespace=NAMESPACE,
        version="6.8.0",
        transaction_id=f"soak-rr-{index}",
        message_id=f"mid-soak-rr-{index}",
        recipient_tag="Recipient",
        time_tag="TimeStamp",
        time_stamp="2026-11-27T10:00:00Z",
        status="Read",
    )


def deliver(index: int) -> bytes:
    """An MO as SOAP with Attachments: the envelope, then a small picture it names.  Its
    LinkedID makes it unique, so it is no resend of an earlier one."""
    children = (
        f"<MM7Version>6.8.0</MM7Version><LinkedID>soak-mo-{index}</LinkedID>"
        "<Sender><Number>15551230001</Number></Sender>"
        "<Recipients><To><ShortCode>24680</ShortCode></To></Recipients>"
        '<TimeStamp>2026-11-27T10:00:00Z</TimeStamp><Content href="cid:picture"/>'
    )
    envelope = template(
        "deliver_template.xml", namespace=NAMESPACE, transaction_id=f"soak-mo-{index}", children=children
    )
    parts = [
        b"Content-Type: text/xml; charset=utf-8\r\nContent-ID: <mm7-root>\r\n\r\n" + envelope,
        b"Content-Type: image/png\r\nContent-ID: <picture>\r\n\r\n" + PNG,
    ]
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def raw_exchange(port: int, payload: bytes) -> tuple[int, bytes]:
    """Bytes no HTTP client would send, on a connection of their own; the answer's status
    and body.  The service answers an unparseable request with `Connection: close`."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    fields = head.split(b" ", 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise http.client.BadStatusLine(head[:80].decode("latin-1"))
    return int(fields[1]), body


def send(client: Client, request: Request) -> tuple[int, bytes]:
    """The answer's HTTP status and body; OSError or HTTPException when none came."""
    if request.kind.name == "wrong_method":
        return client.get("/mm7")  # a connection of its own, closed after
    if request.kind.name == "garbage_http":
        return raw_exchange(client.port, b"\x16\x03\x01\x02\x00 not HTTP at all\r\n\r\n")
    answer = client.post(request.body, content_type=request.content_type)
    return answer.http_status, answer.body


def wrong_answer(request: Request, status: int, body: bytes) -> str | None:
    """Why the answer is not the one the request must get, or None when it is."""
    kind = request.kind
    try:
        root = etree.fromstring(body)
    except etree.XMLSyntaxError:
        return f"{kind.name}: HTTP {status}, not XML: {body[:200]!r}"
    child = find_local(root, "Body/*")
    if root.tag != f"{{{SOAP_ENV}}}Envelope" or child is None:
        return f"{kind.name}: HTTP {status}, not a SOAP 1.1 envelope: {body[:200]!r}"
    path = "detail/VASPErrorRsp/Status/StatusCode" if kind.answer == "Fault" else "Status/StatusCode"
    code = find_local(child, path)
    got = (status, etree.QName(child).localname, None if code is None else code.text)
    expected = (kind.http_status, kind.answer, kind.status_code)
    return None if got == expected else f"{kind.name}: expected {expected}, got {got}: {body[:300]!r}"

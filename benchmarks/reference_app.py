"""The yardstick: how fast Python can take a Sinch delivery report, with nothing but lxml and sqlite3.

A WSGI app that reads a DeliveryReportReq (a bare SOAP envelope, as Sinch sends it), stores
the same columns as mm7soap's `delivery_reports` with the same durability (WAL,
`synchronous=FULL`, one committed transaction per report), and answers 1000.  No MIME, no
validation, no resend detection: it only does what every report needs.  Database path:
`REFERENCE_DATABASE`.  Served by benchmarks/run.py with `gunicorn -c benchmarks/reference.conf.py`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

import sqlite_utils
from lxml import etree

from mm7soap.schema import REPORT_COLUMNS

log = logging.getLogger("reference_app")

DATABASE = os.environ.get("REFERENCE_DATABASE", "reference.db")
TABLE = "delivery_reports"

# The columns a DeliveryReportReq and its HTTP request fill; the others stay NULL.
FILLED = (
    "received_at",
    "message_id",
    "recipient",
    "recipient_kind",
    "sender",
    "sender_kind",
    "date_sent",
    "mm_status",
    "status_text",
    "transaction_id",
    "namespace",
    "mm7_version",
    "operator_id",
    "client_address",
    "raw_envelope",
)
# Fail at import, not per request, if mm7soap's schema no longer has one of them.
if not set(FILLED) <= set(REPORT_COLUMNS):
    raise RuntimeError(f"mm7soap's {TABLE} has no column {sorted(set(FILLED) - set(REPORT_COLUMNS))}")
INSERT = f"INSERT INTO {TABLE} ({', '.join(FILLED)}) VALUES ({', '.join(':' + c for c in FILLED)})"

RESPONSE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns="{namespace}">'
    '<env:Header><TransactionID env:mustUnderstand="1">{transaction_id}</TransactionID></env:Header>'
    "<env:Body><DeliveryReportRsp><MM7Version>{mm7_version}</MM7Version>"
    "<Status><StatusCode>1000</StatusCode><StatusText>Success</StatusText></Status>"
    "</DeliveryReportRsp></env:Body></env:Envelope>"
)
FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"><env:Body><env:Fault>'
    "<faultcode>env:Server</faultcode><faultstring>{reason}</faultstring>"
    "</env:Fault></env:Body></env:Envelope>"
)
ATTRIBUTE_ESCAPES = {'"': "&quot;"}

StartResponse = Callable[..., Any]


def create_table(path: str) -> None:
    """The table, once: each gunicorn worker imports this module, so take a file lock."""
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            sqlite_utils.Database(conn)[TABLE].create(REPORT_COLUMNS, pk="id", if_not_exists=True)
        finally:
            conn.close()


create_table(DATABASE)

# One connection and parser per thread; a connection is opened in the process that uses
# it (gunicorn forks workers), and lxml parsers are not to be shared between threads.
_local = threading.local()


def connection() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None or _local.pid != os.getpid():
        conn = sqlite3.connect(DATABASE, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # as mm7soap: a 1000 survives a power cut
        _local.conn, _local.pid = conn, os.getpid()
    return conn


def parser() -> etree.XMLParser:
    found: etree.XMLParser | None = getattr(_local, "parser", None)
    if found is None:
        # Hardened as mm7soap's: no entity expansion, no DTD, nothing fetched.
        found = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        _local.parser = found
    return found


def child(parent: etree._Element | None, name: str) -> etree._Element | None:
    """The first child element of `parent` with local name `name`, whatever its namespace."""
    if parent is None:
        return None
    for element in parent:
        if isinstance(element.tag, str) and etree.QName(element).localname == name:
            return element
    return None


def text(parent: etree._Element, name: str) -> str | None:
    element = child(parent, name)
    return None if element is None else element.text


def address(parent: etree._Element, name: str) -> tuple[str | None, str | None]:
    """(value, kind) of Recipient or Sender: its first child, e.g. <Number>."""
    holder = child(parent, name)
    first = None if holder is None else next((e for e in holder if isinstance(e.tag, str)), None)
    return (None, None) if first is None else (first.text, etree.QName(first).localname)


def report_row(body: bytes, environ: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The stored row of one DeliveryReportReq envelope, and its MM7 namespace URI;
    ValueError when it is not one."""
    envelope = etree.fromstring(body, parser())
    request = child(child(envelope, "Body"), "DeliveryReportReq")
    if request is None:
        raise ValueError("the Body holds no DeliveryReportReq")
    recipient, recipient_kind = address(request, "Recipient")
    sender, sender_kind = address(request, "Sender")
    transaction = child(child(envelope, "Header"), "TransactionID")
    namespace = etree.QName(request).namespace or ""
    row = {
        "received_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "message_id": text(request, "MessageID"),
        "recipient": recipient,
        "recipient_kind": recipient_kind,
        "sender": sender,
        "sender_kind": sender_kind,
        "date_sent": text(request, "Date"),
        "mm_status": text(request, "MMStatus"),
        "status_text": text(request, "StatusText"),
        "transaction_id": None if transaction is None else transaction.text,
        "namespace": namespace.rstrip("/").rsplit("/", 1)[-1],  # e.g. REL-6-MM7-1-4, as mm7soap stores it
        "mm7_version": text(request, "MM7Version"),
        "operator_id": environ.get("HTTP_X_MBLOX_CARRIER_ID"),
        "client_address": environ.get("REMOTE_ADDR"),
        "raw_envelope": body,
    }
    return row, namespace


def store(row: dict[str, Any]) -> None:
    """Commit the row before answering, exactly as mm7soap does."""
    conn = connection()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(INSERT, row)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def answer(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or "0")
    body = environ["wsgi.input"].read(length)
    row, namespace = report_row(body, environ)
    store(row)
    return RESPONSE.format(
        namespace=escape(namespace, ATTRIBUTE_ESCAPES),
        transaction_id=escape(row["transaction_id"] or ""),
        mm7_version=escape(row["mm7_version"] or ""),
    ).encode()


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    try:
        if environ.get("REQUEST_METHOD") != "POST":
            raise ValueError("POST a DeliveryReportReq")
        status, body = "200 OK", answer(environ)
    except Exception as exc:
        log.exception("request failed")
        status, body = "500 Internal Server Error", FAULT.format(reason=escape(f"{type(exc).__name__}: {exc}")).encode()
    start_response(status, [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]

"""Field-aware properties (issue 17): for every field of every operation an MMSC sends,
generated values (arbitrary text written with markup, CDATA, references, comments and white
space; date-like strings on and past every calendar and range limit; addresses of each
kind; repeated, nil and unknown elements, in any order) and three properties:

- never a 3000: nothing here makes storing fail, so every answer is a 1000 or a 4004;
- a 1000 means the stored row says what the request said, column by column, as computed
  here from the generated values (not from the service's own reading);
- a 4004 only for what cannot be understood: a mandatory field missing (or empty, or nil),
  one field given two different values, two addresses where MM7 allows one.

`MM7SOAP_PROPERTY_EXAMPLES` sets the examples per operation (150 by default).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp
from tests.backends import fresh_postgresql_database
from tests.conftest import need_postgresql
from tests.helpers import call

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XML_WHITESPACE = " \t\r\n"
EXAMPLES = int(os.environ.get("MM7SOAP_PROPERTY_EXAMPLES", "150"))
KINDS = ("RFC2822Address", "Number", "ShortCode")  # the order the stored JSON lists them in

# --- Values and how they are written --------------------------------------------------


def xml_char(c: str) -> bool:
    return c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"


CHARS = st.characters(codec="utf-8").filter(xml_char)
TEXT = st.one_of(
    st.text(CHARS, max_size=30),
    st.text(st.sampled_from(" \t\r\n<>&'\"]]>;#x0a@+-:/ÄÖü漢字"), max_size=20),
    st.sampled_from(["", " ", "\n", "x", "Retrieved", "  padded  ", "a]]>b", "&amp;", "<b>", "\xa0nbsp\xa0"]),
)


def escaped(text: str) -> str:
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("\r", "&#13;")  # a literal CR would be read as LF (XML end-of-line handling)


@st.composite
def written(draw: st.DrawFn, text: str) -> str:
    """`text` as element content, in pieces each written one way or another."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    out = []
    for piece in pieces:
        how = draw(st.sampled_from(["plain", "cdata", "markup", "references", "comment"]))
        if how == "cdata" and "]]>" not in piece and "\r" not in piece:
            out.append(f"<![CDATA[{piece}]]>")
        elif how == "markup":
            tag = draw(st.sampled_from(["b", "i", "span"]))
            out.append(f"<{tag}>{escaped(piece)}</{tag}>")
        elif how == "references":
            out.append("".join(f"&#{ord(c)};" if draw(st.booleans()) else escaped(c) for c in piece))
        elif how == "comment":
            out.append(f"<!-- c -->{escaped(piece)}<?pi x?>")
        else:
            out.append(escaped(piece))
    return "".join(out)


def trimmed(text: str) -> str:
    return text.strip(XML_WHITESPACE)


def attribute(text: str) -> str:
    """`text` as an attribute value: white space as references, since a parser folds it."""
    out = escaped(text).replace('"', "&quot;")
    return out.replace("\n", "&#10;").replace("\t", "&#9;")


# --- Dates, and when each names a UTC instant ------------------------------------------

YEARS = ["0000", "0001", "0004", "1900", "1969", "2000", "2024", "2026", "9999", "10000", "-0001", "02026"]
ZONES = ["", "Z", "+00:00", "-00:00", "+14:00", "-14:00", "+14:01", "+13:59", "+25:00", "+05:60", "-05:30", "+01:00"]
XS_DATETIME = re.compile(r"(-?)(\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", re.ASCII)


@st.composite
def date_like(draw: st.DrawFn) -> str:
    """Dates on and just past each limit, a third of them of plain valid parts, some not dates."""
    if draw(st.integers(0, 9)) == 0:
        return draw(TEXT)
    if draw(st.integers(0, 2)) == 0:
        year, month, day = draw(st.sampled_from(YEARS[1:9])), draw(st.integers(1, 12)), draw(st.integers(1, 28))
        hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    else:
        year = draw(st.sampled_from(YEARS))
        month, day = draw(st.integers(0, 13)), draw(st.sampled_from([0, 1, 28, 29, 30, 31, 32]))
        hour, minute = draw(st.sampled_from([0, 9, 23, 24, 25])), draw(st.sampled_from([0, 1, 59, 60]))
        second = draw(st.sampled_from([0, 1, 59, 60, 61]))
    fraction = draw(st.sampled_from(["", ".0", ".000", ".5", ".1234567"]))
    space, zone = draw(st.sampled_from(["", " ", "\n  "])), draw(st.sampled_from(ZONES))
    return f"{space}{year}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


def expected_utc(text: str) -> str | None:
    """The UTC instant of an xs:dateTime (XML Schema 1.0), by naive arithmetic; None for
    anything that names no instant a year between 1 and 9999 can hold."""
    match = XS_DATETIME.fullmatch(text)
    if match is None:
        return None
    minus, year, month, day, hour, minute, second, fraction, zone = match.groups()
    if minus or len(year) > 4 or int(year) == 0 or int(minute) > 59 or int(second) > 59:
        return None
    try:
        moment = datetime(int(year), int(month), int(day))
    except ValueError:
        return None
    micro = int(fraction[1:7].ljust(6, "0")) if fraction else 0
    if int(hour) == 24:
        if int(minute) or int(second) or (fraction and int(fraction[1:])):
            return None
        hours = timedelta(days=1)
    elif int(hour) > 23:
        return None
    else:
        hours = timedelta(hours=int(hour), minutes=int(minute), seconds=int(second), microseconds=micro)
    offset = timedelta(0)
    if zone and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_minutes > 59 or zone_hours * 60 + zone_minutes > 14 * 60:
            return None
        offset = timedelta(hours=zone_hours, minutes=zone_minutes) * (-1 if zone[0] == "-" else 1)
    try:
        return (moment + hours - offset).isoformat(timespec="microseconds") + "Z"
    except OverflowError:
        return None


# --- Fields and the request they make ---------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # text, address, date
    column: str
    mandatory: bool = False


@dataclass
class Plan:
    """The request being generated and what it must do."""

    children: list[str] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # why a 4004 is right


TEXT_NAMES = {"MMSRelayServerID": "mms_relay_server_id", "ApplicID": "applic_id", "ReplyApplicID": "reply_applic_id"}
TEXT_NAMES |= {"AuxApplicInfo": "aux_applic_info", "MM7Version": "mm7_version"}
REPORT_FIELDS = [
    Field("MessageID", "text", "message_id", mandatory=True),
    Field("MMStatus", "text", "mm_status", mandatory=True),
    Field("StatusText", "text", "status_text"),
    Field("Recipient", "address", "recipient", mandatory=True),
    Field("Sender", "address", "sender"),
    *[Field(name, "text", column) for name, column in TEXT_NAMES.items()],
]
DELIVERY_REPORT_FIELDS = [
    *REPORT_FIELDS,
    Field("Date", "date", "date"),
    Field("MMStatusExtension", "text", "mm_status_extension"),
]
READ_REPLY_FIELDS = [*REPORT_FIELDS, Field("TimeStamp", "date", "time_stamp")]
DELIVER_TEXT = {"LinkedID": "linked_id", "Subject": "subject", "Priority": "priority", "VASPID": "vasp_id"}
DELIVER_TEXT |= {"VASID": "vas_id", "SenderSPI": "sender_spi", "RecipientSPI": "recipient_spi"}
DELIVER_TEXT |= {"ReplyChargingID": "reply_charging_id"} | TEXT_NAMES
DELIVER_FIELDS = [
    Field("Sender", "address", "sender"),
    Field("TimeStamp", "date", "time_stamp"),
    Field("Recipients", "recipients", "recipients"),
    *[Field(name, "text", column) for name, column in DELIVER_TEXT.items()],
]
# How a field is written: mostly with a value, else absent, empty, nil, twice, or twice with a
# value drawn again (a 4004 when it differs).  A mandatory field is rarely anything but a value,
# or nearly every request would be refused.
HOW = ["value"] * 12 + ["absent"] * 3 + ["empty", "nil", "twice", "twice", "two values", "two values"]
HOW_MANDATORY = ["value"] * 40 + ["absent", "empty", "nil", "twice", "twice", "two values"]
UNKNOWN = ["<CalledNet>460</CalledNet>", "<MMSStatusErrorCode>0</MMSStatusErrorCode>", "<Vendor><X>1</X></Vendor>"]


@st.composite
def address_value(draw: st.DrawFn, kinds: tuple[str, ...] = (*KINDS, "bare")) -> tuple[str, str, str | None]:
    """(XML content of an address element, kind, value) of one address; value None if empty.
    Bare text is read whole, markup and all, as a Number unless it has an `@`."""
    kind = draw(st.sampled_from(kinds))
    text = draw(TEXT)
    value = trimmed(text) or None
    if kind == "bare":
        return draw(written(text)), ("RFC2822Address" if value and "@" in value else "Number"), value
    return f"<{kind}>{draw(written(text))}</{kind}>", kind, value


@st.composite
def field_value(draw: st.DrawFn, spec: Field) -> tuple[str, Any, Any]:
    """(the element's content, what it is stored as, what the service compares a repeat by)."""
    if spec.kind == "date":
        text = draw(date_like())
        stored: Any = (trimmed(text), expected_utc(trimmed(text)))
        return draw(written(text)), stored, stored
    if spec.kind == "address":
        content, kind, value = draw(address_value())
        while spec.mandatory and value is None:  # an empty one is drawn as `empty` below
            content, kind, value = draw(address_value())
        stored = (kind, value) if value is not None else None
        return content, stored, stored
    if spec.kind == "recipients":
        return draw(recipients())
    text = draw(TEXT.filter(lambda text: trimmed(text) != "") if spec.mandatory else TEXT)
    return draw(written(text)), trimmed(text), trimmed(text)


@st.composite
def recipients(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Addresses in `To`/`Cc`/`Bcc` lists or directly (then `To`).  Stored list by list, each
    grouped by kind as the schema's type holds them; compared list by list in document order."""
    places = st.sampled_from(["To", "Cc", "Bcc", "direct"])
    entries = draw(st.lists(st.tuples(places, address_value(KINDS)), max_size=4))
    content, found = [], []
    for position, (where, (xml, kind, value)) in enumerate(entries):
        content.append(xml if where == "direct" else f"<{where}>{xml}</{where}>")
        if value is not None:
            listed = "To" if where == "direct" else where
            found.append((["To", "Cc", "Bcc"].index(listed), KINDS.index(kind), position, (listed, kind, value)))
    stored = [entry for *_, entry in sorted(found)]
    compared = [entry for *_, entry in sorted(found, key=lambda item: (item[0], item[2]))]
    return "".join(content), stored, compared


@st.composite
def plan(draw: st.DrawFn, fields: list[Field]) -> Plan:
    out = Plan()
    for spec in fields:
        how = draw(st.sampled_from(HOW_MANDATORY if spec.mandatory else HOW))
        if how == "absent":
            stored = None
        elif how == "empty":
            out.children.append(f"<{spec.name}> <!-- nothing --> </{spec.name}>")
            stored = {"text": "", "date": ("", None)}.get(spec.kind)
        elif how == "nil":
            out.children.append(f'<{spec.name} xmlns:xsi="{XSI}" xsi:nil="true"/>')
            stored = None
        else:
            content, stored, compared = draw(field_value(spec))
            out.children.append(f"<{spec.name}>{content}</{spec.name}>")
            if how == "twice":
                out.children.append(f"<{spec.name}>{content}</{spec.name}>")
            elif how == "two values":
                again, _, compared_again = draw(field_value(spec))
                out.children.append(f"<{spec.name}>{again}</{spec.name}>")
                if compared_again != compared:
                    out.refused.append(f"different {spec.name} elements")
        empty = stored is None or stored == "" or (spec.kind == "recipients" and not stored)
        if spec.mandatory and empty:
            out.refused.append(f"has no {spec.name}")
        out.expected[spec.name] = stored
    out.children.extend(draw(st.lists(st.sampled_from(UNKNOWN), max_size=2)))
    out.children = draw(st.permutations(out.children))
    return out


def envelope(operation: str, children: list[str], transaction_id: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope xmlns:env="{SOAP_ENV}" xmlns="{REL6}">'
        f'<env:Header><TransactionID env:mustUnderstand="1">{transaction_id}</TransactionID></env:Header>'
        f"<env:Body><{operation}>{''.join(children)}</{operation}></env:Body></env:Envelope>"
    ).encode()


# --- The service, and the properties ----------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MM7WsgiApp]:
    """One app for all examples, on each engine in turn (the `database` fixture is one test's)."""
    if request.param == "sqlite":
        yield from serving(str(tmp_path_factory.mktemp("properties") / "mm7soap.db"))
        return
    with fresh_postgresql_database(request.getfixturevalue("postgresql_admin"), need_postgresql()) as url:
        yield from serving(url)


def serving(database: str) -> Iterator[MM7WsgiApp]:
    app = MM7WsgiApp(Settings(database=database, synchronous="OFF"))
    yield app
    app.store.close()


def empty_tables(app: MM7WsgiApp) -> None:
    for table in ("delivery_reports", "read_replies", "message_parts", "messages"):
        app.store.db.execute(f"DELETE FROM {table}")


def answered(app: MM7WsgiApp, operation: str, generated: Plan, transaction_id: Any) -> dict[str, Any] | None:
    """Posts the request; checks it is a 1000 or the right 4004; the stored row, if any."""
    tx_content, tx_value = transaction_id
    empty_tables(app)
    response = call(app, envelope(operation, generated.children, tx_content))
    code = response.text("Body/*/Status/StatusCode") or response.text(
        "Body/Fault/detail/VASPErrorRsp/Status/StatusCode"
    )
    assert code in ("1000", "4004"), response.body  # never a 3000: storing cannot fail here
    tables = {"DeliveryReportReq": "delivery_reports", "ReadReplyReq": "read_replies", "DeliverReq": "messages"}
    rows = list(app.store.db.query(f"SELECT * FROM {tables[operation]}"))
    if generated.refused:
        assert code == "4004", (generated.refused, response.body)
        details = response.text("Body/Fault/detail/VASPErrorRsp/Status/Details") or ""
        assert any(reason in details for reason in generated.refused), (generated.refused, details)
        assert rows == []
        return None
    assert code == "1000", response.body
    assert response.text("Header/TransactionID") == tx_value
    [row] = rows
    assert row["transaction_id"] == tx_value
    return row


def assert_stored(row: dict[str, Any], fields: list[Field], expected: dict[str, Any]) -> None:
    for spec in fields:
        value = expected[spec.name]
        if spec.kind == "text":
            assert row[spec.column] == value, spec.name
        elif spec.kind == "address":
            kind, address = value if value is not None else (None, None)
            assert (row[spec.column], row[f"{spec.column}_kind"]) == (address, kind), spec.name
        elif spec.kind == "date":
            sent, utc = value if value is not None else (None, None)
            assert (row[f"{spec.column}_sent"], row[f"{spec.column}_utc"]) == (sent, utc), spec.name
        else:
            stored = json.loads(row[spec.column]) if row[spec.column] else []
            assert [(r["list"], r["kind"], r["address"]) for r in stored] == (value or []), spec.name


TRANSACTION_ID = TEXT.filter(lambda text: trimmed(text) != "").flatmap(
    lambda text: written(text).map(lambda content: (content, trimmed(text)))
)
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(generated=plan(DELIVERY_REPORT_FIELDS), transaction_id=TRANSACTION_ID)
def test_delivery_report_fields(service, generated, transaction_id):
    row = answered(service, "DeliveryReportReq", generated, transaction_id)
    if row is not None:
        assert_stored(row, DELIVERY_REPORT_FIELDS, generated.expected)


@PROPERTY
@given(generated=plan(READ_REPLY_FIELDS), transaction_id=TRANSACTION_ID)
def test_read_reply_fields(service, generated, transaction_id):
    row = answered(service, "ReadReplyReq", generated, transaction_id)
    if row is not None:
        assert_stored(row, READ_REPLY_FIELDS, generated.expected)


@PROPERTY
@given(generated=plan(DELIVER_FIELDS), transaction_id=TRANSACTION_ID)
def test_deliver_fields(service, generated, transaction_id):
    row = answered(service, "DeliverReq", generated, transaction_id)
    if row is not None:
        assert_stored(row, DELIVER_FIELDS, generated.expected)


@PROPERTY
@given(text=date_like())
def test_the_date_oracle_agrees_with_the_service_on_its_own(text):
    """The service's reading of a date, alone: stored as sent, and in UTC exactly when it is
    an xs:dateTime with an instant (also checked through requests above)."""
    from mm7soap.times import utc_timestamp
    from mm7soap.xsdatetime import parse

    moment = parse(trimmed(text))
    assert (utc_timestamp(moment) if moment is not None else None) == expected_utc(trimmed(text))

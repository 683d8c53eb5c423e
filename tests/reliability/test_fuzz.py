"""Fuzz: whatever arrives, the answer is a SOAP 1.1 Envelope holding either the right
`*Rsp` with 1000 (and then the report is stored) or a Fault with VASPErrorRsp — never a
traceback, never anything else, never more than a second.  Valid envelopes of every
operation an MMSC sends, in every MIME shape (bare XML, Sinch's multipart without a
boundary, SOAP with attachments), are damaged the ways the field damages them.

300 examples by default; CI runs 20 000 (MM7SOAP_FUZZ_EXAMPLES=20000), and more is a flag:
MM7SOAP_FUZZ_EXAMPLES=100000 python -m pytest tests/reliability/test_fuzz.py
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from mm7soap.namespaces import MM7_NAMESPACES, SOAP12_ENV, SOAP_ENV
from tests.helpers import SINCH_CONTENT_TYPE, call, data, find_local, template

EXAMPLES = int(os.environ.get("MM7SOAP_FUZZ_EXAMPLES", "300"))
REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


def swa(envelope: bytes, newline: bytes = b"\r\n", content_id: bytes = b"<picture>") -> tuple[str, bytes]:
    body = newline.join(
        [
            b"preamble",
            b"--fz",
            b"Content-Type: text/xml; charset=utf-8",
            b"Content-ID: <root>",
            b"",
            envelope,
            b"--fz",
            b"Content-Type: image/gif",
            b"Content-ID: " + content_id,
            b"Content-Transfer-Encoding: binary",
            b"",
            b"GIF89a",
            b"--fz--",
            b"",
        ]
    )
    return 'multipart/related; type="text/xml"; boundary=fz; start="<root>"', body


MO = template("cli_deliver_template.xml", transaction_id="fz-mo", linked_id="fz-1", sender="15551230001", subject="fz")
BASES: list[tuple[str, bytes]] = [
    ("text/xml; charset=utf-8", data("sinch_delivery_report.xml")),
    (SINCH_CONTENT_TYPE, data("sinch_delivery_report.xml")),
    ("text/xml", data("korean_euc_kr.xml")),
    ("text/xml", data("chinese_gb2312.xml")),
    ("text/xml", data("vectorcore_style.xml")),
    ("text/xml", data("submit_req.xml")),
    swa(data("sinch_delivery_report.xml")),
    swa(data("korean_euc_kr.xml"), b"\n"),
    ("text/xml", data("cli_read_reply.xml")),
    (SINCH_CONTENT_TYPE, data("cli_read_reply.xml")),
    swa(data("cli_read_reply.xml")),
    (SINCH_CONTENT_TYPE, MO),
    swa(MO, content_id=b"default.cid"),
    swa(MO.replace(b'href="cid:default.cid"', b'mm7:href="cid: default.cid"'), b"\n"),
]
TAGS = [
    b"Envelope",
    b"Body",
    b"Header",
    b"DeliveryReportReq",
    b"ReadReplyReq",
    b"DeliverReq",
    b"SubmitReq",
    b"Content",
    b"href",
    b"MessageID",
    b"Recipient",
    b"Recipients",
    b"To",
    b"Number",
    b"MMStatus",
    b"TransactionID",
    b"Fault",
    b"Date",
    b"x:y",
    b"",
]
NAMESPACES = [ns.encode() for ns in MM7_NAMESPACES.values()] + [SOAP_ENV.encode(), SOAP12_ENV.encode(), b"urn:x", b""]
CHARSETS = [b"utf-8", b"UTF-16", b"euc-kr", b"GB2312", b"ISO-8859-1", b"utf-32", b"shift_jis", b"bogus-9", b""]
CONTENT_TYPES = [
    "text/xml",
    "application/soap+xml",
    "multipart/related",
    "multipart/related; boundary=",
    'multipart/related; boundary="fz"; start="<nowhere>"',
    "text/plain; charset=bogus",
    "",
    ";;;",
]


@st.composite
def mutation(draw, body: bytes, content_type: str) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "tag", "namespace", "charset", "mime", "ctype"]))
    at = draw(st.integers(0, max(len(body) - 1, 0)))
    if kind == "truncate":
        return content_type, body[:at]
    if kind == "flip":
        return content_type, body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    if kind == "insert":
        return content_type, body[:at] + draw(st.binary(max_size=20)) + body[at:]
    if kind == "tag":
        old, new = draw(st.sampled_from(TAGS[:-2])), draw(st.sampled_from(TAGS))
        return content_type, body.replace(old, new, draw(st.integers(1, 3)))
    if kind == "namespace":
        old = draw(st.sampled_from([SOAP_ENV.encode(), *[ns.encode() for ns in MM7_NAMESPACES.values()]]))
        return content_type, body.replace(old, draw(st.sampled_from(NAMESPACES)))
    if kind == "charset":
        label = draw(st.sampled_from(CHARSETS))
        if b"encoding=" in body[:100]:
            start = body.index(b"encoding=") + len(b'encoding="')
            end = body.find(body[start - 1 : start], start)
            return content_type, body[:start] + label + (body[end:] if end >= 0 else b"")
        return f"text/xml; charset={label.decode()}", b'<?xml version="1.0" encoding="' + label + b'"?>' + body
    if kind == "mime":
        damage = draw(st.sampled_from([b"--fz--", b"--fz", b"Content-ID: <root>", b"\r\n\r\n", b"\n\n"]))
        return content_type, body.replace(damage, draw(st.sampled_from([b"", b"--other", b"X", b"\r\n"])), 1)
    return draw(st.sampled_from(CONTENT_TYPES)), body


@st.composite
def damaged_requests(draw) -> tuple[str, bytes]:
    content_type, body = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 3))):
        content_type, body = draw(mutation(body, content_type))
    return content_type, body


# No deadline from hypothesis, which would re-run a slow example and call it flaky: the
# second is asserted on the request itself.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=damaged_requests())
def test_every_answer_is_an_mm7_answer(app, request):
    content_type, body = request
    started = time.monotonic()
    response = call(app, body, content_type=content_type)
    assert time.monotonic() - started < 1.0
    assert b"Traceback" not in response.body
    assert response.status in (200, 500)
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = etree.fromstring(response.body, etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == f"{{{SOAP_ENV}}}Envelope"
    first = find_local(root, "Body/*")
    assert first is not None
    name = etree.QName(first).localname
    if name == "Fault":
        assert response.status == 500
        code = find_local(first, "detail/VASPErrorRsp/Status/StatusCode")
        assert code is not None and code.text.isdigit() and code.text != "1000"
        # 3000 is the service's own failure (storage, or a bug turned into a fault): damaged
        # input is the client's, 2xxx or 4xxx.
        assert code.text != "3000", response.body
    else:
        assert response.status == 200
        assert find_local(first, "Status/StatusCode").text == "1000"
        echoed = find_local(root, "Header/TransactionID")
        assert stored(app, name, echoed.text if echoed is not None else None, body)


def stored(app, answer: str, transaction_id: str | None, body: bytes) -> bool:
    """A 1000 means stored now, or earlier under another TransactionID (a resend is stored once)."""
    if answer == "DeliverRsp":
        rows, key = list(app.store.messages()), "linked_id"
    elif answer in ("DeliveryReportRsp", "ReadReplyRsp"):
        rows = list(app.store.delivery_reports() if answer == "DeliveryReportRsp" else app.store.read_replies())
        key = "message_id"
    else:
        raise AssertionError(f"{answer} is not an MM7 answer to a request an MMSC sends")
    return any(row["transaction_id"] == transaction_id or (row[key] and row[key].encode() in body) for row in rows)

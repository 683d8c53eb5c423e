"""DeliverReq (MO): the answer, the stored message and its parts, byte-exact, once (spec.md §4.5, sinch.md §5)."""

from __future__ import annotations

import base64
import hashlib
import json
import quopri
import random
import re

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from mm7soap.settings import Settings
from tests.backends import fail_inserts_into
from tests.helpers import assert_fault, call, data, find_local, template
from tests.test_mime import multipart, part

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
ROOT = ["Content-Type: text/xml; charset=utf-8", "Content-ID: <mm7-root>"]
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\r\n\x00\xff\xfe--x\n\r" + bytes(range(256)) + b"\r\n\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\x00\r\n"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x02D\x01\x00;"
SMIL = b'<smil><body><par><img src="cid:pic"/><text src="cid:txt"/></par></body></smil>'
TEXT = b"Test MO message!\r\nSecond line"
GREETING = ("Grüße aus Köln, à bientôt – " * 5).encode()
PART_FIELDS = ("position", "content_type", "charset", "content_id", "content_location", "filename", "data")
BASE = (
    "<LinkedID>mo-1</LinkedID><Sender><Number>15551230001</Number></Sender>"
    "<Recipients><To><ShortCode>24680</ShortCode></To></Recipients>"
    '<TimeStamp>2026-11-27T10:00:00Z</TimeStamp><Content href="cid:x"/>'
)


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


def envelope(children: str = BASE, tx: str = "tx-1", ns: str = REL6, version: str = "6.8.0") -> bytes:
    return template(
        "deliver_template.xml",
        namespace=ns,
        transaction_id=tx,
        children=f"<MM7Version>{version}</MM7Version>{children}",
    )


def sinch_envelope(tx: str = "sinch-tx-1", linked_id: str = "sinch-mo-1") -> bytes:
    return template("deliver_sinch.xml", transaction_id=tx, linked_id=linked_id)


def post(app, parts: list[bytes], *, boundary="MM7-b0undary", start: str | None = '"<mm7-root>"', nl="\r\n", **kw):
    ctype = f'multipart/related; type="text/xml"; boundary="{boundary}"' + (f"; start={start}" if start else "")
    return call(app, multipart(parts, boundary, nl, kw.pop("preamble", b"")), content_type=ctype, **kw)


def with_picture(env: bytes) -> list[bytes]:
    return [part(ROOT, env), part(["Content-Type: image/png", "Content-ID: <x>"], PNG)]


def acked(response, namespace: str = REL6) -> None:
    assert response.status == 200, response.body
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    rsp = response.find("Body/DeliverRsp")
    assert rsp is not None and rsp.tag == f"{{{namespace}}}DeliverRsp", response.body
    assert response.text("Body/DeliverRsp/Status/StatusCode") == "1000"
    assert response.text("Body/DeliverRsp/Status/StatusText") == "Success"


def stored(app) -> list[tuple[dict, list[dict]]]:
    return [(row, app.store.message_parts(row["id"], with_data=True)) for row in app.store.messages()]


def only_message(app) -> tuple[dict, list[dict]]:
    [(row, parts)] = stored(app)
    assert row["part_count"] == len(parts)
    assert row["content_bytes"] == sum(p["size"] for p in parts)
    for p in parts:
        assert (p["size"], p["sha256"]) == (len(p["data"]), hashlib.sha256(p["data"]).hexdigest())
    return row, parts


def summary(parts: list[dict]) -> list[tuple]:
    return [tuple(p[name] for name in PART_FIELDS) for p in parts]


def counts(app) -> tuple[int, int]:
    db = app.store.db
    return tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("messages", "message_parts"))


# 1. Sinch's MO, end to end -----------------------------------------------------------------------------------------


def sinch_body(env: bytes, outer: str = "----=_Part_139078_1411587550", inner: str = "----=_Part_139079_1300104441"):
    """Sinch's MO body: the envelope, then a multipart/mixed content part of binary parts."""
    mixed = multipart(
        [
            part(
                [
                    "Content-Type: image/jpeg; name=IMG_0001.jpg",
                    "Content-Transfer-Encoding: binary",
                    "Content-ID: image_0.jpg",
                ],
                JPEG,
            ),
            part(
                ["Content-Type: text/plain", "Content-Transfer-Encoding: binary", "Content-ID: text_0.txt"],
                TEXT,
            ),
        ],
        boundary=inner,
    )
    content = part(
        [f'Content-Type: multipart/mixed;\r\n        boundary="{inner}"', "Content-ID: <default.cid>"], mixed
    )
    root = part(["Content-Type: text/xml", "Content-ID: <soap-start>"], env)
    ctype = f'multipart/related; start="soap-start"; type="text/xml";\r\n\tboundary="{outer}"'
    return multipart([root, content], boundary=outer), ctype


def test_sinch_mo_is_answered_and_stored_field_by_field_and_byte_exact(app):
    env = sinch_envelope()
    body, ctype = sinch_body(env)
    response = call(app, body, content_type=ctype, headers={"X-Mblox-Carrier-Id": "0001890"})
    acked(response)
    assert response.xml.tag == f"{{{SOAP_ENV}}}Envelope"
    tid = response.find("Header/TransactionID")
    assert (tid.tag, tid.text, tid.get(f"{{{SOAP_ENV}}}mustUnderstand")) == (
        f"{{{REL6}}}TransactionID",
        "sinch-tx-1",
        "1",
    )
    rsp = response.find("Body/DeliverRsp")
    assert [child.tag for child in rsp] == [f"{{{REL6}}}MM7Version", f"{{{REL6}}}Status"]  # no MessageID/ServiceCode
    assert response.text("Body/DeliverRsp/MM7Version") == "6.8.0"
    assert not list(response.xml.iter("{*}MessageID", "{*}ServiceCode"))

    row, parts = only_message(app)
    expected = {
        "linked_id": "sinch-mo-1",
        "sender": "15551230001",
        "sender_kind": "Number",
        "sender_display_only": None,
        "subject": "Holiday picture",
        "priority": "Normal",
        "time_stamp_sent": "2026-11-27T16:15:23.414Z",
        "time_stamp_utc": "2026-11-27T16:15:23.414000Z",
        "vasp_id": None,
        "vas_id": None,
        "mms_relay_server_id": None,
        "reply_charging_id": None,
        "previously_sent_by": None,
        "ua_prof": "http://uaprof.example.com/phone-x1.xml",
        "ua_timestamp": None,
        "content_href": "cid:default.cid",
        "allow_adaptations": 1,
        "content_found_by": "href",
        "part_count": 2,
        "content_bytes": len(JPEG) + len(TEXT),
        "transaction_id": "sinch-tx-1",
        "namespace": "REL-6-MM7-1-4",
        "mm7_version": "6.8.0",
        "operator_id": "0001890",
        "client_address": "192.0.2.10",
        "raw_envelope": env,
    }
    assert {name: row[name] for name in expected} == expected
    assert json.loads(row["recipients"]) == [
        {"list": "To", "kind": "ShortCode", "address": "24680", "display_only": False}
    ]
    assert re.fullmatch(r"[0-9a-f]{64}", row["fingerprint"])
    assert summary(parts) == [
        (1, "image/jpeg", None, "image_0.jpg", None, "IMG_0001.jpg", JPEG),
        (2, "text/plain", None, "text_0.txt", None, None, TEXT),
    ]
    assert [p["sha256"] for p in parts] == [
        hashlib.sha256(JPEG).hexdigest(),
        hashlib.sha256(TEXT).hexdigest(),
    ]
    assert app.store.message(row["id"])["id"] == row["id"]


# 2. What Content href names --------------------------------------------------------------------------------------

HREFS = [
    ('href="cid:x"', "x"),
    ('href="x"', "x"),
    ('href="cid: x"', "x"),
    ('href=" cid:x "', "x"),
    ('href="CID:x"', "x"),
    ('mm7:href="cid:x"', "x"),
    ('href="cid:pic%40host.example%2F1"', "pic@host.example/1"),
]
NAMINGS = ["Content-ID: <{}>", "Content-ID: {}", "Content-Location: {}"]


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize(("attribute", "name"), HREFS)
def test_href_names_one_part_and_only_that_part_is_stored(app, attribute, name, naming):
    env = envelope(BASE.replace('href="cid:x"', attribute))
    decoy = part(["Content-Type: text/plain", "Content-ID: <decoy>"], b"not the content")
    acked(post(app, [part(ROOT, env), decoy, part(["Content-Type: image/png", naming.format(name)], PNG)]))
    row, parts = only_message(app)
    assert (row["content_found_by"], row["content_href"]) == ("href", attribute.split('"')[1])
    by_id = naming.startswith("Content-ID")
    assert summary(parts) == [(1, "image/png", None, name if by_id else None, None if by_id else name, None, PNG)]


# 3. No href match, no attachments --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ['<Content href="cid:nowhere" allowAdaptations="false"/>', ""])
def test_href_naming_nothing_stores_every_non_soap_part(app, content):
    env = envelope(BASE.replace('<Content href="cid:x"/>', content))
    text = part(["Content-Type: text/plain; charset=utf-8", "Content-ID: <t>"], "héllo".encode())
    acked(post(app, [part(ROOT, env), part(["Content-Type: image/png", "Content-ID: <x1>"], PNG), text]))
    row, parts = only_message(app)
    assert row["content_found_by"] == "all-parts"
    assert (row["content_href"], row["allow_adaptations"]) == (("cid:nowhere", 0) if content else (None, None))
    assert summary(parts) == [
        (1, "image/png", None, "x1", None, None, PNG),
        (2, "text/plain", "utf-8", "t", None, None, "héllo".encode()),
    ]


def test_plain_text_xml_deliver_without_attachments(app):
    acked(call(app, envelope()))
    row, parts = only_message(app)
    assert (row["content_found_by"], row["part_count"], row["content_bytes"], parts) == ("none", 0, 0, [])
    assert row["content_href"] == "cid:x"


# 4. Nested multipart/related content and MIME framings ------------------------------------------------------------

FRAMINGS = {
    "start-in-angles-root-last": {"start": '"<mm7-root>"', "root_first": False},
    "start-bare-root-last": {"start": "mm7-root", "root_first": False},
    "no-start-root-first": {"start": None, "root_first": True},
    "bare-lf-preamble-tight-headers": {
        "start": '"<mm7-root>"',
        "root_first": False,
        "nl": "\n",
        "tight": True,
        "preamble": b"This is a multi-part message in MIME format.\n",
    },
}


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_nested_related_content_is_unpacked_and_decoded(app, framing):
    nl = framing.get("nl", "\r\n")

    def hdr(*lines: str) -> list[str]:
        return [line.replace(": ", ":", 1) for line in lines] if framing.get("tight") else list(lines)

    b64 = base64.encodebytes(GIF).replace(b"\n", nl.encode())
    qp = quopri.encodestring(GREETING).replace(b"\n", nl.encode())
    assert b"=" + nl.encode() in qp  # a soft line break to decode
    inner = multipart(
        [
            part(hdr("Content-Type: application/smil; charset=utf-8", "Content-ID: <smil>"), SMIL, nl),
            part(hdr("Content-Type: image/gif", "Content-ID: <pic>", "Content-Transfer-Encoding: BASE64"), b64, nl),
            part(
                hdr(
                    "Content-Type: text/plain; charset=utf-8",
                    "Content-Location: txt",
                    "Content-Transfer-Encoding: quoted-printable",
                ),
                qp,
                nl,
            ),
        ],
        boundary="inner-rel",
        nl=nl,
    )
    ctype = 'Content-Type: multipart/related; type="application/smil"; start="<smil>"; boundary="inner-rel"'
    content = part(hdr(ctype, "Content-ID: <mm-content>"), inner, nl)
    root = part(hdr(*ROOT), envelope(BASE.replace("cid:x", "cid:mm-content")), nl)
    parts = [root, content] if framing["root_first"] else [content, root]
    response = post(app, parts, start=framing["start"], nl=nl, preamble=framing.get("preamble", b""))
    acked(response)
    row, stored_parts = only_message(app)
    assert row["content_found_by"] == "href"
    assert summary(stored_parts) == [
        (1, "application/smil", "utf-8", "smil", None, None, SMIL),
        (2, "image/gif", None, "pic", None, None, GIF),
        (3, "text/plain", "utf-8", None, "txt", None, GREETING),
    ]


# 5. A large binary attachment ------------------------------------------------------------------------------------

BIG = random.Random(23140).randbytes(5 * 1024 * 1024)


@pytest.mark.parametrize("encoding", ["binary", "base64"])
def test_five_megabyte_attachment_is_stored_byte_exact(app, encoding):
    payload = BIG if encoding == "binary" else base64.encodebytes(BIG).replace(b"\n", b"\r\n")
    headers = ["Content-Type: video/mp4", "Content-ID: <x>", f"Content-Transfer-Encoding: {encoding}"]
    acked(post(app, [part(ROOT, envelope()), part(headers, payload)]))
    row, [stored_part] = only_message(app)
    assert (row["content_found_by"], row["content_bytes"]) == ("href", len(BIG))
    assert stored_part["size"] == len(BIG)
    assert stored_part["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert stored_part["data"] == BIG


# 6. Resends ------------------------------------------------------------------------------------------------------


def test_the_same_request_twice_is_stored_once(app):
    body, ctype = sinch_body(sinch_envelope())
    for _ in range(2):
        response = call(app, body, content_type=ctype)
        acked(response)
        assert response.text("Header/TransactionID") == "sinch-tx-1"
    assert counts(app) == (1, 2)


def test_a_resend_with_new_transaction_id_and_boundaries_is_stored_once(app):
    first = sinch_body(sinch_envelope(tx="tx-a"))
    again = sinch_body(sinch_envelope(tx="tx-b"), outer="other-outer-boundary", inner="other-inner-boundary")
    for (body, ctype), tx in ((first, "tx-a"), (again, "tx-b")):
        response = call(app, body, content_type=ctype)
        acked(response)
        assert response.text("Header/TransactionID") == tx
    assert counts(app) == (1, 2)
    assert only_message(app)[0]["transaction_id"] == "tx-a"


def test_different_content_under_the_same_linked_id_is_two_messages(app):
    for tx, picture in (("tx-1", PNG), ("tx-2", PNG + b"\x00")):
        acked(post(app, [part(ROOT, envelope(tx=tx)), part(["Content-Type: image/png", "Content-ID: <x>"], picture)]))
    rows = stored(app)
    assert [(row["linked_id"], row["transaction_id"]) for row, _ in rows] == [("mo-1", "tx-2"), ("mo-1", "tx-1")]
    assert [[p["data"] for p in parts] for _, parts in rows] == [[PNG + b"\x00"], [PNG]]


# 7. A store failure half-way through the parts -------------------------------------------------------------------


def test_a_failing_part_insert_leaves_nothing_and_the_resend_is_stored(app):
    body, ctype = sinch_body(sinch_envelope())
    with fail_inserts_into(app.store.db, "message_parts", when="NEW.position = 2"):
        response = call(app, body, content_type=ctype)
    assert_fault(response, "Server", 3000, REL6)
    assert response.text("Header/TransactionID") == "sinch-tx-1"
    assert counts(app) == (0, 0)
    acked(call(app, body, content_type=ctype))
    row, parts = only_message(app)
    assert (row["part_count"], [p["position"] for p in parts]) == (2, [1, 2])
    assert parts[0]["data"] == JPEG


# 8. Field variants -----------------------------------------------------------------------------------------------

NO_SENDER = BASE.replace("<Sender><Number>15551230001</Number></Sender>", "")
VARIANTS = {
    "bare-text-sender": (
        BASE.replace("<Number>15551230001</Number>", "13900000000"),
        {"sender": "13900000000", "sender_kind": "Number"},
    ),
    "to-cc-bcc": (
        NO_SENDER.replace(
            "<Recipients><To><ShortCode>24680</ShortCode></To></Recipients>",
            "<Recipients><To><Number>15551230002</Number><ShortCode>24680</ShortCode></To>"
            '<Cc><Number displayOnly="true">15551230003</Number></Cc>'
            "<Bcc><RFC2822Address>15551230004@mms.example.net</RFC2822Address></Bcc></Recipients>",
        ),
        {
            "recipients": [
                {"list": "To", "kind": "Number", "address": "15551230002"},
                {"list": "To", "kind": "ShortCode", "address": "24680"},
                {"list": "Cc", "kind": "Number", "address": "15551230003", "display_only": True},
                {"list": "Bcc", "kind": "RFC2822Address", "address": "15551230004@mms.example.net"},
            ]
        },
    ),
    "vasp-ids-directly": (
        "<VASID>svc-9</VASID><VASPID>vasp-7</VASPID>" + BASE,
        {"vasp_id": "vasp-7", "vas_id": "svc-9"},
    ),
    "vasp-ids-in-sender-identification": (
        "<SenderIdentification><VASPID>vasp-7</VASPID><VASID>svc-9</VASID></SenderIdentification>" + BASE,
        {"vasp_id": "vasp-7", "vas_id": "svc-9"},
    ),
    "relay-server-id-out-of-order": (
        "<Subject>late</Subject>" + BASE + "<MMSRelayServerID>mmsc.example.net</MMSRelayServerID>",
        {"mms_relay_server_id": "mmsc.example.net", "subject": "late"},
    ),
    "priority-outside-enumeration": (BASE + "<Priority>Medium</Priority>", {"priority": "Medium"}),
    "invalid-timestamp": (
        BASE.replace("2026-11-27T10:00:00Z", "2015-3-4T10:00:00+08:00"),
        {"time_stamp_sent": "2015-3-4T10:00:00+08:00", "time_stamp_utc": None},
    ),
    "timestamp-with-offset": (
        BASE.replace("2026-11-27T10:00:00Z", "2026-11-27T18:30:00+08:00"),
        {"time_stamp_sent": "2026-11-27T18:30:00+08:00", "time_stamp_utc": "2026-11-27T10:30:00.000000Z"},
    ),
    "no-sender": (NO_SENDER, {"sender": None, "sender_kind": None, "linked_id": "mo-1"}),
    "previously-sent-by": (
        BASE + '<Previouslysentby><UserAgent sequence="1"><Number>15551230005</Number></UserAgent>'
        '<UserAgent sequence="2"><RFC2822Address>friend@mms.example.net</RFC2822Address></UserAgent>'
        "</Previouslysentby>",
        {
            "previously_sent_by": [
                {"sequence": 1, "kind": "Number", "address": "15551230005"},
                {"sequence": 2, "kind": "RFC2822Address", "address": "friend@mms.example.net"},
            ]
        },
    ),
}


@pytest.mark.parametrize(("children", "expected"), VARIANTS.values(), ids=VARIANTS.keys())
def test_field_variants_are_stored_as_sent(app, children, expected):
    acked(post(app, with_picture(envelope(children))))
    row, parts = only_message(app)
    got = {
        name: json.loads(row[name]) if name in ("recipients", "previously_sent_by") else row[name] for name in expected
    }
    assert got == expected
    assert summary(parts) == [(1, "image/png", None, "x", None, None, PNG)]


def test_rel5_namespace_and_version_are_echoed(app):
    ns = MM7_NAMESPACES["REL-5-MM7-1-0"]
    response = post(app, with_picture(envelope(tx="rel5-1", ns=ns, version="5.2.0")))
    acked(response, ns)
    assert response.text("Body/DeliverRsp/MM7Version") == "5.2.0"
    assert response.find("Header/TransactionID").tag == f"{{{ns}}}TransactionID"
    assert {child.tag.split("}")[0][1:] for child in response.find("Body/DeliverRsp").iter()} == {ns}
    row, _ = only_message(app)
    assert (row["namespace"], row["mm7_version"], row["transaction_id"]) == ("REL-5-MM7-1-0", "5.2.0", "rel5-1")


def test_unqualified_children_under_a_namespaced_deliver_req(app):
    ns = MM7_NAMESPACES["REL-5-MM7-1-3"]
    response = post(app, with_picture(data("deliver_unqualified.xml")))
    acked(response, ns)
    assert (response.text("Header/TransactionID"), response.text("Body/DeliverRsp/MM7Version")) == ("unq-1", "5.3.0")
    row, parts = only_message(app)
    got = {k: row[k] for k in ("namespace", "linked_id", "sender", "subject", "content_found_by")}
    assert got == {
        "namespace": "REL-5-MM7-1-3",
        "linked_id": "unq-linked-1",
        "sender": "15551230007",
        "subject": "Unqualified",
        "content_found_by": "href",
    }
    assert json.loads(row["recipients"]) == [{"list": "To", "kind": "ShortCode", "address": "24680"}]
    assert [p["data"] for p in parts] == [PNG]


# 9. ServiceCode --------------------------------------------------------------------------------------------------


def test_service_code_follows_status(make_app):
    app = make_app(service_code="SVC-1")
    response = post(app, with_picture(envelope()))
    acked(response)
    rsp = response.find("Body/DeliverRsp")
    assert [child.tag for child in rsp] == [f"{{{REL6}}}{name}" for name in ("MM7Version", "Status", "ServiceCode")]
    assert find_local(rsp, "ServiceCode").text == "SVC-1"


# 10. A broken envelope -------------------------------------------------------------------------------------------


def test_not_well_formed_envelope_in_multipart_is_a_client_fault_and_nothing_stored(app):
    body, ctype = sinch_body(data("deliver_not_well_formed.xml"))
    assert_fault(call(app, body, content_type=ctype), "Client", 4004)
    assert counts(app) == (0, 0)

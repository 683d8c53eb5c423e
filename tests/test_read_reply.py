"""ReadReplyReq → stored in read_replies → ReadReplyRsp 1000, as REL-6 MMSCs and KT send it."""

from __future__ import annotations

import pytest
from lxml import etree

from mm7soap.namespaces import MM7_NAMES, MM7_NAMESPACES, SOAP_ENV
from mm7soap.settings import Settings
from tests.backends import fail_inserts_into
from tests.helpers import assert_fault, assert_xml_equal, call, data, template

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
REL5 = MM7_NAMESPACES["REL-5-MM7-1-0"]
KT_CONTENT_TYPE = "text/xml; charset=euc-kr"


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


def read_reply(**changes: str) -> bytes:
    """A `mm7:`-prefixed ReadReplyReq from the template, with some values changed."""
    values = {
        "namespace": REL6,
        "version": "6.8.0",
        "transaction_id": "rr-tx-1",
        "message_id": "rr-msg-1",
        "recipient_tag": "Recipient",
        "time_tag": "TimeStamp",
        "time_stamp": "2026-11-27T10:00:00Z",
        "status": "Read",
        **changes,
    }
    return template("read_reply_template.xml", **values)


def replies(app, message_id=None):
    return list(app.store.read_replies(message_id=message_id))


def status_code(response) -> str | None:
    return response.text("Body/ReadReplyRsp/Status/StatusCode")


# 1. A REL-6-MM7-1-4 ReadReplyReq, the MM7 namespace as the default namespace.


def test_rel6_read_reply_gets_the_expected_answer(app):
    response = call(app, data("read_reply_rel6.xml"), headers={"SOAPAction": '""'})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert_xml_equal(response.body, data("read_reply_rel6_answer.xml"))


def test_rel6_answer_element_by_element(app):
    response = call(app, data("read_reply_rel6.xml"))
    root = response.xml
    assert root.tag == f"{{{SOAP_ENV}}}Envelope"
    transaction = response.find("Header/TransactionID")
    assert transaction.tag == f"{{{REL6}}}TransactionID"
    assert transaction.text == "rr-20261127-0007"
    assert transaction.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"
    [rsp] = response.find("Body")
    assert rsp.tag == f"{{{REL6}}}ReadReplyRsp"
    assert [etree.QName(c).localname for c in rsp] == ["MM7Version", "Status"]
    assert response.text("Body/ReadReplyRsp/MM7Version") == "6.8.0"
    assert [etree.QName(c).localname for c in rsp.find(f"{{{REL6}}}Status")] == ["StatusCode", "StatusText"]
    assert status_code(response) == "1000"
    assert response.text("Body/ReadReplyRsp/Status/StatusText") == "Success"
    assert b"MessageID" not in response.body
    assert all(etree.QName(e).namespace in (SOAP_ENV, REL6) for e in root.iter())


def test_rel6_stored_row_field_by_field(app):
    raw = data("read_reply_rel6.xml")
    call(app, raw, headers={"X-Mblox-Carrier-Id": "0001890"})
    [row] = replies(app)
    expected = {
        "message_id": "481516234200000077",
        "recipient": "15551230001",
        "recipient_kind": "Number",
        "recipient_display_only": 0,
        "recipient_address_coding": None,
        "sender": "24680",
        "sender_kind": "ShortCode",
        "sender_display_only": None,
        "time_stamp_sent": "2026-11-27T09:20:01.500+01:00",
        "time_stamp_utc": "2026-11-27T08:20:01.500000Z",
        "mm_status": "Read",
        "status_text": "Message read by recipient",
        "mms_relay_server_id": "mmsc.example.net",
        "applic_id": "com.example.poll",
        "reply_applic_id": "com.example.poll.replies",
        "aux_applic_info": "campaign=42",
        "transaction_id": "rr-20261127-0007",
        "namespace": "REL-6-MM7-1-4",
        "mm7_version": "6.8.0",
        "operator_id": "0001890",
        "client_address": "192.0.2.10",
    }
    assert {k: row[k] for k in expected} == expected
    assert row["received_at"].endswith("Z")
    assert isinstance(row["raw_envelope"], bytes)
    assert row["raw_envelope"] == raw
    # A read reply is not a delivery report.
    assert list(app.store.delivery_reports()) == []


# 2. KT: euc-kr, REL-5-MM7-1-0, MM7Version 1.0, mm7:ReadReplyReq with unqualified children.


def test_kt_euc_kr_read_reply_is_answered_in_kind(app):
    response = call(app, data("read_reply_kt_euc_kr.xml"), content_type=KT_CONTENT_TYPE)
    assert response.status == 200
    transaction = response.find("Header/TransactionID")
    assert transaction.tag == f"{{{REL5}}}TransactionID"
    assert transaction.text == "kt-rr:2026:0042/192.0.2.77"
    assert transaction.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"
    assert response.find("Body/ReadReplyRsp").tag == f"{{{REL5}}}ReadReplyRsp"
    assert response.text("Body/ReadReplyRsp/MM7Version") == "1.0"
    assert status_code(response) == "1000"


def test_kt_euc_kr_read_reply_is_stored_decoded_and_as_sent(app):
    raw = data("read_reply_kt_euc_kr.xml")
    assert "메시지 읽음".encode("euc-kr") in raw  # the file really is euc-kr
    call(app, raw, content_type=KT_CONTENT_TYPE)
    [row] = replies(app)
    assert row["message_id"] == "KR_20261127_000456"
    assert (row["recipient"], row["recipient_kind"]) == ("15551230001", "Number")
    assert (row["sender"], row["sender_kind"]) == ("24680", "Number")
    assert row["mm_status"] == "1000"
    assert row["status_text"] == "메시지 읽음"
    assert row["time_stamp_sent"] == "2026-11-27T18:45:10+09:00"
    assert row["time_stamp_utc"] == "2026-11-27T09:45:10.000000Z"
    assert row["transaction_id"] == "kt-rr:2026:0042/192.0.2.77"
    assert (row["namespace"], row["mm7_version"]) == ("REL-5-MM7-1-0", "1.0")
    assert row["raw_envelope"] == raw


# 3. Read states, field aliases and dates.


@pytest.mark.parametrize("status", ["Read", "Deleted", "Indeterminate"])
def test_each_read_status_is_stored(app, status):
    response = call(app, read_reply(status=status))
    assert status_code(response) == "1000"
    [row] = replies(app)
    assert row["mm_status"] == status


def test_recipients_and_date_are_read_as_recipient_and_timestamp(app):
    body = read_reply(recipient_tag="Recipients", time_tag="Date", time_stamp="2026-11-27T10:00:00.25Z")
    response = call(app, body)
    assert status_code(response) == "1000"
    [row] = replies(app)
    assert (row["recipient"], row["recipient_kind"]) == ("15551230002", "Number")
    assert row["time_stamp_sent"] == "2026-11-27T10:00:00.25Z"
    assert row["time_stamp_utc"] == "2026-11-27T10:00:00.250000Z"


def test_bare_text_addresses_shuffled_order_and_unqualified_children(app):
    body = (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Header>'
        f'<mm7:TransactionID xmlns:mm7="{REL6}">bare-1</mm7:TransactionID></env:Header><env:Body>'
        f'<mm7:ReadReplyReq xmlns:mm7="{REL6}"><MMStatus>Deleted</MMStatus><Sender>24680</Sender>'
        "<Recipient> 15551230003 </Recipient><MessageID>bare-msg</MessageID><MM7Version>6.8.0</MM7Version>"
        "</mm7:ReadReplyReq></env:Body></env:Envelope>"
    ).encode()
    response = call(app, body)
    assert status_code(response) == "1000"
    [row] = replies(app)
    assert (row["message_id"], row["mm_status"]) == ("bare-msg", "Deleted")
    assert (row["recipient"], row["recipient_kind"]) == ("15551230003", "Number")
    assert (row["sender"], row["sender_kind"]) == ("24680", "Number")
    assert row["time_stamp_sent"] is None and row["time_stamp_utc"] is None


@pytest.mark.parametrize(
    ("sent", "utc"),
    [
        ("2026-11-7T09:14:39+08:00", None),  # not an xs:dateTime: kept, not normalised
        ("2026-11-27 10:00:00", None),
        ("2026-11-28T08:05:00+09:00", "2026-11-27T23:05:00.000000Z"),
        ("2026-11-27T10:00:00", "2026-11-27T10:00:00.000000Z"),  # no zone: UTC
    ],
)
def test_time_stamp_kept_as_sent_and_normalised_to_utc(app, sent, utc):
    response = call(app, read_reply(time_stamp=sent))
    assert status_code(response) == "1000"
    [row] = replies(app)
    assert (row["time_stamp_sent"], row["time_stamp_utc"]) == (sent, utc)


@pytest.mark.parametrize(("name", "version"), [("REL-6-MM7-1-4", "6.8.0"), ("REL-5-MM7-1-2", "5.3.0")])
def test_without_mm7_version_the_namespace_default_is_answered(app, name, version):
    body = read_reply(namespace=MM7_NAMESPACES[name], version="").replace(b"<mm7:MM7Version></mm7:MM7Version>", b"")
    response = call(app, body)
    assert response.text("Body/ReadReplyRsp/MM7Version") == version
    assert status_code(response) == "1000"
    assert len(replies(app)) == 1


# 4. Every MM7 namespace.


@pytest.mark.parametrize("name", MM7_NAMES)
def test_each_namespace_is_answered_in_kind(app, name):
    namespace = MM7_NAMESPACES[name]
    version = "5.3.0" if name.startswith("REL-5") else "6.3.0"
    response = call(app, read_reply(namespace=namespace, version=version, transaction_id=f"tx-{name}"))
    assert response.status == 200
    assert response.find("Body/ReadReplyRsp").tag == f"{{{namespace}}}ReadReplyRsp"
    assert response.find("Header/TransactionID").tag == f"{{{namespace}}}TransactionID"
    assert response.text("Header/TransactionID") == f"tx-{name}"
    assert response.text("Body/ReadReplyRsp/MM7Version") == version
    assert status_code(response) == "1000"
    assert all(etree.QName(e).namespace in (SOAP_ENV, namespace) for e in response.xml.iter())
    [row] = replies(app)
    assert (row["namespace"], row["mm7_version"], row["sender_kind"]) == (name, version, "ShortCode")


# 5. Resends are stored once; a new status, or a delivery report, is not a resend.


def test_resend_with_the_same_transaction_id_is_acknowledged_and_stored_once(app):
    first = call(app, read_reply())
    again = call(app, read_reply())
    assert first.status == again.status == 200
    assert status_code(first) == status_code(again) == "1000"
    assert len(replies(app)) == 1


def test_resend_with_a_new_transaction_id_but_same_content_is_stored_once(app):
    call(app, read_reply(transaction_id="rr-tx-1"))
    response = call(app, read_reply(transaction_id="rr-tx-retry"))
    assert status_code(response) == "1000"
    assert response.text("Header/TransactionID") == "rr-tx-retry"
    [row] = replies(app)
    assert row["transaction_id"] == "rr-tx-1"


def test_a_new_status_for_the_same_message_is_a_new_read_reply(app):
    assert status_code(call(app, read_reply(transaction_id="t-1", status="Read"))) == "1000"
    assert status_code(call(app, read_reply(transaction_id="t-2", status="Deleted"))) == "1000"
    assert [r["mm_status"] for r in replies(app, "rr-msg-1")] == ["Deleted", "Read"]


def test_delivery_report_and_read_reply_for_one_message_do_not_collide(app):
    report = template(
        "delivery_report_template.xml",
        namespace=REL6,
        version="6.8.0",
        transaction_id="shared-tx",
        message_id="shared-msg",
        status="Retrieved",
    )
    assert call(app, report).text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    response = call(app, read_reply(transaction_id="shared-tx", message_id="shared-msg"))
    assert status_code(response) == "1000"
    assert len(list(app.store.delivery_reports(message_id="shared-msg"))) == 1
    assert len(replies(app, "shared-msg")) == 1
    found = app.store.reports(message_id="shared-msg")
    assert [(r["kind"], r["mm_status"]) for r in found] == [("ReadReply", "Read"), ("DeliveryReport", "Retrieved")]
    assert found[0]["received_at"] >= found[1]["received_at"]
    assert [r["kind"] for r in app.store.reports(kinds=("ReadReply",), message_id="shared-msg")] == ["ReadReply"]
    assert [r["kind"] for r in app.store.reports(message_id="shared-msg", limit=1)] == ["ReadReply"]


# 6. Mandatory elements.

MISSING = {
    "MessageID": (b"<mm7:MessageID>rr-msg-1</mm7:MessageID>", b""),
    "blank MessageID": (b"<mm7:MessageID>rr-msg-1</mm7:MessageID>", b"<mm7:MessageID>  </mm7:MessageID>"),
    "Recipient": (b"<mm7:Recipient><mm7:Number>15551230002</mm7:Number></mm7:Recipient>", b""),
    "empty Recipient": (b"<mm7:Number>15551230002</mm7:Number>", b""),
    "MMStatus": (b"<mm7:MMStatus>Read</mm7:MMStatus>", b""),
    "blank MMStatus": (b"<mm7:MMStatus>Read</mm7:MMStatus>", b"<mm7:MMStatus/>"),
}


@pytest.mark.parametrize("case", list(MISSING))
def test_missing_mandatory_element_is_a_client_fault_4004_and_nothing_stored(app, case):
    old, new = MISSING[case]
    body = read_reply(transaction_id="rr-missing-1")
    assert old in body
    response = call(app, body.replace(old, new))
    assert_fault(response, "Client", 4004, REL6)
    assert response.find("Header/TransactionID").tag == f"{{{REL6}}}TransactionID"
    assert response.text("Header/TransactionID") == "rr-missing-1"
    assert replies(app) == []


# 7. A store failure is never acknowledged.


def test_store_failure_is_a_server_fault_3000_then_a_resend_is_stored_once(app):
    db = app.store.db
    with fail_inserts_into(db, "read_replies"):
        response = call(app, data("read_reply_rel6.xml"))
        assert not db.conn.in_transaction
    assert_fault(response, "Server", 3000, REL6)
    assert response.text("Header/TransactionID") == "rr-20261127-0007"
    assert replies(app) == []
    response = call(app, data("read_reply_rel6.xml"))
    assert status_code(response) == "1000"
    assert status_code(call(app, data("read_reply_rel6.xml"))) == "1000"
    assert len(replies(app)) == 1

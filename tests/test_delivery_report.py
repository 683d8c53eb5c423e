"""DeliveryReportReq → stored → DeliveryReportRsp 1000, as Sinch and others send it."""

from __future__ import annotations

import pytest
from lxml import etree

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from mm7soap.settings import Settings
from tests.helpers import SINCH_CONTENT_TYPE, assert_xml_equal, call, data, template

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    return backend_settings


def reports(app):
    return list(app.store.delivery_reports())


@pytest.mark.parametrize(
    "content_type",
    [SINCH_CONTENT_TYPE, "text/xml", 'text/xml; charset="utf-8"', "text/xml; charset=ISO-8859-1"],
)
def test_sinch_report_is_acknowledged_with_the_answer_sinch_expects(app, content_type):
    response = call(
        app,
        data("sinch_delivery_report.xml"),
        content_type=content_type,
        headers={"SOAPAction": f'"{REL6}"', "X-Mblox-Carrier-Id": "0001890"},
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert_xml_equal(response.body, data("sinch_delivery_report_answer.xml"))


def test_answer_element_by_element(app):
    response = call(app, data("sinch_delivery_report.xml"), content_type=SINCH_CONTENT_TYPE)
    root = response.xml
    transaction = response.find("Header/TransactionID")
    assert transaction.tag == f"{{{REL6}}}TransactionID"
    assert transaction.text == "tx-20261127-0042"
    assert transaction.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"
    rsp = response.find("Body/DeliveryReportRsp")
    assert rsp.tag == f"{{{REL6}}}DeliveryReportRsp"
    assert [etree.QName(c).localname for c in rsp] == ["MM7Version", "Status"]
    assert response.text("Body/DeliveryReportRsp/MM7Version") == "6.8.0"
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert b"MessageID" not in response.body
    assert all(etree.QName(e).namespace in (SOAP_ENV, REL6) for e in root.iter())


def test_stored_row_field_by_field(app):
    raw = data("sinch_delivery_report.xml")
    call(app, raw, content_type=SINCH_CONTENT_TYPE, headers={"X-Mblox-Carrier-Id": "0001890"})
    [row] = reports(app)
    expected = {
        "message_id": "481516234200000001",
        "recipient": "15551230001",
        "recipient_kind": "Number",
        "recipient_display_only": None,
        "sender": "24680",
        "sender_kind": "Number",
        "sender_display_only": 0,
        "date_sent": "2026-11-27T09:15:30.125+01:00",
        "date_utc": "2026-11-27T08:15:30.125000Z",
        "mm_status": "Retrieved",
        "mm_status_extension": None,
        "status_text": "Success",
        "mms_relay_server_id": None,
        "applic_id": None,
        "ua_prof": "Pixel Test Handset",
        "ua_timestamp": "2026-11-27T08:15:00Z",
        "transaction_id": "tx-20261127-0042",
        "namespace": "REL-6-MM7-1-4",
        "mm7_version": "6.8.0",
        "operator_id": "0001890",
        "client_address": "192.0.2.10",
        "raw_envelope": raw,
    }
    assert {k: row[k] for k in expected} == expected
    assert row["received_at"].endswith("Z")


@pytest.mark.parametrize("header", ["X-Mblox-Carrier-Id", "x-mblox-operator-id", "X-MBLOX-OPERATOR-ID"])
def test_operator_header_either_name_any_case_keeps_leading_zeros(app, header):
    call(app, data("sinch_delivery_report.xml"), headers={header: "0001470"})
    assert reports(app)[0]["operator_id"] == "0001470"


@pytest.mark.parametrize("name", list(MM7_NAMESPACES))
def test_each_namespace_is_answered_in_kind(app, name):
    namespace = MM7_NAMESPACES[name]
    version = "5.3.0" if name.startswith("REL-5") else "6.3.0"
    body = template(
        "delivery_report_template.xml",
        namespace=namespace,
        version=version,
        transaction_id=f"tx-{name}",
        message_id=f"msg-{name}",
        status="Retrieved",
    )
    response = call(app, body, headers={"SOAPAction": '""'})
    assert response.status == 200
    rsp = response.find("Body/DeliveryReportRsp")
    assert rsp.tag == f"{{{namespace}}}DeliveryReportRsp"
    assert response.text("Body/DeliveryReportRsp/MM7Version") == version
    assert response.find("Header/TransactionID").tag == f"{{{namespace}}}TransactionID"
    assert response.text("Header/TransactionID") == f"tx-{name}"
    [row] = reports(app)
    assert (row["namespace"], row["sender_kind"], row["sender"]) == (name, "ShortCode", "24680")


@pytest.mark.parametrize("soap_action", [None, '""', "anything", f'"{REL6}"'])
@pytest.mark.parametrize("path", ["/mm7", "/", "/mm7/"])
def test_soap_action_is_ignored_and_both_paths_work(app, soap_action, path):
    headers = {} if soap_action is None else {"SOAPAction": soap_action}
    response = call(app, data("sinch_delivery_report.xml"), path=path, headers=headers)
    assert response.status == 200
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"


def test_soap_with_attachments_root_named_by_start_and_not_first(app):
    boundary = "part-boundary-42"
    envelope = data("sinch_delivery_report.xml")
    body = (
        (
            f"--{boundary}\r\nContent-Type: text/plain\r\nContent-ID: <note>\r\n\r\nnot the envelope\r\n"
            f"--{boundary}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-ID: <soap-root>\r\n\r\n"
        ).encode()
        + envelope
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="text/xml"; boundary="{boundary}"; start="<soap-root>"'
    response = call(app, body, content_type=content_type)
    assert response.status == 200
    assert reports(app)[0]["raw_envelope"].strip() == envelope.strip()


def test_soap_with_attachments_without_start_takes_the_first_part(app):
    envelope = data("sinch_delivery_report.xml")
    body = (
        b"--b1\r\nContent-Type: text/xml\r\n\r\n"
        + envelope
        + b"\r\n--b1\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--b1--\r\n"
    )
    response = call(app, body, content_type='multipart/related; type="text/xml"; boundary=b1')
    assert response.status == 200
    assert len(reports(app)) == 1


def test_resend_with_same_transaction_id_is_acknowledged_and_stored_once(app):
    first = call(app, data("sinch_delivery_report.xml"))
    again = call(app, data("sinch_delivery_report.xml"))
    assert first.status == again.status == 200
    assert again.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert len(reports(app)) == 1


def test_resend_with_new_transaction_id_but_same_content_is_stored_once(app):
    body = data("sinch_delivery_report.xml")
    call(app, body)
    response = call(app, body.replace(b"tx-20261127-0042", b"tx-retry-0001"))
    assert response.status == 200
    assert response.text("Header/TransactionID") == "tx-retry-0001"
    assert len(reports(app)) == 1


def test_a_later_status_for_the_same_message_is_a_new_report(app):
    ns = MM7_NAMESPACES["REL-6-MM7-1-4"]
    for tid, status in (("tx-1", "Forwarded"), ("tx-2", "Retrieved")):
        body = template(
            "delivery_report_template.xml",
            namespace=ns,
            version="6.8.0",
            transaction_id=tid,
            message_id="m-1",
            status=status,
        )
        assert call(app, body).status == 200
    assert [r["mm_status"] for r in app.store.delivery_reports(message_id="m-1")] == ["Retrieved", "Forwarded"]


@pytest.mark.parametrize("status", ["NotSupported", "Unreachable", "Unrecognized", "Delivered", "1000"])
def test_non_3gpp_mm_status_is_stored_as_sent(app, status):
    body = template(
        "delivery_report_template.xml",
        namespace=REL6,
        version="6.8.0",
        transaction_id="t",
        message_id="m",
        status=status,
    )
    response = call(app, body)
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert reports(app)[0]["mm_status"] == status


def test_korean_euc_kr_report_with_unqualified_children(app):
    response = call(app, data("korean_euc_kr.xml"), content_type="text/xml; charset=euc-kr")
    assert response.status == 200
    assert response.text("Header/TransactionID") == "kt-77:2026:0001"
    assert response.text("Body/DeliveryReportRsp/MM7Version") == "1.0"
    [row] = reports(app)
    assert row["recipient"] == "01012345678"
    assert row["date_sent"] == "2026-11-27T18:30:00+09:00"
    assert row["date_utc"] == "2026-11-27T09:30:00.000000Z"
    assert row["mm_status"] == "1000"
    assert row["status_text"] == "수신 완료"
    assert row["namespace"] == "REL-5-MM7-1-0"


def test_chinese_report_bare_sender_shuffled_order_invalid_date(app):
    response = call(app, data("chinese_gb2312.xml"))
    assert response.status == 200
    [row] = reports(app)
    assert (row["sender"], row["sender_kind"]) == ("1065500099", "Number")
    assert row["message_id"] == "CN-MSG-0001"
    assert row["mms_relay_server_id"] == "990001"
    assert row["date_sent"] == "2026-11-7T09:14:39+08:00"
    assert row["date_utc"] is None
    assert row["mm_status"] == "Third:User Retrieved"
    assert row["status_text"] == "已接收"
    assert b"MMSStatusErrorCode" in row["raw_envelope"]


def test_recipient_wrapping_to_with_rfc2822_address_and_no_sender_or_date(app):
    response = call(app, data("vectorcore_style.xml"))
    assert response.status == 200
    # The TransactionID came in another namespace; the answer is in the body's.
    assert response.find("Header/TransactionID").tag == f"{{{REL6}}}TransactionID"
    assert response.text("Header/TransactionID") == "vc-0001"
    [row] = reports(app)
    assert (row["recipient"], row["recipient_kind"]) == ("+15551230003/TYPE=PLMN@mms.example.net", "RFC2822Address")
    assert row["sender"] is None and row["date_sent"] is None
    assert row["mm_status"] == "Unrecognized"


@pytest.mark.parametrize(("name", "version"), [("REL-6-MM7-1-4", "6.8.0"), ("REL-5-MM7-1-2", "5.3.0")])
def test_a_request_without_mm7_version_is_answered_with_the_namespace_default(app, name, version):
    body = template(
        "delivery_report_template.xml",
        namespace=MM7_NAMESPACES[name],
        version="",
        transaction_id="t",
        message_id="m",
        status="Retrieved",
    ).replace(b"<mm7:MM7Version></mm7:MM7Version>", b"")
    response = call(app, body)
    assert response.status == 200
    assert response.text("Body/DeliveryReportRsp/MM7Version") == version

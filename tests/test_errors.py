"""Every request that cannot be served gets a SOAP 1.1 Fault with VASPErrorRsp."""

from __future__ import annotations

import pytest

from mm7soap.namespaces import MM7_NAMESPACES
from tests.helpers import SINCH_CONTENT_TYPE, assert_fault, call, data, find_local

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


def test_not_well_formed_xml_is_a_client_fault_4004(app):
    response = call(app, data("not_well_formed.xml"), content_type=SINCH_CONTENT_TYPE)
    error = assert_fault(response, "Client", 4004, REL6)
    assert "not well-formed" in find_local(error, "Status/Details").text
    assert list(app.store.delivery_reports()) == []


@pytest.mark.parametrize("body", [b"", b"   \r\n", b"hello", b"<a>unclosed"])
def test_empty_or_non_xml_body_is_a_client_fault_4004(app, body):
    assert_fault(call(app, body), "Client", 4004, REL6)


def test_broken_xml_with_a_charset_label_lxml_refuses_is_a_client_fault_4004(app):
    """Found by the fuzzer: a control character in the HTTP charset label made the parser's
    fallback raise ValueError, answered as the service's own failure (3000)."""
    response = call(app, b"not xml at all", content_type="text/xml; charset=\x00tf-8")
    assert_fault(response, "Client", 4004)


def test_xml_that_is_not_a_soap_envelope_is_a_client_fault_4004(app):
    response = call(app, b"<DeliveryReportReq><MessageID>1</MessageID></DeliveryReportReq>")
    assert_fault(response, "Client", 4004)


def test_missing_message_id_names_it_and_echoes_transaction_id(app):
    response = call(app, data("missing_message_id.xml"))
    namespace = MM7_NAMESPACES["REL-5-MM7-1-3"]
    error = assert_fault(response, "Client", 4004, namespace)
    assert "MessageID" in find_local(error, "Status/Details").text
    assert find_local(error, "MM7Version").text == "5.3.0"
    assert response.text("Header/TransactionID") == "tx-missing"
    assert list(app.store.delivery_reports()) == []


@pytest.mark.parametrize("element", ["Recipient", "MMStatus"])
def test_missing_recipient_or_status_is_4004_naming_it(app, element):
    body = data("missing_message_id.xml").replace(b"<MM7Version>", b"<MessageID>m</MessageID><MM7Version>")
    start, end = body.index(f"<{element}>".encode()), body.index(f"</{element}>".encode())
    body = body[:start] + body[end + len(f"</{element}>") :]
    error = assert_fault(call(app, body), "Client", 4004)
    assert element in find_local(error, "Status/Details").text


def test_unserved_operation_is_a_client_fault_4003(app):
    response = call(app, data("submit_req.xml"))
    error = assert_fault(response, "Client", 4003, REL6)
    assert "SubmitReq" in find_local(error, "Status/Details").text
    assert response.text("Header/TransactionID") == "tx-submit"


def test_body_in_a_foreign_namespace_is_a_client_fault_4002(app):
    assert_fault(call(app, data("foreign_namespace.xml")), "Client", 4002, REL6)


def test_faults_can_be_answered_with_http_200(make_app):
    app = make_app(fault_http_status=200)
    response = call(app, data("submit_req.xml"))
    assert response.status == 200
    assert response.find("Body/Fault") is not None


def test_unexpected_exception_is_a_server_fault_3000_without_traceback(app, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.store, "save_delivery_report", explode)
    response = call(app, data("sinch_delivery_report.xml"))
    assert_fault(response, "Server", 3000, REL6)
    assert b"secret internal detail" not in response.body
    assert b"Traceback" not in response.body
    assert "secret internal detail" in caplog.text


def test_get_without_wsdl_is_405_with_allow(app):
    response = call(app, method="GET")
    assert response.status == 405
    assert response.headers["Allow"] == "POST, GET"
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert response.find("Body/Fault") is not None


def test_unknown_path_is_404_in_soap(app):
    response = call(app, data("sinch_delivery_report.xml"), path="/elsewhere")
    assert response.status == 404
    assert response.find("Body/Fault") is not None
    assert list(app.store.delivery_reports()) == []

"""Every request that cannot be served gets a SOAP 1.1 Fault with VASPErrorRsp."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from tests.helpers import SINCH_CONTENT_TYPE, assert_fault, call, data, find_local, template

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
REL5 = MM7_NAMESPACES["REL-5-MM7-1-2"]


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


# --- what a Fault echoes of the request: namespace, MM7Version, TransactionID ---------------

# Each request's MM7Version differs from its namespace's default (6.8.0 for REL-6-MM7-1-4,
# 5.3.0 for the others), and REL-5-MM7-1-2 is not the namespace answered when none is read.
REQUESTS_IN_KIND = pytest.mark.parametrize(
    "namespace, version", [(REL5, "5.2.0"), (REL6, "6.5.0")], ids=["REL-5-MM7-1-2", "REL-6-MM7-1-4"]
)


def report_in(namespace: str, version: str, transaction_id: str) -> bytes:
    return template(
        "delivery_report_template.xml",
        namespace=namespace,
        version=version,
        transaction_id=transaction_id,
        message_id="msg-in-kind",
        status="Retrieved",
    )


def assert_answered_in_kind(response, faultcode: str, status_code: int, namespace: str, version: str, tx: str) -> None:
    """The Fault's VASPErrorRsp is in the request's namespace with its MM7Version, and its
    TransactionID is echoed in that namespace with env:mustUnderstand="1"."""
    error = assert_fault(response, faultcode, status_code, namespace)
    assert find_local(error, "MM7Version").text == version
    transaction = response.find("Header/TransactionID")
    assert transaction is not None
    assert transaction.tag == f"{{{namespace}}}TransactionID"
    assert transaction.text == tx
    assert transaction.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"


@REQUESTS_IN_KIND
def test_a_4004_fault_is_answered_in_the_requests_namespace_version_and_transaction(app, namespace, version):
    body = report_in(namespace, version, "tx-no-status")
    start, end = body.index(b"<mm7:MMStatus>"), body.index(b"</mm7:MMStatus>") + len(b"</mm7:MMStatus>")
    response = call(app, body[:start] + body[end:])
    assert_answered_in_kind(response, "Client", 4004, namespace, version, "tx-no-status")
    assert "MMStatus" in response.text("Body/Fault/detail/VASPErrorRsp/Status/Details")
    assert list(app.store.delivery_reports()) == []


@contextmanager
def store_refuses(app, monkeypatch):
    app.store.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON delivery_reports BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    yield


@contextmanager
def database_locked(app, monkeypatch):
    blocker = sqlite3.connect(app.settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@contextmanager
def service_explodes(app, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.store, "save_delivery_report", explode)
    yield


@pytest.mark.parametrize(
    "failure, details",
    [(store_refuses, "disk full"), (database_locked, "database is locked"), (service_explodes, "")],
    ids=["store-refuses", "database-locked", "unexpected-exception"],
)
@REQUESTS_IN_KIND
def test_a_3000_fault_after_reading_is_answered_in_the_requests_namespace_version_and_transaction(
    app, monkeypatch, failure, details, namespace, version
):
    with failure(app, monkeypatch):
        response = call(app, report_in(namespace, version, "tx-store-fails"))
    assert_answered_in_kind(response, "Server", 3000, namespace, version, "tx-store-fails")
    assert details in response.text("Body/Fault/detail/VASPErrorRsp/Status/Details")
    assert b"secret internal detail" not in response.body
    assert list(app.store.delivery_reports()) == []

"""SOAP 1.1 processing rules: mustUnderstand, VersionMismatch, Body presence."""

from __future__ import annotations

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP12_ENV, SOAP_ENV
from tests.helpers import assert_fault, call, find_local

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
BODY = (
    f'<env:Body><DeliveryReportReq xmlns="{REL6}"><MM7Version>6.8.0</MM7Version><MessageID>mu</MessageID>'
    "<Recipient><Number>1</Number></Recipient><MMStatus>Retrieved</MMStatus></DeliveryReportReq></env:Body>"
)


def with_header(extra: str) -> bytes:
    return (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Header>'
        f'<TransactionID xmlns="{REL6}" env:mustUnderstand="1">mu-tx</TransactionID>{extra}</env:Header>'
        f"{BODY}</env:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    "attributes",
    ['env:mustUnderstand="1"', 'env:mustUnderstand="true"', f'env:mustUnderstand="1" env:actor="{NEXT}"'],
)
def test_unknown_header_that_must_be_understood_is_a_must_understand_fault(app, attributes):
    response = call(app, with_header(f'<s:Session xmlns:s="urn:example:session" {attributes}>42</s:Session>'))
    error = assert_fault(response, "MustUnderstand", 4004, REL6)
    assert "Session" in find_local(error, "Status/Details").text
    assert response.text("Header/TransactionID") == "mu-tx"
    assert list(app.store.delivery_reports()) == []


@pytest.mark.parametrize(
    "attributes",
    ['env:mustUnderstand="0"', "", 'env:mustUnderstand="1" env:actor="urn:example:someone-else"'],
)
def test_header_that_need_not_be_understood_is_ignored(app, attributes):
    response = call(app, with_header(f'<s:Session xmlns:s="urn:example:session" {attributes}>42</s:Session>'))
    assert response.status == 200
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"


def test_soap_12_envelope_is_a_version_mismatch_fault(app):
    body = with_header("").replace(SOAP_ENV.encode(), SOAP12_ENV.encode())
    assert_fault(call(app, body), "VersionMismatch", 4004)


REL5 = MM7_NAMESPACES["REL-5-MM7-1-0"]
HEADER = f'<env:Header><TransactionID xmlns="{REL5}">no-body</TransactionID></env:Header>'


def test_envelope_without_body_is_a_client_fault_in_the_transaction_id_namespace(app):
    body = f'<env:Envelope xmlns:env="{SOAP_ENV}">{HEADER}</env:Envelope>'.encode()
    response = call(app, body)
    assert_fault(response, "Client", 4004, REL5)
    assert response.text("Header/TransactionID") == "no-body"


def test_empty_body_is_a_client_fault_in_the_transaction_id_namespace(app):
    body = f'<env:Envelope xmlns:env="{SOAP_ENV}">{HEADER}<env:Body>  </env:Body></env:Envelope>'.encode()
    response = call(app, body)
    assert_fault(response, "Client", 4004, REL5)
    assert response.text("Header/TransactionID") == "no-body"


@pytest.mark.parametrize("operation", ["SubmitReq", "CancelReq", "ReplaceReq", "SomethingElseReq"])
def test_operations_not_served_are_4003_in_the_request_namespace(app, operation):
    ns = MM7_NAMESPACES["REL-5-MM7-1-2"]
    body = (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Header><TransactionID xmlns="{ns}">op</TransactionID>'
        f'</env:Header><env:Body><{operation} xmlns="{ns}"><MM7Version>5.3.0</MM7Version></{operation}>'
        "</env:Body></env:Envelope>"
    ).encode()
    response = call(app, body)
    error = assert_fault(response, "Client", 4003, ns)
    assert find_local(error, "MM7Version").text == "5.3.0"
    assert response.text("Header/TransactionID") == "op"

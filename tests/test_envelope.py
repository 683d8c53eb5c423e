"""Reading envelopes leniently, by local name, into the canonical MM7 form."""

from __future__ import annotations

import pytest
from lxml import etree

from mm7soap import envelope, errors
from mm7soap.namespaces import MM7_NAMESPACES
from tests.helpers import data

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]


def canonical_names(read: envelope.ReadEnvelope) -> list[str]:
    [operation] = read.document.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    return [etree.QName(child).localname for child in operation]


def test_shuffled_and_renamed_children_come_out_in_schema_order():
    read = envelope.read(data("chinese_gb2312.xml"))
    assert canonical_names(read) == [
        "MM7Version",
        "MMSRelayServerID",
        "MessageID",
        "Recipient",
        "Sender",
        "MMStatus",
        "StatusText",
    ]
    assert read.as_sent["Date"] == "2026-11-7T09:14:39+08:00"
    assert read.namespace == MM7_NAMESPACES["REL-5-MM7-1-2"]


def test_transaction_id_is_trimmed():
    assert envelope.read(data("korean_euc_kr.xml")).transaction_id == "kt-77:2026:0001"


def test_utf8_bytes_labelled_utf16_are_read_as_utf8():
    body = data("sinch_delivery_report.xml").replace(b'encoding="UTF-8"', b'encoding="utf-16"')
    body = body.replace(b"<StatusText>Success", "<StatusText>Entregado ✓".encode())
    read = envelope.read(body)
    assert read.document.findtext(f".//{{{REL6}}}StatusText") == "Entregado ✓"


def test_utf8_bom_is_accepted():
    read = envelope.read(b"\xef\xbb\xbf" + data("sinch_delivery_report.xml"))
    assert read.transaction_id == "tx-20261127-0042"


def test_a_dtd_is_refused():
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]>' + data("sinch_delivery_report.xml").split(b"?>", 1)[1]
    )
    with pytest.raises(errors.ValidationError, match="DTD"):
        envelope.read(body)


def test_soap_12_envelope_is_refused():
    body = data("sinch_delivery_report.xml").replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    )
    with pytest.raises(errors.ValidationError, match=r"SOAP 1\.2"):
        envelope.read(body)


def test_empty_body_is_refused():
    body = b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>'
    with pytest.raises(errors.ValidationError, match="empty"):
        envelope.read(body)


def test_reply_reads_namespace_version_and_transaction_id_of_an_unserved_request():
    reply = envelope.read_reply(data("submit_req.xml"))
    assert (reply.namespace, reply.mm7_version, reply.transaction_id) == (REL6, "6.8.0", "tx-submit")


def test_raw_text_decodes_in_the_declared_charset():
    assert "수신 완료" in envelope.raw_text(data("korean_euc_kr.xml"))

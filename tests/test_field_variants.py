"""What real MMSCs send (spec.md §7): each variant is accepted and stored correctly."""

from __future__ import annotations

import pytest

from mm7soap.namespaces import MM7_NAMESPACES, SOAP_ENV
from tests.helpers import call, data

REL6 = MM7_NAMESPACES["REL-6-MM7-1-4"]
REL5 = MM7_NAMESPACES["REL-5-MM7-1-3"]

REPORT_CHILDREN = (
    "<{p}MM7Version>6.8.0</{p}MM7Version><{p}MessageID>var-1</{p}MessageID>"
    "<{p}Recipient><{p}Number>15551230010</{p}Number></{p}Recipient>"
    "<{p}Sender><{p}Number>24680</{p}Number></{p}Sender>"
    "<{p}Date>2026-11-27T10:00:00Z</{p}Date><{p}MMStatus>Retrieved</{p}MMStatus>"
)


def stored(app) -> list[dict]:
    return list(app.store.delivery_reports())


def assert_acknowledged(app, body: bytes, **headers: str) -> dict:
    response = call(app, body, headers=headers)
    assert response.status == 200, response.body
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    [row] = stored(app)
    return row


@pytest.mark.parametrize("prefix", ["env", "soap-env", "SOAP-ENV", "soap", "soapenv", "S"])
def test_any_envelope_prefix(app, prefix):
    body = (
        f'<{prefix}:Envelope xmlns:{prefix}="{SOAP_ENV}" xmlns="{REL6}"><{prefix}:Header>'
        f'<TransactionID {prefix}:mustUnderstand="1">p-1</TransactionID></{prefix}:Header>'
        f"<{prefix}:Body><DeliveryReportReq>{REPORT_CHILDREN.format(p='')}</DeliveryReportReq>"
        f"</{prefix}:Body></{prefix}:Envelope>"
    )
    assert assert_acknowledged(app, body.encode())["transaction_id"] == "p-1"


def test_namespace_declared_on_each_element(app):
    children = REPORT_CHILDREN.format(p="").replace("<MM7Version>", f'<MM7Version xmlns="{REL6}">')
    body = (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Body>'
        f'<DeliveryReportReq xmlns="{REL6}">{children}</DeliveryReportReq></env:Body></env:Envelope>'
    )
    assert assert_acknowledged(app, body.encode())["message_id"] == "var-1"


def test_namespace_by_prefix_on_every_element(app):
    body = (
        f'<env:Envelope xmlns:env="{SOAP_ENV}" xmlns:mm7p6a0="{REL6}"><env:Body>'
        f"<mm7p6a0:DeliveryReportReq>{REPORT_CHILDREN.format(p='mm7p6a0:')}</mm7p6a0:DeliveryReportReq>"
        "</env:Body></env:Envelope>"
    )
    row = assert_acknowledged(app, body.encode())
    assert (row["namespace"], row["recipient"]) == ("REL-6-MM7-1-4", "15551230010")


def test_qualified_operation_with_unqualified_children(app):
    body = (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Body>'
        f'<mm7:DeliveryReportReq xmlns:mm7="{REL5}">{REPORT_CHILDREN.format(p="")}</mm7:DeliveryReportReq>'
        "</env:Body></env:Envelope>"
    )
    row = assert_acknowledged(app, body.encode())
    assert (row["namespace"], row["mm_status"], row["sender"]) == ("REL-5-MM7-1-3", "Retrieved", "24680")


def test_transaction_id_in_another_namespace_padded_with_encoding_style(app):
    body = (
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Header>'
        f'<t:TransactionID xmlns:t="{REL5}" soap:mustUnderstand="1" soap:encodingStyle="">\n\t\t  nokia-77  \n'
        f"</t:TransactionID></soap:Header><soap:Body>"
        f'<DeliveryReportReq xmlns="{REL6}">{REPORT_CHILDREN.format(p="")}</DeliveryReportReq>'
        "</soap:Body></soap:Envelope>"
    )
    response = call(app, body.encode())
    assert response.status == 200
    assert response.text("Header/TransactionID") == "nokia-77"
    assert stored(app)[0]["transaction_id"] == "nokia-77"


def report_with(children: str, namespace: str = REL6) -> bytes:
    return (
        f'<env:Envelope xmlns:env="{SOAP_ENV}"><env:Header><TransactionID xmlns="{namespace}">v</TransactionID>'
        f'</env:Header><env:Body><DeliveryReportReq xmlns="{namespace}">{children}</DeliveryReportReq>'
        "</env:Body></env:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    ("recipient", "value", "kind"),
    [
        ("<Recipients><Number>15551230011</Number></Recipients>", "15551230011", "Number"),
        ("<Recipient><To><Number>15551230012</Number></To></Recipient>", "15551230012", "Number"),
        ("<Recipients><To><ShortCode>777</ShortCode></To></Recipients>", "777", "ShortCode"),
        ("<Recipient>15551230013</Recipient>", "15551230013", "Number"),
        ("<Recipient> user@example.net </Recipient>", "user@example.net", "RFC2822Address"),
        ("<Recipient><Number>+385915551234/TYPE=PLMN</Number></Recipient>", "+385915551234/TYPE=PLMN", "Number"),
    ],
)
def test_recipient_variants(app, recipient, value, kind):
    row = assert_acknowledged(
        app,
        report_with(f"<MM7Version>6.8.0</MM7Version><MessageID>r</MessageID>{recipient}<MMStatus>Expired</MMStatus>"),
    )
    assert (row["recipient"], row["recipient_kind"]) == (value, kind)


def test_address_attributes_are_stored(app):
    row = assert_acknowledged(
        app,
        report_with(
            '<MessageID>a</MessageID><Recipient><Number displayOnly="true" addressCoding="obfuscated" id="r1">'
            "x9f</Number></Recipient><MMStatus>Retrieved</MMStatus>"
        ),
    )
    assert (row["recipient_display_only"], row["recipient_address_coding"], row["recipient_address_id"]) == (
        1,
        "obfuscated",
        "r1",
    )


def test_timestamp_instead_of_date_out_of_order_with_extensions(app):
    row = assert_acknowledged(
        app,
        report_with(
            "<MMStatus>Rejected</MMStatus><CalledNet>01990</CalledNet><TimeStamp>2026-11-27T12:00:00-05:00</TimeStamp>"
            "<Sender><Number>24680</Number></Sender><MessageID>o</MessageID><Vendor><Deep>1</Deep></Vendor>"
            "<Recipient><Number>1</Number></Recipient><MM7Version>6.8.0</MM7Version>"
            "<MMStatusExtension>RejectionByOtherRS</MMStatusExtension>"
            "<ApplicID>app</ApplicID><ReplyApplicID>reply</ReplyApplicID><AuxApplicInfo>aux</AuxApplicInfo>"
        ),
    )
    assert row["date_sent"] == "2026-11-27T12:00:00-05:00"
    assert row["date_utc"] == "2026-11-27T17:00:00.000000Z"
    assert row["mm_status_extension"] == "RejectionByOtherRS"
    assert (row["applic_id"], row["reply_applic_id"], row["aux_applic_info"]) == ("app", "reply", "aux")


@pytest.mark.parametrize(
    "date", ["2005-06-4T10:55:59+09:00", "2014-3-24T10:00:00", "yesterday", "Thu Nov 26 10:00:00 UTC 2026"]
)
def test_invalid_dates_are_stored_as_sent_with_no_utc_value(app, date):
    row = assert_acknowledged(
        app,
        report_with(
            f"<MessageID>d</MessageID><Recipient><Number>1</Number></Recipient><Date>{date}</Date><MMStatus>Retrieved</MMStatus>"
        ),
    )
    assert (row["date_sent"], row["date_utc"]) == (date, None)


def test_date_without_zone_is_taken_as_utc(app):
    row = assert_acknowledged(
        app,
        report_with(
            "<MessageID>z</MessageID><Recipient><Number>1</Number></Recipient><Date>2026-11-27T10:00:00</Date><MMStatus>Retrieved</MMStatus>"
        ),
    )
    assert row["date_utc"] == "2026-11-27T10:00:00.000000Z"


# --- charsets ---------------------------------------------------------------------------


def latin1_report() -> bytes:
    return b'<?xml version="1.0" encoding="ISO-8859-1"?>' + report_with(
        "<MessageID>l</MessageID><Recipient><Number>1</Number></Recipient><MMStatus>Retrieved</MMStatus>"
        "<StatusText>Zugestellt à Zürich</StatusText>"
    ).decode().encode("iso-8859-1")


def test_iso_8859_1_declared(app):
    assert assert_acknowledged(app, latin1_report())["status_text"] == "Zugestellt à Zürich"


@pytest.mark.parametrize("charset", ["utf-8", "euc-kr", "us-ascii"])
def test_content_type_charset_disagreeing_with_the_declaration(app, charset):
    response = call(app, latin1_report(), content_type=f"text/xml; charset={charset}")
    assert response.status == 200
    assert stored(app)[0]["status_text"] == "Zugestellt à Zürich"


def test_undeclared_charset_named_by_content_type(app):
    body = (
        report_with(
            "<MessageID>k</MessageID><Recipient><Number>1</Number></Recipient><MMStatus>Retrieved</MMStatus>"
            "<StatusText>전송 완료</StatusText>"
        )
        .decode()
        .encode("euc-kr")
    )
    response = call(app, body, content_type="text/xml; charset=euc-kr")
    assert response.status == 200
    assert stored(app)[0]["status_text"] == "전송 완료"


def test_utf8_bytes_labelled_utf16(app):
    body = b'<?xml version="1.0" encoding="utf-16"?>' + report_with(
        "<MessageID>u</MessageID><Recipient><Number>1</Number></Recipient><MMStatus>Retrieved</MMStatus>"
        "<StatusText>Entregado ✓</StatusText>"
    )
    assert assert_acknowledged(app, body)["status_text"] == "Entregado ✓"


def test_real_utf16_is_read(app):
    body = '<?xml version="1.0" encoding="utf-16"?>'.encode("utf-16") + report_with(
        "<MessageID>u16</MessageID><Recipient><Number>1</Number></Recipient><MMStatus>Retrieved</MMStatus>"
        "<StatusText>Доставлено</StatusText>"
    ).decode().encode("utf-16-le")
    assert assert_acknowledged(app, body)["status_text"] == "Доставлено"


def test_utf8_bom(app):
    assert assert_acknowledged(app, b"\xef\xbb\xbf" + data("sinch_delivery_report.xml"))["message_id"]


def test_gb2312_and_euc_kr_declared(app):
    assert call(app, data("chinese_gb2312.xml")).status == 200
    assert call(app, data("korean_euc_kr.xml")).status == 200
    assert {r["status_text"] for r in stored(app)} == {"已接收", "수신 완료"}

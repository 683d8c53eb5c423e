"""SOAP with Attachments bodies in every shape MMSCs send (spec.md §1, §7.8)."""

from __future__ import annotations

import pytest

from mm7soap import errors, mime
from tests.helpers import SINCH_CONTENT_TYPE, call, data

ENVELOPE = data("sinch_delivery_report.xml")
IMAGE = b"\x89PNG\r\n\x1a\n\x00\x00binary"


def part(headers: list[str], content: bytes, nl: str = "\r\n", blank_line: bool = True) -> bytes:
    head = nl.join(headers).encode() + nl.encode()
    return head + (nl.encode() if blank_line else b"") + content


def multipart(parts: list[bytes], boundary: str = "MM7-b0undary", nl: str = "\r\n", preamble: bytes = b"") -> bytes:
    out = preamble
    for p in parts:
        out += f"--{boundary}{nl}".encode() + p + nl.encode()
    return out + f"--{boundary}--{nl}".encode()


def posted_root(app, body: bytes, content_type: str) -> bytes:
    response = call(app, body, content_type=content_type)
    assert response.status == 200, response.body
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    [row] = list(app.store.delivery_reports())
    return row["raw_envelope"]


ROOT = ["Content-Type: text/xml; charset=utf-8", "Content-ID: <mm7-root>"]
PICTURE = ["Content-Type: image/png", "Content-ID: <picture>", "Content-Transfer-Encoding: binary"]


@pytest.mark.parametrize("start", ['"<mm7-root>"', "mm7-root", '"mm7-root"'])
def test_start_with_or_without_angle_brackets_root_not_first(app, start):
    body = multipart([part(PICTURE, IMAGE), part(ROOT, ENVELOPE)])
    ctype = f'multipart/related; type="text/xml"; boundary="MM7-b0undary"; start={start}'
    assert posted_root(app, body, ctype).strip() == ENVELOPE.strip()


def test_content_id_without_angle_brackets(app):
    root = ["Content-Type: text/xml", "Content-ID: mm7-root"]
    body = multipart([part(PICTURE, IMAGE), part(root, ENVELOPE)])
    ctype = 'multipart/related; boundary=MM7-b0undary; start="<mm7-root>"'
    assert posted_root(app, body, ctype).strip() == ENVELOPE.strip()


def test_no_start_first_part_is_root(app):
    body = multipart([part(["Content-Type: text/xml"], ENVELOPE), part(PICTURE, IMAGE)])
    assert posted_root(app, body, "multipart/related; boundary=MM7-b0undary").strip() == ENVELOPE.strip()


def test_part_headers_without_space_preamble_bare_lf(app):
    headers = ["Content-Type:text/xml;charset=utf-8", "Content-ID:<mm7-root>"]
    body = multipart(
        [part(headers, ENVELOPE, nl="\n"), part(PICTURE, IMAGE, nl="\n")],
        nl="\n",
        preamble=b"This is a MIME message.\n",
    )
    ctype = 'multipart/related; type="text/xml"; boundary="MM7-b0undary"; start="<mm7-root>"'
    assert posted_root(app, body, ctype).strip() == ENVELOPE.strip()


def test_no_blank_line_after_root_part_headers(app):
    body = multipart([part(ROOT, ENVELOPE, blank_line=False), part(PICTURE, IMAGE)])
    ctype = 'multipart/related; type="text/xml"; boundary="MM7-b0undary"; start="<mm7-root>"'
    assert b"DeliveryReportReq" in posted_root(app, body, ctype)


def test_nested_multipart_content(app):
    inner = multipart([part(["Content-Type: text/plain"], b"hello"), part(PICTURE, IMAGE)], boundary="inner-b")
    content = part(["Content-Type: multipart/mixed; boundary=inner-b", "Content-ID: <content>"], inner)
    body = multipart([part(ROOT, ENVELOPE), content])
    ctype = 'multipart/related; type="text/xml"; boundary="MM7-b0undary"; start="<mm7-root>"'
    assert posted_root(app, body, ctype).strip() == ENVELOPE.strip()


def test_base64_root_part(app):
    import base64

    root = [*ROOT, "Content-Transfer-Encoding: base64"]
    body = multipart([part(root, base64.encodebytes(ENVELOPE))])
    assert posted_root(app, body, "multipart/related; boundary=MM7-b0undary").strip() == ENVELOPE.strip()


def test_boundaryless_multipart_of_sinch(app):
    assert posted_root(app, ENVELOPE, SINCH_CONTENT_TYPE) == ENVELOPE


def test_boundary_declared_but_absent_from_body_is_read_as_bare_xml(app):
    assert posted_root(app, ENVELOPE, 'multipart/related; boundary="nowhere"') == ENVELOPE


def test_root_part_charset_is_used_when_the_xml_declares_none(app):
    envelope = ENVELOPE.split(b"?>", 1)[1].replace(b"<StatusText>Success", "<StatusText>수신".encode())
    root = ["Content-Type: text/xml; charset=euc-kr", "Content-ID: <mm7-root>"]
    body = multipart([part(root, envelope.decode().encode("euc-kr"))])
    posted_root(app, body, "multipart/related; boundary=MM7-b0undary")
    assert next(iter(app.store.delivery_reports()))["status_text"] == "수신"


def test_multipart_without_parts_is_a_validation_error():
    with pytest.raises(errors.ValidationError):
        mime.read_body("multipart/related; boundary=x", b"--x--\r\n")


def test_damaged_multipart_gets_a_soap_fault(app):
    body = multipart([part(ROOT, ENVELOPE[:200])])
    response = call(app, body, content_type="multipart/related; boundary=MM7-b0undary")
    assert response.status == 500
    assert response.find("Body/Fault") is not None


def test_non_ascii_content_id_does_not_break_finding_the_root(app):
    picture = ["Content-Type: image/png", "Content-ID: <bild-ä.png>"]
    body = multipart([part(picture, IMAGE), part(ROOT, ENVELOPE)])
    ctype = 'multipart/related; boundary=MM7-b0undary; start="<mm7-root>"'
    assert posted_root(app, body, ctype).strip() == ENVELOPE.strip()

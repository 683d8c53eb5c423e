"""SOAP 1.1 as MM7 uses it: Spyne's protocol fed the canonical envelope, and MM7 faults.

`MM7Soap11` is Spyne's Soap11 with two changes: the incoming document is the one
`mm7soap.envelope` already read (so a request is parsed once, leniently), and the echoed
`TransactionID` carries `env:mustUnderstand="1"` as every MMSC sample shows.
Faults are written here rather than by Spyne so that each one, from a parse error before
Spyne runs to a store failure inside the service, has the same shape: `faultcode`,
`faultstring`, and `detail/VASPErrorRsp` in the request's MM7 namespace.
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from spyne.protocol.soap import Soap11

from mm7soap import errors
from mm7soap.envelope import Reply
from mm7soap.namespaces import SOAP_ENV, default_version

MUST_UNDERSTAND = f"{{{SOAP_ENV}}}mustUnderstand"


class MM7Soap11(Soap11):
    """Spyne's SOAP 1.1 protocol reading the envelope `mm7soap.envelope` canonicalised."""

    def create_in_document(self, ctx: Any, charset: str | None = None) -> None:
        ctx.in_document = (ctx.udc.envelope.document, {})

    def serialize(self, ctx: Any, message: Any) -> None:
        super().serialize(ctx, message)
        if ctx.out_header_doc is not None:
            for header in ctx.out_header_doc:
                header.set(MUST_UNDERSTAND, "1")
        ctx.out_document = restyled(ctx.out_document, ctx.app.tns)


def restyled(element: etree._Element, namespace: str) -> etree._Element:
    """The same answer written as MMSCs' own examples are: `env:` prefix, MM7 as default.

    Spyne writes `soap11env:`/`tns:`; the XML is equivalent, but Sinch's documented answer
    and the legacy Java endpoints use this style, and some MMSCs match text, not namespaces.
    """
    root = etree.Element(element.tag, element.attrib, nsmap={"env": SOAP_ENV, None: namespace})
    root.text = element.text
    copy_children(element, root)
    return root


def copy_children(source: etree._Element, target: etree._Element) -> None:
    for child in source:
        if not isinstance(child.tag, str):
            continue
        copy = etree.SubElement(target, child.tag, child.attrib)
        copy.text = child.text
        copy_children(child, copy)


def xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (a parse error may quote them)."""
    return "".join(
        c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd") or c >= "\U00010000"
    )


def envelope() -> tuple[etree._Element, etree._Element, etree._Element]:
    """A new SOAP 1.1 envelope with an empty Header and Body."""
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"env": SOAP_ENV})
    header = etree.SubElement(root, f"{{{SOAP_ENV}}}Header")
    body = etree.SubElement(root, f"{{{SOAP_ENV}}}Body")
    return root, header, body


def mm7_element(parent: etree._Element, namespace: str, name: str) -> etree._Element:
    """An MM7 element declaring its namespace as default, as in Sinch's examples.

    Declared here, not on the Envelope, so that the Fault's unqualified children
    (`faultcode`, `faultstring`, `detail`) stay in no namespace.
    """
    return etree.SubElement(parent, f"{{{namespace}}}{name}", nsmap={None: namespace})


def add_transaction_id(header: etree._Element, namespace: str, transaction_id: str | None) -> None:
    if transaction_id is not None:
        element = mm7_element(header, namespace, "TransactionID")
        element.set(MUST_UNDERSTAND, "1")
        element.text = transaction_id


def fault_document(error: errors.MM7Error, reply: Reply) -> bytes:
    """The SOAP Fault for `error`, answered in the request's namespace as far as it was read."""
    ns = reply.namespace
    root, header, body = envelope()
    add_transaction_id(header, ns, reply.transaction_id)
    fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    # SOAP 1.1 wants faultcode, faultstring and detail unqualified (instantcom parses them so).
    etree.SubElement(fault, "faultcode").text = f"env:{error.faultcode}"
    etree.SubElement(fault, "faultstring").text = error.status_text
    detail = etree.SubElement(fault, "detail")
    rsp = mm7_element(detail, ns, "VASPErrorRsp")
    etree.SubElement(rsp, f"{{{ns}}}MM7Version").text = reply.mm7_version or default_version(ns)
    status = etree.SubElement(rsp, f"{{{ns}}}Status")
    etree.SubElement(status, f"{{{ns}}}StatusCode").text = str(error.status_code)
    etree.SubElement(status, f"{{{ns}}}StatusText").text = error.status_text
    if error.details:
        etree.SubElement(status, f"{{{ns}}}Details").text = xml_safe(error.details)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")

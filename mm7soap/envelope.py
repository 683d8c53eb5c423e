"""Reading a SOAP envelope the way real MMSCs write it.

MMSCs use any envelope prefix and declare the MM7 namespace on the Envelope, per element
or not at all on the children (spec.md §7).  This module parses the root part (hardened,
lenient about charsets), finds Header, Body, TransactionID and the request's namespace by
local name, and reads the request into its canonical form (`mm7soap.canonical`), which
`mm7soap.binding` maps onto the Spyne types (`ReadEnvelope.document` writes it out as a
SOAP envelope, for Spyne's own protocol).  Values Spyne would refuse (a date that is not an
`xs:dateTime`) are kept as sent in `ReadEnvelope.as_sent`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from lxml import etree

from mm7soap import errors
from mm7soap.canonical import SHAPES, Node, canonical_request, children, first_child, text_of
from mm7soap.namespaces import (
    DEFAULT_NAMESPACE,
    MM7_NAMESPACES,
    SOAP12_ENV,
    SOAP_ENV,
    local_name,
    mm7_name,
    namespace_of,
)

# Requests an MMSC sends a VASP that this endpoint answers, and every other MM7 request
# (answered 4003 rather than 4004: they are valid MM7, just not served here).
SERVED_OPERATIONS = tuple(SHAPES)

NEXT_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"

ENCODING_DECLARATION = re.compile(rb"^(\xef\xbb\xbf)?[ \t\r\n]*<\?xml[^>]*encoding\s*=\s*[\"']([^\"']+)[\"']")
XML_WHITESPACE = b" \t\r\n"
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class ReadEnvelope:
    """A request as understood: where it came from in MM7 terms and its canonical form."""

    namespace: str
    request: Node
    transaction_id: str | None = None
    as_sent: dict[str, str] = field(default_factory=dict)

    @property
    def operation(self) -> str:
        return self.request.name

    @property
    def mm7_version(self) -> str | None:
        version = self.request.child("MM7Version")
        return version.text if version is not None else None

    @property
    def namespace_name(self) -> str:
        return mm7_name(self.namespace) or ""

    @cached_property
    def document(self) -> etree._Element:
        """The canonical request in a SOAP envelope with its TransactionID, as Spyne reads it."""
        root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"env": SOAP_ENV})
        header = etree.SubElement(root, f"{{{SOAP_ENV}}}Header")
        if self.transaction_id is not None:
            etree.SubElement(header, f"{{{self.namespace}}}TransactionID").text = self.transaction_id
        self.request.element(self.namespace, etree.SubElement(root, f"{{{SOAP_ENV}}}Body"))
        return root


@dataclass
class Reply:
    """What any answer (success or fault) needs from the request, as far as it was read."""

    namespace: str = DEFAULT_NAMESPACE
    mm7_version: str | None = None
    transaction_id: str | None = None
    # The request element ("DeliveryReportReq") when it is one served, in an MM7 namespace:
    # for the request log and metrics of a request refused before it was read whole.
    operation: str = ""


def make_parser(encoding: str | None = None) -> etree.XMLParser:
    # No DTDs, entities, network or huge trees: the request comes from the open internet.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        encoding=encoding,
    )


def fallback_encodings(data: bytes, charset: str | None) -> list[str]:
    """Encodings to try when the bytes do not parse as they declare themselves.

    The XML declaration wins whenever the bytes are valid in it.  When they are not:
    UTF-8 bytes labelled `utf-16` (Vibes) are read as UTF-8, then the HTTP charset is tried.
    """
    candidates = []
    declared = ENCODING_DECLARATION.match(data)
    if declared and declared.group(2).lower().startswith(b"utf-16"):
        candidates.append("utf-8")
    if charset and charset.lower() not in candidates:
        candidates.append(charset.lower())
    return candidates


def parse_xml(data: bytes, charset: str | None = None) -> etree._Element:
    """Parse the root part leniently as to charset, strictly as to everything else."""
    if not data.strip():
        raise errors.ValidationError("the request has no XML")
    data = without_leading_space(data)
    try:
        root = etree.fromstring(data, make_parser())
    except (etree.XMLSyntaxError, LookupError) as exc:
        root = None
        for encoding in fallback_encodings(data, charset):
            try:
                root = etree.fromstring(data, make_parser(encoding))
                break
            except (etree.XMLSyntaxError, LookupError, ValueError):
                continue  # ValueError: lxml refuses a label with control characters
        if root is None:
            raise errors.ValidationError(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise errors.ValidationError("a DTD is not allowed in an MM7 request")
    return root


def without_leading_space(data: bytes) -> bytes:
    """The document without white space before its start (after any BOM).  libxml2 refuses
    it before `<?xml` ("XML declaration allowed only at the start"), but nothing in such a
    request is unclear, and a 4004 would lose it for good."""
    bom = UTF8_BOM if data.startswith(UTF8_BOM) else b""
    rest = data[len(bom) :]
    if rest[:1] not in (b" ", b"\t", b"\r", b"\n"):
        return data
    return bom + rest.lstrip(XML_WHITESPACE)


def raw_text(raw: bytes) -> str:
    """A raw envelope as text, decoded in the charset its XML declaration names."""
    declared = ENCODING_DECLARATION.match(raw)
    encoding = declared.group(2).decode("ascii", "replace") if declared else "utf-8"
    try:
        return raw.decode(encoding)
    except (LookupError, ValueError):  # unknown, undecodable, or a label with a NUL in it
        return raw.decode("utf-8", "replace")


def split_envelope(root: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    """(Header, Body) of a SOAP 1.1 envelope, or a Client fault saying why not."""
    if root.tag == f"{{{SOAP12_ENV}}}Envelope":
        raise errors.VersionMismatchError("a SOAP 1.2 envelope; MM7 uses SOAP 1.1")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise errors.ValidationError(f"the root element is {local_name(root.tag)}, not a SOAP 1.1 Envelope")
    header = body = None
    for child in children(root):
        if child.tag == f"{{{SOAP_ENV}}}Header":
            header = child
        elif child.tag == f"{{{SOAP_ENV}}}Body":
            body = child
    if body is None:
        raise errors.ValidationError("the envelope has no Body")
    return header, body


def check_must_understand(header: etree._Element | None) -> None:
    """SOAP 1.1 §4.2.3: a header entry for us with mustUnderstand="1" that we do not know is a
    MustUnderstand fault.  TransactionID is the only header MM7 defines."""
    for entry in children(header) if header is not None else []:
        if local_name(entry.tag) == "TransactionID":
            continue
        must = (entry.get(f"{{{SOAP_ENV}}}mustUnderstand") or "0").strip().lower() in ("1", "true")
        actor = (entry.get(f"{{{SOAP_ENV}}}actor") or "").strip()
        if must and actor in ("", NEXT_ACTOR):
            raise errors.MustUnderstandError(local_name(entry.tag))


def transaction_id_of(header: etree._Element | None) -> etree._Element | None:
    return None if header is None else first_child(header, "TransactionID")


def operation_namespace(operation: etree._Element, transaction: etree._Element | None) -> str:
    """The request's MM7 namespace: the operation element's, else the TransactionID's."""
    namespace = namespace_of(operation.tag)
    if not namespace and transaction is not None:
        namespace = namespace_of(transaction.tag)
    if not namespace:
        return DEFAULT_NAMESPACE
    name = mm7_name(namespace)
    if name is None:
        raise errors.UnsupportedVersion(f"{namespace} is not an MM7 namespace")
    return MM7_NAMESPACES[name]


def read_reply(data: bytes, charset: str | None = None) -> Reply:
    """As much of the request as an answer needs, for faults raised before or after reading:
    the TransactionID wherever it could be read, even in an envelope that has no Body."""
    reply = Reply()
    try:
        root = parse_xml(data, charset)
    except errors.MM7Error:
        return reply
    header = next((c for c in children(root) if local_name(c.tag) == "Header"), None)
    body = next((c for c in children(root) if local_name(c.tag) == "Body"), None)
    transaction = transaction_id_of(header)
    if transaction is not None:
        reply.transaction_id = text_of(transaction)
    operation = next(iter(children(body)), None) if body is not None else None
    tags = [element.tag for element in (operation, transaction) if element is not None]
    name = next((mm7_name(namespace_of(tag)) for tag in tags if mm7_name(namespace_of(tag))), None)
    if name:
        reply.namespace = MM7_NAMESPACES[name]
        if operation is not None and local_name(operation.tag) in SERVED_OPERATIONS:
            reply.operation = local_name(operation.tag)
    if operation is not None:
        version = first_child(operation, "MM7Version")
        reply.mm7_version = text_of(version) if version is not None else None
    return reply


def only_operation(body: etree._Element) -> etree._Element:
    """The Body's one element.  MM7 carries one request per envelope and answers it with one
    response; of two requests in one Body neither can be acknowledged alone, so the request
    is refused (4004) rather than one of them dropped."""
    elements = children(body)
    if not elements:
        raise errors.ValidationError("the SOAP Body is empty")
    if len(elements) > 1:
        names = ", ".join(local_name(element.tag) for element in elements)
        raise errors.ValidationError(f"the SOAP Body holds {len(elements)} elements ({names}); MM7 allows one")
    return elements[0]


def read(data: bytes, charset: str | None = None) -> ReadEnvelope:
    """Read the root XML part of a request into its canonical form, or raise an MM7Error."""
    header, body = split_envelope(parse_xml(data, charset))
    check_must_understand(header)
    transaction = transaction_id_of(header)
    operation = only_operation(body)
    namespace = operation_namespace(operation, transaction)
    name = local_name(operation.tag)
    if name not in SERVED_OPERATIONS:
        raise errors.UnsupportedOperation(f"{name} is not served by this endpoint")
    as_sent: dict[str, str] = {}
    return ReadEnvelope(
        namespace=namespace,
        request=canonical_request(operation, as_sent),
        transaction_id=text_of(transaction) if transaction is not None else None,
        as_sent=as_sent,
    )

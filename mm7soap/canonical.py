"""The canonical form of each MM7 request an MMSC sends a VASP.

MMSCs rename elements (`Recipients` for `Recipient`, `TimeStamp` for `Date`), write
bare-text addresses, leave children unqualified and shuffle the schema order (spec.md §7).
Everything here is matched by local name and rewritten with the REL-6 element names and
order of spec.md §4, so that `mm7soap.binding` (or Spyne) maps it onto `mm7soap.types`
without surprises.  A date Spyne would refuse is left out and kept as sent in `as_sent`;
elements no schema knows stay only in the stored raw envelope.

The canonical request is a tree of `Node`s, not of lxml elements: an lxml element costs
microseconds to make (each new one is a document of its own), and a report needs a dozen.
`Node.element` writes the same tree as XML in the request's namespace, for Spyne.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from mm7soap import errors, xsdatetime
from mm7soap.namespaces import local_name
from mm7soap.types import ADDRESS_KINDS

ADDRESS_ATTRIBUTES = ("displayOnly", "addressCoding", "id")
RECIPIENT_LISTS = ("To", "Cc", "Bcc")

# What XML calls white space; Python's str.strip() would also take e.g. a no-break space.
XML_WHITESPACE = " \t\r\n"
# An xs:unsignedInt: ASCII digits (str.isdigit() also takes `²`, which int() refuses).
SEQUENCE = re.compile(r"[0-9]{1,10}")
BOOLEANS = {"true": "true", "1": "true", "false": "false", "0": "false"}


@dataclass(slots=True)
class Node:
    """An element of a canonical request: its name (in the request's MM7 namespace), its
    trimmed text, its unqualified attributes and its child elements, in schema order."""

    name: str
    text: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def child(self, name: str) -> Node | None:
        return next((child for child in self.children if child.name == name), None)

    def element(self, ns: str, parent: etree._Element | None = None) -> etree._Element:
        """This node as an lxml element in namespace `ns` (appended to `parent`, if given)."""
        tag = f"{{{ns}}}{self.name}"
        out = etree.Element(tag, self.attributes) if parent is None else etree.SubElement(parent, tag, self.attributes)
        out.text = self.text
        for child in self.children:
            child.element(ns, out)
        return out


AsSent = dict[str, str]
Builder = Callable[[etree._Element, str, AsSent], "Node | None"]


def children(element: etree._Element) -> list[etree._Element]:
    return [child for child in element if isinstance(child.tag, str)]


def first_child(element: etree._Element, name: str) -> etree._Element | None:
    for child in children(element):
        if local_name(child.tag) == name:
            return child
    return None


def text_of(element: etree._Element) -> str:
    """An element's whole text, without the white space around it: the text of all its
    descendants (markup dropped; CDATA and character references read; comments and
    processing instructions were removed by the parser), never only what precedes the
    first child element (`<StatusText>Delivered to <b>handset</b></StatusText>`)."""
    if len(element) == 0:
        return (element.text or "").strip(XML_WHITESPACE)
    return "".join(element.itertext()).strip(XML_WHITESPACE)


def attribute_text(value: str) -> str:
    return value.strip(XML_WHITESPACE)


def is_nil(element: etree._Element) -> bool:
    """`xsi:nil="true"`: the element stands for no value, as if it were absent.  Matched by
    local name, as MMSCs bind the xsi prefix loosely."""
    attributes = element.items()  # most elements have none: no generator for them
    return bool(attributes) and any(
        local_name(key) == "nil" and attribute_text(value) in ("true", "1") for key, value in attributes
    )


def plain(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    return Node(name, text_of(source))


def date(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """Dates are kept as sent; only an xs:dateTime that names a time is given to Spyne, so
    `2005-06-4T…` or `2026-02-30T…` is stored as sent with no UTC value."""
    as_sent[name] = text_of(source)
    return Node(name, as_sent[name]) if xsdatetime.parse(as_sent[name]) is not None else None


def address(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """`<Recipient><Number>` from any of: a kind child, a `To`/`Cc`/`Bcc` list, bare text.

    One address: the same one written twice is one, two different ones cannot be stored
    as either (a report is about one recipient), so they are a Client fault.
    """
    values: list[Node] = []
    for found in listed_addresses(source).values():
        values.extend(value for value in found if value not in values)
    if len(values) > 1:
        raise errors.ValidationError(f"{name} holds {len(values)} different addresses; MM7 allows one")
    return Node(name, children=values) if values else None


def listed_addresses(source: etree._Element) -> dict[str, list[Node]]:
    """The addresses of a Recipients (or a wrapped Recipient) by list, in document order:
    those of every `To`, `Cc` and `Bcc` child, and those given directly, taken as `To`."""
    lists: dict[str, list[Node]] = {name: [] for name in RECIPIENT_LISTS}
    wrapped = False
    for child in children(source):
        if local_name(child.tag) in RECIPIENT_LISTS and not is_nil(child):
            lists[local_name(child.tag)].extend(address_values(child))
            wrapped = True
        else:
            lists["To"].extend(address_values(child, alone=True))
    if not wrapped and not any(lists.values()):
        lists["To"].extend(bare_address(source))
    return lists


def address_values(source: etree._Element, alone: bool = False) -> list[Node]:
    """The `<Number>`/`<ShortCode>`/`<RFC2822Address>` children of an address or list, or
    `source` itself when `alone` and it is one; else its bare text."""
    candidates = [source] if alone else children(source)
    values = []
    for child in candidates:
        kind = local_name(child.tag)
        value = text_of(child) if kind in ADDRESS_KINDS and not is_nil(child) else ""
        if value:
            attributes = {
                local_name(attribute): attribute_text(attribute_value)
                for attribute, attribute_value in child.attrib.items()
                if local_name(attribute) in ADDRESS_ATTRIBUTES
            }
            values.append(Node(kind, value, attributes))
    if not alone and not values:
        values.extend(bare_address(source))
    return values


def bare_address(source: etree._Element) -> list[Node]:
    """A bare-text address (China Mobile's `<Sender>1065580001</Sender>`): an
    RFC2822Address when it looks like one (has `@`), a Number otherwise."""
    bare = text_of(source)  # address elements here are all empty: they add no text
    return [Node("RFC2822Address" if "@" in bare else "Number", bare)] if bare else []


def recipients(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """`<Recipients><To>…</To><Cc>…</Cc><Bcc>…</Bcc>`; addresses given directly are `To`.
    Every list written is read, also a list written twice."""
    out = Node("Recipients")
    for list_name, values in listed_addresses(source).items():
        if values:
            out.children.append(Node(list_name, children=values))
    return out if out.children else None


def capabilities(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    out = Node("UACapabilities")
    for attribute, value in source.attrib.items():
        if local_name(attribute) == "UAProf":
            out.attributes["UAProf"] = attribute_text(value)
        elif local_name(attribute) == "TimeStamp":
            as_sent["UACapabilities/TimeStamp"] = attribute_text(value)
            if xsdatetime.parse(attribute_text(value)) is not None:
                out.attributes["TimeStamp"] = attribute_text(value)
    return out


def content(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    """`<Content href allowAdaptations/>`; Nokia-era MMSCs namespace the attributes."""
    out = Node("Content")
    for attribute, value in source.attrib.items():
        if local_name(attribute) == "href":
            as_sent["Content/href"] = value
            out.attributes["href"] = attribute_text(value)
        elif local_name(attribute) == "allowAdaptations" and attribute_text(value).lower() in BOOLEANS:
            out.attributes["allowAdaptations"] = BOOLEANS[attribute_text(value).lower()]
    return out


def sequenced(item: str, builder: Builder) -> Builder:
    """`Previouslysentby/UserAgent` and `Previouslysentdateandtime/DateTime` lists, each
    entry numbered by its `sequence` attribute.  An entry's values as sent are kept under
    `name/item[index]` (a date that is no xs:dateTime is an entry without a value)."""

    def build(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
        out = Node(name)
        for entry in children(source):
            if local_name(entry.tag) != item or is_nil(entry):
                continue
            entry_sent: AsSent = {}
            built = builder(entry, item, entry_sent)
            if built is None and entry_sent.get(item):
                built = Node(item)
            if built is not None:
                sequence = next((v for k, v in entry.attrib.items() if local_name(k) == "sequence"), None)
                if sequence is not None and SEQUENCE.fullmatch(attribute_text(sequence)):
                    built.attributes["sequence"] = attribute_text(sequence)
                as_sent.update({f"{name}/{key}[{len(out.children)}]": value for key, value in entry_sent.items()})
                out.children.append(built)
        return out if out.children else None

    return build


@dataclass(frozen=True)
class Shape:
    """One request's canonical element order, the names MMSCs use instead, and the
    elements without which it cannot be stored."""

    operation: str
    order: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    mandatory: tuple[str, ...] = ()
    builders: dict[str, Builder] = field(default_factory=dict)
    # Vendor wrappers whose children are read as if they were the request's own.
    wrappers: tuple[str, ...] = ()


DELIVERY_REPORT = Shape(
    operation="DeliveryReportReq",
    order=(
        "MM7Version",
        "MMSRelayServerID",
        "MessageID",
        "Recipient",
        "Sender",
        "Date",
        "MMStatus",
        "MMStatusExtension",
        "StatusText",
        "ApplicID",
        "ReplyApplicID",
        "AuxApplicInfo",
        "UACapabilities",
    ),
    aliases={"Recipients": "Recipient", "TimeStamp": "Date"},
    mandatory=("MessageID", "Recipient", "MMStatus"),
    builders={"Recipient": address, "Sender": address, "Date": date, "UACapabilities": capabilities},
)

READ_REPLY = Shape(
    operation="ReadReplyReq",
    order=(
        "MM7Version",
        "MMSRelayServerID",
        "MessageID",
        "Recipient",
        "Sender",
        "TimeStamp",
        "MMStatus",
        "StatusText",
        "ApplicID",
        "ReplyApplicID",
        "AuxApplicInfo",
    ),
    aliases={"Recipients": "Recipient", "Date": "TimeStamp"},
    mandatory=("MessageID", "Recipient", "MMStatus"),
    builders={"Recipient": address, "Sender": address, "TimeStamp": date},
)

DELIVER = Shape(
    operation="DeliverReq",
    order=(
        "MM7Version",
        "MMSRelayServerID",
        "VASPID",
        "VASID",
        "LinkedID",
        "Sender",
        "Recipients",
        "Previouslysentby",
        "Previouslysentdateandtime",
        "SenderSPI",
        "RecipientSPI",
        "TimeStamp",
        "ReplyChargingID",
        "Priority",
        "Subject",
        "ApplicID",
        "ReplyApplicID",
        "AuxApplicInfo",
        "UACapabilities",
        "Content",
    ),
    aliases={
        "Recipient": "Recipients",
        "Date": "TimeStamp",
        "PreviouslySentBy": "Previouslysentby",
        "PreviouslySentDateAndTime": "Previouslysentdateandtime",
    },
    # Sender is mandatory in the schema, but an MO without one (instantcom's minimal
    # DeliverReq) still carries a subscriber's content: it is stored, not refused.
    mandatory=(),
    builders={
        "Sender": address,
        "Recipients": recipients,
        "Previouslysentby": sequenced("UserAgent", address),
        "Previouslysentdateandtime": sequenced("DateTime", date),
        "TimeStamp": date,
        "UACapabilities": capabilities,
        "Content": content,
    },
    wrappers=("SenderIdentification",),
)

SHAPES = {shape.operation: shape for shape in (DELIVERY_REPORT, READ_REPLY, DELIVER)}


@dataclass(slots=True)
class Found:
    """The elements of one canonical name: written under that name, and under an alias."""

    named: list[etree._Element] = field(default_factory=list)
    aliased: list[etree._Element] = field(default_factory=list)

    @property
    def sources(self) -> list[etree._Element]:
        """An alias stands in only for a missing name (a report with both `Date` and
        `TimeStamp` has its Date; the TimeStamp is then an element no schema knows)."""
        return self.named or self.aliased


def collect(operation: etree._Element, shape: Shape, found: dict[str, Found] | None = None) -> dict[str, Found]:
    """Every element of each canonical name, looking inside vendor wrappers too; an element
    that is `xsi:nil` is absent."""
    found = {} if found is None else found
    for child in children(operation):
        written = local_name(child.tag)
        name = shape.aliases.get(written, written)
        if name in shape.wrappers:
            collect(child, shape, found)
        elif name in shape.order and not is_nil(child):
            entry = found.setdefault(name, Found())
            (entry.named if name == written else entry.aliased).append(child)
    return found


def build_once(shape: Shape, name: str, sources: list[etree._Element], as_sent: AsSent) -> Node | None:
    """The canonical element `name` of its every occurrence, which must agree: the same
    value written twice is that value; two different values cannot be stored as either, so
    they are a Client fault rather than one of them dropped."""
    builder = shape.builders.get(name, plain)
    first_sent: AsSent = {}
    built = builder(sources[0], name, first_sent)
    for source in sources[1:]:
        again: AsSent = {}
        if builder(source, name, again) != built or again != first_sent:
            raise errors.ValidationError(f"{shape.operation} has {len(sources)} different {name} elements")
    as_sent.update(first_sent)
    return built


def canonical_request(operation: etree._Element, as_sent: AsSent) -> Node:
    """The request in canonical names and order, or MissingElement."""
    shape = SHAPES[local_name(operation.tag)]
    found = collect(operation, shape)
    out = Node(shape.operation)
    for name in shape.order:
        if name in found:
            built = build_once(shape, name, found[name].sources, as_sent)
            if built is not None and (built.text or built.children or built.attributes or name not in shape.mandatory):
                out.children.append(built)
    present = {child.name for child in out.children}
    for name in shape.mandatory:
        if name not in present:
            raise errors.MissingElement(name, shape.operation)
    return out

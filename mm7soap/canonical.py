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

from mm7soap import errors
from mm7soap.namespaces import local_name
from mm7soap.types import ADDRESS_KINDS

ADDRESS_ATTRIBUTES = ("displayOnly", "addressCoding", "id")
RECIPIENT_LISTS = ("To", "Cc", "Bcc")

# xs:dateTime, strictly: two-digit month and day, optional fraction and zone.
XS_DATETIME = re.compile(r"^-?\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")
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


def first_children(element: etree._Element) -> dict[str, etree._Element]:
    """The first child element of each local name."""
    found: dict[str, etree._Element] = {}
    for child in children(element):
        found.setdefault(local_name(child.tag), child)
    return found


def text_of(element: etree._Element) -> str:
    return (element.text or "").strip()


def plain(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    return Node(name, text_of(source))


def date(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """Dates MMSCs send as `2005-06-4T…` are kept as sent, but not given to Spyne."""
    as_sent[name] = text_of(source)
    return Node(name, as_sent[name]) if XS_DATETIME.match(as_sent[name]) else None


def address(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """`<Recipient><Number>` from any of: a kind child, a `To`/`Cc`/`Bcc` list, bare text."""
    named = first_children(source)
    for wrapper in RECIPIENT_LISTS:
        if wrapper in named:
            return address(named[wrapper], name, as_sent)
    values = address_values(source)
    return Node(name, children=values[:1]) if values else None


def address_values(source: etree._Element) -> list[Node]:
    """The `<Number>`/`<ShortCode>`/`<RFC2822Address>` children of an address or list.

    A bare-text address (China Mobile's `<Sender>1065580001</Sender>`) is an
    RFC2822Address when it looks like one (has `@`), a Number otherwise.
    """
    values = []
    for child in children(source):
        kind = local_name(child.tag)
        value = text_of(child) if kind in ADDRESS_KINDS else ""
        if value:
            attributes = {
                local_name(attribute): attribute_value.strip()
                for attribute, attribute_value in child.attrib.items()
                if local_name(attribute) in ADDRESS_ATTRIBUTES
            }
            values.append(Node(kind, value, attributes))
    bare = text_of(source)
    if not values and bare:
        values.append(Node("RFC2822Address" if "@" in bare else "Number", bare))
    return values


def recipients(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
    """`<Recipients><To>…</To><Cc>…</Cc><Bcc>…</Bcc>`; addresses given directly are `To`."""
    out = Node("Recipients")
    named = first_children(source)
    for list_name in RECIPIENT_LISTS:
        listed = named.get(list_name)
        values = address_values(listed) if listed is not None else []
        if list_name == "To" and listed is None:
            values = address_values(source)
        if values:
            out.children.append(Node(list_name, children=values))
    return out if out.children else None


def capabilities(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    out = Node("UACapabilities")
    for attribute, value in source.attrib.items():
        if local_name(attribute) == "UAProf":
            out.attributes["UAProf"] = value.strip()
        elif local_name(attribute) == "TimeStamp":
            as_sent["UACapabilities/TimeStamp"] = value.strip()
            if XS_DATETIME.match(value.strip()):
                out.attributes["TimeStamp"] = value.strip()
    return out


def content(source: etree._Element, name: str, as_sent: AsSent) -> Node:
    """`<Content href allowAdaptations/>`; Nokia-era MMSCs namespace the attributes."""
    out = Node("Content")
    for attribute, value in source.attrib.items():
        if local_name(attribute) == "href":
            as_sent["Content/href"] = value
            out.attributes["href"] = value.strip()
        elif local_name(attribute) == "allowAdaptations" and value.strip().lower() in BOOLEANS:
            out.attributes["allowAdaptations"] = BOOLEANS[value.strip().lower()]
    return out


def sequenced(item: str, builder: Builder) -> Builder:
    """`Previouslysentby/UserAgent` and `Previouslysentdateandtime/DateTime` lists, each
    entry numbered by its `sequence` attribute."""

    def build(source: etree._Element, name: str, as_sent: AsSent) -> Node | None:
        out = Node(name)
        for entry in children(source):
            if local_name(entry.tag) != item:
                continue
            built = builder(entry, item, {})
            if built is not None:
                sequence = next((v for k, v in entry.attrib.items() if local_name(k) == "sequence"), None)
                if sequence is not None and sequence.strip().isdigit():
                    built.attributes["sequence"] = sequence.strip()
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


def collect(operation: etree._Element, shape: Shape) -> dict[str, etree._Element]:
    """The first element of each canonical name, looking inside vendor wrappers too."""
    found: dict[str, etree._Element] = {}
    for child in children(operation):
        name = shape.aliases.get(local_name(child.tag), local_name(child.tag))
        if name in shape.wrappers:
            for name, inner in collect(child, shape).items():
                found.setdefault(name, inner)
        elif name in shape.order:
            found.setdefault(name, child)
    return found


def canonical_request(operation: etree._Element, as_sent: AsSent) -> Node:
    """The request in canonical names and order, or MissingElement."""
    shape = SHAPES[local_name(operation.tag)]
    found = collect(operation, shape)
    out = Node(shape.operation)
    for name in shape.order:
        if name in found:
            built = shape.builders.get(name, plain)(found[name], name, as_sent)
            if built is not None and (built.text or built.children or built.attributes or name not in shape.mandatory):
                out.children.append(built)
    present = {child.name for child in out.children}
    for name in shape.mandatory:
        if name not in present:
            raise errors.MissingElement(name, shape.operation)
    return out

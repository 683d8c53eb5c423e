"""Reading and writing the MM7 types fast, compiled from their Spyne declarations.

Spyne's generic object mapping (`complex_from_element`, its serializer and the method
context around them) took three quarters of a request's time (issue 7's profile).  What
it would map here is always a canonical request `mm7soap.canonical` built: known names,
one namespace, values already trimmed.  So each type's fields are read once from its
Spyne declaration (`get_flat_type_info`), and a request's `Node`s are mapped with a dict
lookup each.  The declarations stay the one source of the types and the WSDL;
`tests/test_binding.py` checks that this mapping gives what Spyne's own gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from spyne.model import ComplexModelBase
from spyne.model.complex import XmlAttribute, XmlData
from spyne.model.primitive import Boolean, DateTime, Integer

from mm7soap import xsdatetime
from mm7soap.canonical import Node
from mm7soap.namespaces import SOAP_ENV

# A CR written as is would reach the MMSC as LF (XML end-of-line handling): write a reference.
CARRIAGE_RETURN = {"\r": "&#13;"}


@dataclass(frozen=True)
class Field:
    """One member of a complex type, as its declaration says it is written."""

    name: str
    type: Any
    many: bool
    complex: bool


@dataclass(frozen=True)
class Layout:
    """Where a complex type's members are: child elements (by name), attributes, text."""

    elements: dict[str, Field]
    attributes: tuple[Field, ...]
    data: Field | None
    order: tuple[Field, ...]  # child elements in declaration order, for writing
    empty: dict[str, Any]  # every member unset, as Spyne's constructor leaves them


@cache
def layout(cls: Any) -> Layout:
    elements, attributes, data, order = {}, [], None, []
    for name, declared in cls.get_flat_type_info(cls).items():
        if issubclass(declared, XmlAttribute):
            attributes.append(Field(name, declared.type, many=False, complex=False))
        elif issubclass(declared, XmlData):
            data = Field(name, declared.type, many=False, complex=False)
        else:
            many = declared.Attributes.max_occurs > 1
            member = Field(name, declared, many=many, complex=issubclass(declared, ComplexModelBase))
            elements[name] = member
            order.append(member)
    empty = {name: None for name in cls.get_flat_type_info(cls)}
    return Layout(elements, tuple(attributes), data, tuple(order), empty)


def read(cls: Any, node: Node) -> Any:
    """An instance of the Spyne class `cls` from a canonical request (or part of one)."""
    shape = layout(cls)
    instance = cls.__new__(cls)
    values = dict(shape.empty)
    for member in shape.attributes:
        text = node.attributes.get(member.name)
        if text is not None:
            values[member.name] = primitive(member.type, text)
    if shape.data is not None and node.text is not None:  # None: a date kept only as sent
        values[shape.data.name] = primitive(shape.data.type, node.text)
    for child in node.children:
        member = shape.elements.get(child.name)
        if member is None:
            continue
        value = read(member.type, child) if member.complex else primitive(member.type, child.text or "")
        if member.many:
            values[member.name] = [*(values[member.name] or []), value]
        else:
            values[member.name] = value
    instance.__dict__.update(values)
    return instance


def new(cls: Any, **values: Any) -> Any:
    """An instance of `cls` with `values` and every other member unset: what Spyne's
    constructor makes, at a tenth of its cost (it is called for every answer)."""
    instance = cls.__new__(cls)
    instance.__dict__.update(layout(cls).empty)
    instance.__dict__.update(values)
    return instance


def primitive(declared: Any, text: str) -> Any:
    """A simple value from its XML text, as Spyne's own parser gives it."""
    return converter(declared)(text)


@cache
def converter(declared: Any) -> Callable[[str], Any]:
    """How text becomes a value of a Spyne primitive type: found once per type."""
    if issubclass(declared, DateTime):
        return xs_datetime
    if issubclass(declared, Boolean):
        return boolean
    if issubclass(declared, Integer):
        return int
    return str


def boolean(text: str) -> bool:
    return text.strip().lower() in ("true", "1")


def xs_datetime(text: str) -> datetime:
    """An xs:dateTime; without a zone it is naive, as Spyne leaves it (stored as UTC).
    `mm7soap.canonical` gives only dates that `mm7soap.xsdatetime` can read."""
    moment = xsdatetime.parse(text.strip())
    if moment is None:
        raise ValueError(f"{text!r} is not an xs:dateTime")
    return moment


def write(cls: Any, instance: Any) -> str:
    """The children of an instance of `cls` as XML text, unprefixed (the MM7 namespace is
    the default namespace of the answer)."""
    out = []
    for member in layout(cls).order:
        value = getattr(instance, member.name, None)
        for item in (value if member.many else [value]) if value is not None else []:
            inner = write(member.type, item) if member.complex else escape(text_of(item), CARRIAGE_RETURN)
            out.append(f"<{member.name}>{inner}</{member.name}>")
    return "".join(out)


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def answer_document(namespace: str, name: str, cls: Any, instance: Any, transaction_id: str | None) -> bytes:
    """A whole SOAP answer in the style of MMSCs' own examples (see `mm7soap.soap.restyled`):
    `env:` prefix, MM7 as the default namespace, TransactionID echoed with mustUnderstand."""
    header = ""
    if transaction_id is not None:
        echoed = escape(transaction_id, CARRIAGE_RETURN)
        header = f'<env:Header><TransactionID env:mustUnderstand="1">{echoed}</TransactionID></env:Header>'
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        f'<env:Envelope xmlns:env="{SOAP_ENV}" xmlns="{namespace}">{header}'
        f"<env:Body><{name}>{write(cls, instance)}</{name}></env:Body></env:Envelope>"
    ).encode()

"""Reading an HTTP body: plain `text/xml`, or SOAP with Attachments and its MIME parts.

MMSCs label a bare envelope `multipart/related` with no boundary (Sinch), name the root
part by `start` with or without `<>`, or leave `start` out (then the first part is the
root, as Mbuni reads it) — spec.md §1.  The other parts carry a DeliverReq's content;
they are decoded here (base64, quoted-printable) and nested multiparts are kept as trees,
so that `mm7soap.content` can find what the envelope's `Content href` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from functools import lru_cache
from types import MappingProxyType

from mm7soap import errors


@lru_cache(maxsize=256)
def content_type_parts(content_type: str) -> tuple[str, Mapping[str, str]]:
    """(`type/subtype` lower-cased, parameters) of a Content-Type header value.

    Cached: an MMSC sends the same few Content-Types over and over, and the email
    parser's reading of one costs as much as the rest of the MIME handling.
    """
    message = Message()
    message["Content-Type"] = content_type or "text/xml"
    params = {k.lower(): str(v) for k, v in message.get_params(failobj=[], header="Content-Type")[1:]}
    return message.get_content_type(), MappingProxyType(params)


def strip_angles(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">").strip()


@dataclass(frozen=True)
class RootPart:
    """The SOAP envelope's bytes and the charset its Content-Type names, if any."""

    data: bytes
    charset: str | None = None


@dataclass(frozen=True)
class MimePart:
    """One MIME part other than the SOAP envelope, decoded.

    A multipart part holds its parts in `parts` and no `data` of its own.  Header values
    are as sent, minus the `<>` around a Content-ID.
    """

    content_type: str  # media type, lower-cased: image/jpeg
    charset: str | None = None
    content_id: str | None = None
    content_location: str | None = None
    filename: str | None = None
    data: bytes = b""
    parts: tuple[MimePart, ...] = ()

    @property
    def is_multipart(self) -> bool:
        # A multipart/* part whose boundary never appears was not split: it is one file.
        return bool(self.parts)


@dataclass(frozen=True)
class MimeBody:
    """An HTTP body read: the SOAP envelope, and every other top-level part in order."""

    root: RootPart
    attachments: tuple[MimePart, ...] = ()


def read_body(content_type: str, body: bytes) -> MimeBody:
    """The SOAP envelope carried by an HTTP request body, and its attachments."""
    media_type, params = content_type_parts(content_type)
    if not media_type.startswith("multipart/"):
        return MimeBody(RootPart(body, params.get("charset")))
    boundary = params.get("boundary")
    # Sinch's delivery reports: `multipart/related; type="text/xml";` and a bare envelope.
    if not boundary or f"--{boundary}".encode() not in body:
        return MimeBody(RootPart(body))
    message = BytesParser(policy=compat32).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1") + body
    )
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts:
        raise errors.ValidationError("the multipart body has no parts")
    root = find_start(parts, params.get("start"))
    payload = root.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise errors.ValidationError("the root part of the multipart body holds no XML")
    attachments = tuple(mime_part(part) for part in parts if part is not root)
    return MimeBody(RootPart(payload, root.get_content_charset()), attachments)


def find_start(parts: list[Message], start: str | None) -> Message:
    """The part whose Content-ID is `start`, else the first part."""
    if start:
        wanted = strip_angles(start)
        for part in parts:
            if strip_angles(header_text(part, "Content-ID") or "") == wanted:
                return part
    return parts[0]


def header_text(part: Message, name: str) -> str | None:
    """A header's value as text; the parser hands non-ASCII values over as Header objects."""
    value = part.get(name)
    return None if value is None else str(value).strip()


def mime_part(part: Message) -> MimePart:
    """A parsed email part as a MimePart, its body decoded and its own parts read."""
    media_type = part.get_content_type()
    content_id = header_text(part, "Content-ID")
    children: tuple[MimePart, ...] = ()
    data = b""
    payload = part.get_payload()
    if isinstance(payload, list):
        children = tuple(mime_part(child) for child in payload if isinstance(child, Message))
        if not media_type.startswith("multipart/"):
            # message/rfc822 and kin: the parser split them, but they are one file to a VASP.
            data = b"".join(child.as_bytes() for child in payload if isinstance(child, Message))
            children = ()
    else:
        decoded = part.get_payload(decode=True)
        data = decoded if isinstance(decoded, bytes) else b""
    return MimePart(
        content_type=media_type,
        charset=part.get_content_charset(),
        content_id=strip_angles(content_id) if content_id else None,
        content_location=header_text(part, "Content-Location") or None,
        filename=filename_of(part),
        data=data,
        parts=children,
    )


def filename_of(part: Message) -> str | None:
    """The name the sender gave a part: Content-Disposition's filename, else Content-Type's name."""
    try:
        name = part.get_filename() or part.get_param("name")
    except (TypeError, ValueError, LookupError):
        return None
    if isinstance(name, tuple):  # an RFC 2231 value the parser could not decode
        name = name[2]
    return str(name).strip() or None if name else None

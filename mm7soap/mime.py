"""Finding the SOAP envelope in an HTTP body: plain `text/xml` or SOAP with Attachments.

MMSCs label a bare envelope `multipart/related` with no boundary (Sinch), name the root
part by `start` with or without `<>`, or leave `start` out (then the first part is the
root, as Mbuni reads it) — spec.md §1.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from mm7soap import errors


def content_type_parts(content_type: str) -> tuple[str, dict[str, str]]:
    """(`type/subtype` lower-cased, parameters) of a Content-Type header value."""
    message = Message()
    message["Content-Type"] = content_type or "text/xml"
    params = {k.lower(): v for k, v in message.get_params(failobj=[], header="Content-Type")[1:]}
    return message.get_content_type(), {k: str(v) for k, v in params.items()}


def strip_angles(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">").strip()


@dataclass(frozen=True)
class RootPart:
    """The SOAP envelope's bytes and the charset its Content-Type names, if any."""

    data: bytes
    charset: str | None = None


def root_part(content_type: str, body: bytes) -> RootPart:
    """The SOAP envelope carried by an HTTP request body."""
    media_type, params = content_type_parts(content_type)
    if not media_type.startswith("multipart/"):
        return RootPart(body, params.get("charset"))
    boundary = params.get("boundary")
    # Sinch's delivery reports: `multipart/related; type="text/xml";` and a bare envelope.
    if not boundary or f"--{boundary}".encode() not in body:
        return RootPart(body)
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
    return RootPart(payload, root.get_content_charset())


def find_start(parts: list[Message], start: str | None) -> Message:
    """The part whose Content-ID is `start`, else the first part."""
    if start:
        wanted = strip_angles(start)
        for part in parts:
            if strip_angles(str(part.get("Content-ID", ""))) == wanted:
                return part
    return parts[0]

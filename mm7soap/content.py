"""The MM content of a DeliverReq: the MIME parts its `<Content href>` names, flattened.

A DeliverReq points at its content with `<Content href="cid:…"/>` (spec.md §4.5).  MMSCs
write that reference as `cid:x`, as `x`, as `cid: x` (with a space) or percent-encoded,
and the part they mean carries the id in its Content-ID, with or without `<>`, or in its
Content-Location.  When nothing matches, every part but the SOAP envelope is the content:
the 3GPP example itself names a Content-ID that differs from its part's by a typo
(samples/instantcom-3.txt), and dropping a subscriber's picture over that would be wrong.
A multipart content part (a SMIL presentation, multipart/mixed) is unpacked into its parts.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mm7soap.mime import MimePart, strip_angles

# How the content was found, as stored with the message.
BY_HREF = "href"  # the part the href names
ALL_PARTS = "all-parts"  # no href, or it named nothing: every non-SOAP part
NO_CONTENT = "none"  # the request carried no part besides the envelope


@dataclass(frozen=True)
class ContentPart:
    """One file of an MM, as stored: where it came from in the MIME body, and its bytes."""

    position: int
    content_type: str
    charset: str | None
    content_id: str | None
    content_location: str | None
    filename: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class MMContent:
    """The parts of an MM, in MIME order, and how they were found (`BY_HREF`, …)."""

    parts: tuple[ContentPart, ...]
    found_by: str


def reference(href: str | None) -> str | None:
    """The id a Content href names: `cid:` and `<>` dropped, percent-escapes decoded."""
    if href is None:
        return None
    value = href.strip()
    if value[:4].lower() == "cid:":
        value = value[4:]
    value = strip_angles(unquote(value.strip()))
    return value or None


def mm_content(href: str | None, attachments: Iterable[MimePart]) -> MMContent:
    """The content of a DeliverReq whose `Content href` is `href`."""
    attachments = tuple(attachments)
    wanted = reference(href)
    named = find_named(attachments, wanted) if wanted else None
    if named is not None:
        return MMContent(numbered(leaves([named])), BY_HREF)
    if attachments:
        return MMContent(numbered(leaves(attachments)), ALL_PARTS)
    return MMContent((), NO_CONTENT)


def find_named(parts: Iterable[MimePart], wanted: str) -> MimePart | None:
    """The first part, depth first, whose Content-ID or Content-Location is `wanted`."""
    wanted = wanted.casefold()
    for part in parts:
        names = (part.content_id, part.content_location)
        if any(name is not None and strip_angles(unquote(name)).casefold() == wanted for name in names):
            return part
        nested = find_named(part.parts, wanted)
        if nested is not None:
            return nested
    return None


def leaves(parts: Iterable[MimePart]) -> Iterator[MimePart]:
    for part in parts:
        if part.is_multipart:
            yield from leaves(part.parts)
        else:
            yield part


def numbered(parts: Iterable[MimePart]) -> tuple[ContentPart, ...]:
    return tuple(
        ContentPart(
            position=position,
            content_type=part.content_type,
            charset=part.charset,
            content_id=part.content_id,
            content_location=part.content_location,
            filename=part.filename,
            data=part.data,
        )
        for position, part in enumerate(parts, start=1)
    )


# What may appear in a file name written from a part; a sender chooses the name.
UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def part_file_name(part: dict[str, Any]) -> str:
    """A safe local file name for a stored part: its position, then the sender's name for it
    (filename, else Content-Location, else Content-ID) reduced to harmless characters, with
    an extension guessed from the content type when it has none."""
    given = part.get("filename") or part.get("content_location") or part.get("content_id") or ""
    name = UNSAFE_FILE_CHARACTERS.sub("_", re.split(r"[/\\]", given)[-1]).strip("._")
    if "." not in name:
        name = (name or "part") + (mimetypes.guess_extension(part.get("content_type") or "") or ".bin")
    return f"{part['position']}-{name}"


def write_parts(parts: Iterable[dict[str, Any]], folder: Path) -> list[Path]:
    """Write each stored part (with its `data`) into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for part in parts:
        path = folder / part_file_name(part)
        path.write_bytes(part["data"])
        written.append(path)
    return written

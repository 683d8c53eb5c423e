"""Namespace constants: SOAP 1.1 and the eleven MM7 schema namespaces (3GPP TS 23.140)."""

from __future__ import annotations

from functools import lru_cache

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"

MM7_PREFIX = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/"

# Every MM7 schema revision an MMSC may address us in, oldest first.  A request is
# answered in the namespace it arrived in (spec.md §3), so each gets its own service.
MM7_NAMES: tuple[str, ...] = (
    "REL-5-MM7-1-0",
    "REL-5-MM7-1-1",
    "REL-5-MM7-1-2",
    "REL-5-MM7-1-3",
    "REL-5-MM7-1-4",
    "REL-5-MM7-1-5",
    "REL-6-MM7-1-0",
    "REL-6-MM7-1-1",
    "REL-6-MM7-1-2",
    "REL-6-MM7-1-3",
    "REL-6-MM7-1-4",
)

MM7_NAMESPACES: dict[str, str] = {name: MM7_PREFIX + name for name in MM7_NAMES}

# The namespace used when a request's own cannot be read (issue 3's error contract).
DEFAULT_NAME = "REL-6-MM7-1-4"
DEFAULT_NAMESPACE = MM7_NAMESPACES[DEFAULT_NAME]
DEFAULT_MM7_VERSION = "6.8.0"


def default_version(namespace: str) -> str:
    """The MM7Version to answer with when a request carries none: Sinch's pairing (sinch.md
    §1) of 6.8.0 with REL-6-MM7-1-4 and 5.3.0 with every other namespace."""
    return DEFAULT_MM7_VERSION if namespace == DEFAULT_NAMESPACE else "5.3.0"


def mm7_name(namespace: str) -> str | None:
    """`REL-6-MM7-1-4` for its full URI; None for anything that is not an MM7 namespace.

    Momentum once wrote the namespace with a trailing `.xsd` (spec.md §3); that is accepted.
    """
    uri = namespace.strip()
    if uri.endswith(".xsd"):
        uri = uri[: -len(".xsd")]
    if not uri.startswith(MM7_PREFIX):
        return None
    name = uri[len(MM7_PREFIX) :]
    return name if name in MM7_NAMESPACES else None


def local_name(tag: object) -> str:
    """The local part of an lxml tag (`{ns}Name` → `Name`); '' for comments and PIs."""
    return _local_name(tag) if isinstance(tag, str) else ""


@lru_cache(maxsize=4096)
def _local_name(tag: str) -> str:
    # Cached: a request is read by local name, element by element, and its tags repeat.
    return tag.rsplit("}", 1)[-1]


def namespace_of(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""

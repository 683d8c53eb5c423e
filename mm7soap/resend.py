"""Resends: when a request is one already stored, so it is answered 1000 and not stored again.

A resend is a request that says the same as a stored one.  What it said is every column its
row stores, except what tells copies of one request apart: the row's id, when it arrived,
its TransactionID (an MMSC may renumber its retries), the client's address (a retry may
come from another node of the MMSC) and the raw envelope (which holds the TransactionID).
A TransactionID alone never makes a resend (issue 17): Sinch reuses the MessageID for
`Forwarded` and then the final state, and some MMSCs derive the TransactionID from it.

The columns said are hashed into `fingerprint`, which a unique index enforces: two
requests that differ in any column said, however slightly, are two rows.  For an MO the
parts count too (their decoded bytes and how they are labelled), but not the MIME names an
MMSC may rebuild on a retry (boundaries, Content-IDs, and the `href` that quotes one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cache
from typing import Any

# Columns that tell copies of one request apart rather than say what it is.
NOT_SAID = frozenset({"id", "received_at", "transaction_id", "client_address", "raw_envelope", "fingerprint"})
# An MO's columns and parts' columns that name MIME parts rather than say what they hold.
MIME_NAMES = frozenset({"content_href", "content_id", "id", "message", "data", "size", "position"})


def said_columns(columns: Iterable[str], also_not: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The columns a request says, in a fixed order (the digest lists their values in it)."""
    return known_said_columns(tuple(columns), also_not)


@cache
def known_said_columns(columns: tuple[str, ...], also_not: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(column for column in columns if column not in NOT_SAID | also_not))


def digest(items: Any) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def report_fingerprint(row: dict[str, Any], columns: Iterable[str]) -> str:
    """What a delivery report or read reply says: every stored column but NOT_SAID."""
    return digest([row.get(column) for column in said_columns(columns)])


def message_fingerprint(
    row: dict[str, Any], columns: Iterable[str], parts: list[dict[str, Any]], part_columns: Iterable[str]
) -> str:
    """What an MO says: its columns and, in order, each part's bytes (SHA-256) and labels."""
    said: list[Any] = [row.get(column) for column in said_columns(columns, MIME_NAMES)]
    labels = said_columns(part_columns, MIME_NAMES)
    said.append([[part.get(column) for column in labels] for part in parts])
    return digest(said)

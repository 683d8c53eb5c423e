"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks.

Each delivery carries `webhook-id` (the event's id, the same on every retry, for dedupe),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: `v1,` and the
base64 HMAC-SHA256, keyed with the secret's bytes, of `id.timestamp.body`.  The spec's
libraries verify it in any language; `tests/test_forwarder.py` checks ours with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The HTTP headers of one delivery of an event."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id, timestamp, body),
    }

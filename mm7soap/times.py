"""Stored times: UTC, fixed width (`2026-11-27T19:31:53.207268Z`), so that text order is
time order (`--since`, the outbox's `next_attempt_at`)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_timestamp(moment: datetime | None = None) -> str:
    """A time as stored (now, when not given); one without a zone is taken as UTC (Sinch sends UTC)."""
    if moment is None:
        moment = datetime.now(timezone.utc)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    # isoformat, not strftime: glibc's %Y writes year 1 as `1`, not `0001`.
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_stored(text: str) -> datetime:
    """A stored time (`utc_timestamp`) back as an aware datetime."""
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=timezone.utc)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time given by a person (`2026-11-27`, `…T10:00Z`, `…+01:00`)."""
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))

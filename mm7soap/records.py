"""What is stored of each MM7 request: the rows of `mm7soap.schema`, built from what Spyne
read (`mm7soap.types` objects), the values kept as sent, and what HTTP said."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mm7soap.content import MMContent
from mm7soap.envelope import ReadEnvelope
from mm7soap.mime import MimePart
from mm7soap.resend import message_fingerprint, report_fingerprint
from mm7soap.schema import MESSAGE_COLUMNS, PART_COLUMNS, READ_REPLY_COLUMNS, REPORT_COLUMNS
from mm7soap.times import utc_timestamp
from mm7soap.types import ADDRESS_KINDS


@dataclass(frozen=True)
class Inbound:
    """What the HTTP request says about a message, beyond its envelope."""

    raw_envelope: bytes
    # The charset the HTTP Content-Type (or the MIME root part) named, if any.
    charset: str | None = None
    client_address: str | None = None
    operator_id: str | None = None
    # The MIME parts besides the envelope: a DeliverReq's content.
    attachments: tuple[MimePart, ...] = ()
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def address_value(address: Any) -> tuple[str, Any] | None:
    """(kind, value) of an address: whichever of RFC2822Address, Number, ShortCode it holds."""
    for kind in ADDRESS_KINDS:
        value = getattr(address, kind, None) if address is not None else None
        if value is not None:
            return kind, value
    return None


def address_columns(prefix: str, address: Any) -> dict[str, Any]:
    """recipient/sender, its kind (Number, ShortCode, RFC2822Address) and its attributes."""
    found = address_value(address)
    if found is None:
        return {}
    kind, value = found
    return {
        prefix: value.value,
        f"{prefix}_kind": kind,
        f"{prefix}_display_only": None if value.displayOnly is None else int(value.displayOnly),
        f"{prefix}_address_coding": value.addressCoding,
        f"{prefix}_address_id": value.id,
    }


def address_entry(kind: str, value: Any, **extra: Any) -> dict[str, Any]:
    """An address as a JSON object, without the attributes it did not carry."""
    entry = {
        **extra,
        "kind": kind,
        "address": value.value,
        "display_only": value.displayOnly,
        "address_coding": value.addressCoding,
        "address_id": value.id,
    }
    return {key: item for key, item in entry.items() if item is not None}


def origin_columns(req: Any, read: ReadEnvelope, inbound: Inbound) -> dict[str, Any]:
    return {
        "received_at": utc_timestamp(inbound.received_at),
        "transaction_id": read.transaction_id,
        "namespace": read.namespace_name,
        "mm7_version": req.MM7Version,
        "operator_id": inbound.operator_id,
        "client_address": inbound.client_address,
        "raw_envelope": inbound.raw_envelope,
    }


def application_columns(req: Any) -> dict[str, Any]:
    return {"applic_id": req.ApplicID, "reply_applic_id": req.ReplyApplicID, "aux_applic_info": req.AuxApplicInfo}


def capabilities_columns(req: Any, read: ReadEnvelope) -> dict[str, Any]:
    capabilities = req.UACapabilities
    return {
        "ua_prof": capabilities.UAProf if capabilities is not None else None,
        "ua_timestamp": read.as_sent.get("UACapabilities/TimeStamp"),
    }


def when(moment: datetime | None) -> str | None:
    return utc_timestamp(moment) if moment is not None else None


def report_columns(req: Any, read: ReadEnvelope, inbound: Inbound) -> dict[str, Any]:
    """What a delivery report and a read reply both say about an MM the VASP sent."""
    return {
        "message_id": req.MessageID,
        **address_columns("recipient", req.Recipient),
        **address_columns("sender", req.Sender),
        "mm_status": req.MMStatus,
        "status_text": req.StatusText,
        "mms_relay_server_id": req.MMSRelayServerID,
        **application_columns(req),
        **origin_columns(req, read, inbound),
    }


def delivery_report_row(req: Any, read: ReadEnvelope, inbound: Inbound) -> dict[str, Any]:
    """The stored row of a delivery report: every field, as sent and normalised."""
    row = {
        **report_columns(req, read, inbound),
        "date_sent": read.as_sent.get("Date"),
        "date_utc": when(req.Date),
        "mm_status_extension": req.MMStatusExtension,
        **capabilities_columns(req, read),
    }
    row["fingerprint"] = report_fingerprint(row, REPORT_COLUMNS)
    return row


def read_reply_row(req: Any, read: ReadEnvelope, inbound: Inbound) -> dict[str, Any]:
    """The stored row of a read reply: TimeStamp where a delivery report has Date."""
    row = {
        **report_columns(req, read, inbound),
        "time_stamp_sent": read.as_sent.get("TimeStamp"),
        "time_stamp_utc": when(req.TimeStamp),
    }
    row["fingerprint"] = report_fingerprint(row, READ_REPLY_COLUMNS)
    return row


def recipient_entries(recipients: Any) -> list[dict[str, Any]]:
    """Every address of Recipients, list by list (To, Cc, Bcc)."""
    entries = []
    for list_name in ("To", "Cc", "Bcc"):
        listed = getattr(recipients, list_name, None) if recipients is not None else None
        for kind in ADDRESS_KINDS:
            for value in (getattr(listed, kind, None) or []) if listed is not None else []:
                entries.append(address_entry(kind, value, list=list_name))
    return entries


def previously_sent(req: Any, read: ReadEnvelope) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Previouslysentby and Previouslysentdateandtime, as JSON-ready lists; each date as
    sent, and in UTC when it is an xs:dateTime."""
    by = []
    for agent in (req.Previouslysentby.UserAgent or []) if req.Previouslysentby is not None else []:
        found = address_value(agent)
        if found is not None:
            by.append(address_entry(*found, sequence=agent.sequence))
    dates = []
    sent = req.Previouslysentdateandtime
    for index, moment in enumerate((sent.DateTime or []) if sent is not None else []):
        entry = {
            "sequence": moment.sequence,
            "date_sent": read.as_sent.get(f"Previouslysentdateandtime/DateTime[{index}]"),
            "date_utc": when(moment.value),
        }
        dates.append({key: value for key, value in entry.items() if value is not None})
    return by, dates


def as_json(items: list[dict[str, Any]]) -> str | None:
    return json.dumps(items, ensure_ascii=False) if items else None


def message_row(req: Any, read: ReadEnvelope, inbound: Inbound, content: MMContent) -> dict[str, Any]:
    """The stored row of an MO message (its parts are `part_rows`)."""
    recipients = recipient_entries(req.Recipients)
    sent_by, sent_at = previously_sent(req, read)
    reference = req.Content
    row = {
        "linked_id": req.LinkedID,
        **address_columns("sender", req.Sender),
        "recipients": as_json(recipients),
        "subject": req.Subject,
        "priority": req.Priority,
        "time_stamp_sent": read.as_sent.get("TimeStamp"),
        "time_stamp_utc": when(req.TimeStamp),
        "vasp_id": req.VASPID,
        "vas_id": req.VASID,
        "mms_relay_server_id": req.MMSRelayServerID,
        "sender_spi": req.SenderSPI,
        "recipient_spi": req.RecipientSPI,
        "reply_charging_id": req.ReplyChargingID,
        **application_columns(req),
        "previously_sent_by": as_json(sent_by),
        "previously_sent_date_and_time": as_json(sent_at),
        **capabilities_columns(req, read),
        "content_href": read.as_sent.get("Content/href"),
        "allow_adaptations": None
        if reference is None or reference.allowAdaptations is None
        else int(reference.allowAdaptations),
        "content_found_by": content.found_by,
        "part_count": len(content.parts),
        "content_bytes": sum(part.size for part in content.parts),
        **origin_columns(req, read, inbound),
    }
    row["fingerprint"] = message_fingerprint(row, MESSAGE_COLUMNS, part_rows(content), PART_COLUMNS)
    return row


def part_rows(content: MMContent) -> list[dict[str, Any]]:
    """The stored rows of an MM's parts (their `message` is set when stored)."""
    return [
        {
            "position": part.position,
            "content_type": part.content_type,
            "charset": part.charset,
            "content_id": part.content_id,
            "content_location": part.content_location,
            "filename": part.filename,
            "size": part.size,
            "sha256": part.sha256,
            "data": part.data,
        }
        for part in content.parts
    ]

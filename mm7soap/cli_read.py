"""`mm7soap reports`, `report`, `messages` and `message`: what the endpoint stored, read back,
a thin layer over mm7soap.store. A module of their own so that cli.py stays the group and the
helpers its commands share; registered on the `mm7soap` group at the end of mm7soap/cli.py
(whose helpers these commands use: import mm7soap.cli, not this module, first)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from mm7soap.cli import database_option, existing_store, json_ready, print_rows, since_option
from mm7soap.content import write_parts
from mm7soap.store import REPORT_KINDS

# What `reports` and `messages` print per row without --json, in this order.
REPORT_TABLE = (
    "kind",
    "id",
    "received_at",
    "message_id",
    "recipient",
    "sender",
    "mm_status",
    "status_text",
    "operator_id",
)
MESSAGE_TABLE = ("id", "received_at", "sender", "recipients", "subject", "part_count", "content_bytes", "operator_id")
PART_TABLE = ("position", "content_type", "content_id", "content_location", "filename", "size", "sha256")
# What `message` leaves out of its summary: bytes and internals.
MESSAGE_HIDDEN = ("raw_envelope", "fingerprint")


@click.command()
@database_option
@click.option("--message-id", help="Only reports for this MessageID.")
@click.option("--recipient", help="Only reports for this recipient address.")
@click.option("--status", help="Only reports with this MMStatus (as sent, e.g. Retrieved or Read).")
@click.option(
    "--kind",
    type=click.Choice([*REPORT_KINDS, "all"]),
    default="all",
    show_default=True,
    help="Delivery reports, read replies, or both.",
)
@since_option
@click.option("--limit", type=int, default=None, help="At most this many reports.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every stored field.")
def reports(
    database: str | None,
    message_id: str | None,
    recipient: str | None,
    status: str | None,
    kind: str,
    since: datetime | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List stored delivery reports and read replies, newest first.

    \b
    Example:
        mm7soap reports --kind DeliveryReport --status Retrieved --since 2026-11-01T00:00:00Z
    """
    kinds = REPORT_KINDS if kind == "all" else (kind,)
    with existing_store(database) as store:
        rows = store.reports(
            kinds=kinds, message_id=message_id, recipient=recipient, status=status, since=since, limit=limit
        )
    print_rows(rows, REPORT_TABLE, as_json)


@click.command()
@database_option
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every stored field.")
def report(database: str | None, message_id: str, as_json: bool) -> None:
    """Show every delivery report and read reply for one MESSAGE_ID, newest first.

    \b
    Example:
        mm7soap report 369500617770864640
    """
    with existing_store(database) as store:
        rows = store.reports(message_id=message_id)
    if not rows:
        raise click.ClickException(f"no report for MessageID {message_id}")
    print_rows(rows, REPORT_TABLE, as_json)


@click.command()
@database_option
@click.option("--sender", help="Only messages from this sender address.")
@since_option
@click.option("--limit", type=int, default=None, help="At most this many messages.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every stored field but the parts' bytes.")
def messages(
    database: str | None, sender: str | None, since: datetime | None, limit: int | None, as_json: bool
) -> None:
    """List stored mobile-originated messages (DeliverReq), newest first.

    \b
    Example:
        mm7soap messages --sender 15551230001 --since 2026-11-27
    """
    with existing_store(database) as store:
        rows = [message_summary(row, as_json) for row in store.messages(sender=sender, since=since, limit=limit)]
    print_rows(rows, MESSAGE_TABLE, as_json)


@click.command()
@database_option
@click.argument("message", type=int)
@click.option(
    "--save-parts",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each part of the message into this folder (created if needed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the message and its parts' details.")
def message(database: str | None, message: int, save_parts: Path | None, as_json: bool) -> None:
    """Show one mobile-originated MESSAGE (its id in `mm7soap messages`) and its parts,
    or with --save-parts write the parts to files and list them.

    \b
    Example:
        mm7soap message 12 --save-parts ./mo-12
    """
    with existing_store(database) as store:
        row = store.message(message)
        if row is None:
            raise click.ClickException(f"no message {message}")
        parts = store.message_parts(message, with_data=save_parts is not None)
    if save_parts is not None:
        for path in write_parts(parts, save_parts):
            click.echo(str(path))
        return
    details = message_summary(row, as_json)
    if as_json:
        details["parts"] = [{k: v for k, v in part.items() if k != "data"} for part in parts]
        click.echo(json.dumps(json_ready(details), indent=2, ensure_ascii=False))
        return
    width = max(len(name) for name in details)
    for name, value in details.items():
        if value is not None and name not in MESSAGE_HIDDEN:
            click.echo(f"{name.ljust(width)}  {value}")
    click.echo("")
    print_rows(parts, PART_TABLE, as_json=False)


def message_summary(row: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A message row for people: recipients as `To:…` text, or as JSON when printing JSON."""
    recipients = json.loads(row["recipients"]) if row.get("recipients") else []
    if as_json:
        return {**row, "recipients": recipients}
    listed = ", ".join(f"{entry['list']}:{entry['address']}" for entry in recipients)
    return {**row, "recipients": listed or None}


READING = (reports, report, messages, message)

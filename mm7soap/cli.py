"""The `mm7soap` command: a thin layer over the library."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import psycopg

from mm7soap import errors, outbox_admin, postgres
from mm7soap.checks import Outcome, send_many
from mm7soap.checks import send as send_one
from mm7soap.content import write_parts
from mm7soap.envelope import raw_text
from mm7soap.mmsc import FORMATS, SINCH, Connection, MobileOriginated, Report, Request
from mm7soap.namespaces import DEFAULT_NAME, MM7_NAMESPACES
from mm7soap.settings import ENV_PREFIX, Settings
from mm7soap.store import REPORT_KINDS, Store
from mm7soap.times import parse_time

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


def database_option(command: Any) -> Any:
    return click.option(
        "--database",
        "-d",
        type=click.Path(dir_okay=False),
        metavar="FILE|URL",
        default=None,
        help="SQLite file, or PostgreSQL database as a postgresql:// URL (default: $MM7SOAP_DATABASE or ./mm7soap.db).",
    )(command)


since_option = click.option(
    "--since",
    callback=lambda ctx, param, value: parse_since(value),
    help="Only what was received at or after this time (ISO 8601; no zone means UTC).",
)


@click.group()
@click.version_option(package_name="mm7soap")
def cli() -> None:
    """mm7soap: an MM7 (3GPP TS 23.140) endpoint that stores what an MMSC sends.

    \b
    Example:
        mm7soap serve --port 8080
    """


# The help of `serve`: the variables are listed from the Settings dataclass, so never stale.
SERVE_HELP = """Run the MM7 endpoint under gunicorn.

A flag overrides its MM7SOAP_* environment variable; every other setting is read from its
variable (README, Settings): {variables}.

\b
Example:
    mm7soap serve --database /var/lib/mm7soap/mm7soap.db --host 0.0.0.0 --port 8080
"""


@cli.command(help=SERVE_HELP.format(variables=", ".join(ENV_PREFIX + f.name.upper() for f in fields(Settings))))
@database_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", "-p", type=int, default=None, help="Port to listen on (default 8080).")
@click.option("--path", default=None, help="Endpoint path (default /mm7; / also works).")
@click.option("--workers", "-w", type=int, default=None, help="gunicorn worker processes (default 2).")
def serve(database: str | None, host: str | None, port: int | None, path: str | None, workers: int | None) -> None:
    from mm7soap.serving import configured
    from mm7soap.serving import serve as run

    run(configured(database=database, host=host, port=port, path=path, workers=workers))


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("wsdl"))
def wsdl(folder: Path) -> None:
    """Write the WSDL of every MM7 namespace into FOLDER (default ./wsdl).

    \b
    Example:
        mm7soap wsdl wsdl/
    """
    from mm7soap.service import Endpoint
    from mm7soap.wsdl import WsdlDocuments

    with Store(checked_settings(database=":memory:")) as store:
        for path in WsdlDocuments(Endpoint(store)).write(folder):
            click.echo(str(path))


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command()
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


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-27T10:00:00Z") from None


def json_ready(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row for JSON: the raw envelope as the text it is."""
    raw = row.get("raw_envelope")
    return {**row, "raw_envelope": raw_text(raw)} if isinstance(raw, bytes) else row


def print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([json_ready(row) for row in rows], indent=2, ensure_ascii=False))
        return
    widths = {c: max([len(c)] + [len(cell(r.get(c))) for r in rows]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    click.echo("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        click.echo("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns).rstrip())


def cell(value: Any) -> str:
    """A value in a table: empty for NULL, but 0 shown as 0."""
    return "" if value is None else str(value)


@cli.command()
@click.argument("url")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--read-reply", is_flag=True, help="Send a ReadReplyReq instead of a DeliveryReportReq.")
@click.option("--deliver", is_flag=True, help="Send a DeliverReq (an MO) with FILES as its attachments.")
@click.option("--message-id", help="The MessageID a report or read reply is about.")
@click.option("--recipient", required=True, help="Recipient address (an MO's: your short code).")
@click.option("--sender", required=True, help="Sender address (a report's: your short code).")
@click.option("--status", help="MMStatus (default Retrieved, or Read with --read-reply).")
@click.option("--status-text", help="StatusText of a report or read reply.")
@click.option("--subject", help="Subject of an MO.")
@click.option("--linked-id", help="LinkedID of an MO (Sinch always sends one).")
@click.option("--namespace", default=DEFAULT_NAME, show_default=True, help="MM7 namespace, by name or URI.")
@click.option("--version", help="MM7Version (default: 6.8.0 for REL-6-MM7-1-4, 5.3.0 otherwise).")
@click.option("--transaction-id", help="TransactionID (default: a random one).")
@click.option("--carrier-id", help="X-Mblox-Carrier-Id header, e.g. 0001890.")
@click.option("--user", help="HTTP Basic user.")
@click.option("--password", help="HTTP Basic password.")
@click.option(
    "--format",
    "wire_format",
    type=click.Choice(FORMATS),
    default=SINCH,
    show_default=True,
    help="How the envelope is framed: sinch (multipart/related with no boundary around a bare envelope,"
    " as Sinch sends reports), text-xml (a plain text/xml body), swa (SOAP with Attachments: a real"
    " multipart/related with start). An MO with FILES is always multipart/related.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    help="Send this many distinct requests, each with its own TransactionID and Date (TimeStamp),"
    " so that each is stored; prints a summary instead of each answer.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=1, help="Connections used at once with --count.")
@click.option(
    "--resend",
    is_flag=True,
    help="With --count: send the very same request (TransactionID and Date too) each time, as an MMSC"
    " retrying it; the endpoint should store it once and acknowledge every copy.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for each answer.")
def send(url: str, files: tuple[Path, ...], **options: Any) -> None:
    """Post an MM7 request to URL as an MMSC (Sinch) does, print the answer and check it.

    The checks are an MMSC's: HTTP 200, text/xml, the matching *Rsp in the request's
    namespace, MM7Version and TransactionID (with mustUnderstand) echoed, StatusCode 1000.
    The exit status is 0 only when every check passed for every request sent.

    By default a DeliveryReportReq; --read-reply sends a ReadReplyReq, --deliver an MO
    (DeliverReq) carrying FILES. The examples: a read reply, an MO with two attachments,
    200 distinct delivery reports over 8 connections, and one delivery report.

    \b
    Example:
        mm7soap send http://127.0.0.1:8080/mm7 --read-reply \\
            --message-id 4711 --recipient 15551230001 --sender 24680
        mm7soap send http://127.0.0.1:8080/mm7 --deliver photo.jpg note.txt \\
            --sender 15551230001 --recipient 24680 --subject Hi --linked-id mo-1
        mm7soap send http://127.0.0.1:8080/mm7 --count 200 --concurrency 8 \\
            --message-id 4711 --recipient 15551230001 --sender 24680
        mm7soap send http://127.0.0.1:8080/mm7 --message-id 4711 --recipient 15551230001 --sender 24680
    """
    request = mmsc_request(files, options)

    def connect() -> Connection:
        return Connection(url, options["timeout"], options["user"], options["password"])

    if options["count"] == 1:
        outcome = send_one(request, connect)
        print_outcome(outcome)
        if not outcome.passed:
            raise SystemExit(1)
        return
    started = time.monotonic()
    outcomes = send_many(request, connect, options["count"], options["concurrency"], options["resend"])
    print_summary(outcomes, time.monotonic() - started, options["resend"])
    if not all(outcome.passed for outcome in outcomes):
        raise SystemExit(1)


def mmsc_request(files: tuple[Path, ...], options: dict[str, Any]) -> Request:
    """The request `send`'s options describe, or a usage error saying what is missing."""
    namespace = options["namespace"]
    namespace = MM7_NAMESPACES.get(namespace, namespace)
    if namespace not in MM7_NAMESPACES.values():
        raise click.BadParameter(f"{options['namespace']!r} is not an MM7 namespace", param_hint="--namespace")
    if files and not options["deliver"]:
        raise click.UsageError("FILES are attachments of an MO: add --deliver")
    if options["deliver"] and options["read_reply"]:
        raise click.UsageError("--deliver and --read-reply are two different requests; choose one")
    body: Report | MobileOriginated
    if options["deliver"]:
        body = MobileOriginated(
            sender=options["sender"],
            recipient=options["recipient"],
            files=files,
            subject=options["subject"],
            linked_id=options["linked_id"],
        )
    else:
        if not options["message_id"]:
            raise click.UsageError("a delivery report or read reply needs --message-id")
        body = Report(
            message_id=options["message_id"],
            recipient=options["recipient"],
            sender=options["sender"],
            status=options["status"] or ("Read" if options["read_reply"] else "Retrieved"),
            status_text=options["status_text"],
            read_reply=options["read_reply"],
        )
    request = Request(
        body=body,
        namespace=namespace,
        version=options["version"],
        carrier_id=options["carrier_id"],
        wire_format=options["wire_format"],
    )
    return replace(request, transaction_id=options["transaction_id"]) if options["transaction_id"] else request


def print_outcome(outcome: Outcome) -> None:
    reply = outcome.reply
    click.echo(f"> POST {outcome.request.operation} TransactionID {outcome.request.transaction_id}")
    if reply is not None:
        click.echo(f"< HTTP {reply.status} {reply.reason}")
        for name, value in reply.headers:
            click.echo(f"< {name}: {value}")
        click.echo("")
        click.echo(reply.body.decode("utf-8", "replace"))
        click.echo("")
    for check in outcome.checks:
        detail = f"  ({check.detail})" if check.detail else ""
        click.echo(f"{'PASS' if check.passed else 'FAIL'}  {check.name}{detail}")


def print_summary(outcomes: list[Outcome], seconds: float, resend: bool) -> None:
    """How many passed, and what that means for what the endpoint stored: the answer does not
    say whether a request was stored or taken as a resend of one stored before."""
    succeeded = sum(outcome.passed for outcome in outcomes)
    click.echo(f"{len(outcomes)} sent, {succeeded} succeeded, {len(outcomes) - succeeded} failed in {seconds:.2f} s")
    request = outcomes[0].request
    if resend:
        click.echo(
            f"the same {request.operation} {len(outcomes)} times (--resend): it should be stored once,"
            " every other copy acknowledged as a resend"
        )
    else:
        click.echo(
            f"{len(outcomes)} distinct {request.operation}, each with its own TransactionID and"
            f" {request.stamp_name}: each one acknowledged should be stored as a new one"
        )
    failures = Counter(check.name for outcome in outcomes for check in outcome.checks if not check.passed)
    for name, times in failures.most_common():
        click.echo(f"FAIL  {name}: {times}")


class ConfigError(click.ClickException):
    """A command that cannot run as configured (settings, database path): exit 2, like a usage error."""

    exit_code = 2


def checked_settings(**overrides: Any) -> Settings:
    """The settings, or a clean error naming what is wrong (the messages never repeat a secret)."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:
        raise ConfigError(f"bad settings: {exc}") from None


@contextmanager
def existing_store(database: str | None) -> Iterator[Store]:
    """The Store of a database that exists: an outbox command never creates an empty one at a
    mistyped path (it would answer "no events" about the wrong file)."""
    settings = checked_settings(database=database)
    on_file = settings.database != ":memory:" and not postgres.is_postgresql(settings.database)
    if on_file and not Path(settings.database).is_file():
        raise ConfigError(f"no database at {settings.database} (give -d/--database or set MM7SOAP_DATABASE)")
    try:
        with Store(settings) as store:
            yield store
    except errors.StoreError as exc:  # e.g. cannot connect: it names the database, never its password
        raise click.ClickException(postgres.first_line(exc)) from None
    except (sqlite3.DatabaseError, psycopg.Error) as exc:
        name = postgres.redacted(settings.database)
        raise click.ClickException(f"cannot use the database {name}: {postgres.first_line(exc)}") from None


@cli.command()
@database_option
def forward(database: str | None) -> None:
    """Deliver stored events to the webhook until stopped.

    Each stored report, read reply and MO message is POSTed to MM7SOAP_WEBHOOK_URL as an
    event signed with MM7SOAP_WEBHOOK_SECRET; SIGTERM or Ctrl-C let the deliveries in flight
    finish first.

    `mm7soap serve` (and gunicorn -c gunicorn.conf.py) already run the forwarder beside the
    workers when a webhook URL is set: run this one on its own, e.g. as its own service.

    \b
    Example:
        mm7soap forward --database /var/lib/mm7soap/mm7soap.db
    """
    from mm7soap import forwarder

    settings = checked_settings(database=database)
    if not settings.webhook_url:
        raise ConfigError("no webhook URL: set MM7SOAP_WEBHOOK_URL and MM7SOAP_WEBHOOK_SECRET to forward events")
    with existing_store(database) as store:
        store.migrate()  # the outbox of a database written by an earlier release
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s [forwarder] %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per delivery, nor the URL's password
    forwarder.run_forever(settings)


OUTBOX_TABLE = ("sequence", "state", "type", "source_id", "order_key", "created_at", "attempts", "last_error")


def outbox_database(database: str | None) -> str | None:
    """A subcommand's -d, else the one given to `mm7soap outbox`."""
    parent = click.get_current_context().parent
    return database or (parent.params.get("database") if parent is not None else None)


@cli.group(invoke_without_command=True)
@database_option
@click.option("--errors", type=click.IntRange(min=0), default=5, show_default=True, help="Distinct errors shown.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def outbox(ctx: click.Context, database: str | None, errors: int, as_json: bool) -> None:
    """Summarise the webhook's events; list, retry and prune them.

    The summary: how many events are pending, delivered and failed, how old the oldest
    pending one is, and the last distinct errors of the events not delivered.

    \b
    Example:
        mm7soap outbox --database /var/lib/mm7soap/mm7soap.db
    """
    if ctx.invoked_subcommand is not None:
        return
    with existing_store(database) as store:
        found = outbox_admin.summary(store.db, errors)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    for state, count in found.counts.items():
        line = f"{state.ljust(9)}  {count:>6}"
        if state == "pending" and found.oldest_pending_age is not None:
            age = outbox_admin.age_text(found.oldest_pending_age)
            line += f"  oldest: sequence {found.oldest_pending_sequence}, {age} old"
        click.echo(line)
    if found.errors:
        click.echo("\nlast errors of events not delivered, newest first:")
        rows = [{"events": e.count, "last_seen": e.newest, "error": e.error} for e in found.errors]
        print_rows(rows, ("events", "last_seen", "error"), as_json=False)


@outbox.command("list")
@database_option
@click.option("--state", type=click.Choice(outbox_admin.STATES), help="Only events in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every column of the outbox.")
def outbox_list(database: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List the outbox's events, newest first.

    \b
    Example:
        mm7soap outbox list --state failed --limit 20
    """
    with existing_store(outbox_database(database)) as store:
        rows = outbox_admin.events(store.db, state, limit)
    print_rows(rows, OUTBOX_TABLE, as_json)


@outbox.command("retry")
@database_option
@click.argument("sequence", type=int, required=False)
@click.option("--failed", is_flag=True, help="Retry every failed event.")
def outbox_retry(database: str | None, sequence: int | None, failed: bool) -> None:
    """Deliver an event again: SEQUENCE, or every failed event.

    The event SEQUENCE (failed, or delivered: it is sent again with the same webhook-id), or
    with --failed every failed event, is made pending again and due now. A pending event is
    left as it is. The receiver gets it late, after later ones: its sequence tells.

    \b
    Example:
        mm7soap outbox retry --failed
    """
    if (sequence is None) == (not failed):
        raise click.UsageError("give one SEQUENCE or --failed")
    with existing_store(outbox_database(database)) as store:
        done = outbox_admin.retry(store.db, sequence, failed)
    if failed:
        click.echo(f"{done.count} failed event{'' if done.count == 1 else 's'} made pending again")
    elif done.previous is None:
        raise click.ClickException(f"no event {sequence}")
    elif done.previous == "pending":
        click.echo(f"event {sequence} is already pending: nothing changed")
    else:
        click.echo(f"event {sequence} was {done.previous}; it is pending again")


@outbox.command("prune")
@database_option
@click.option(
    "--older-than",
    required=True,
    callback=lambda ctx, param, value: parse_age(value),
    help="Delete delivered events delivered longer ago than this: a number and s, m, h or d (7d).",
)
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True, help="Deleted per transaction.")
def outbox_prune(database: str | None, older_than: float, batch: int) -> None:
    """Delete events delivered longer ago than --older-than.

    Only delivered events are deleted, in short transactions so that reports keep being
    stored meanwhile; pending and failed ones never are, nor the stored reports and
    messages themselves.

    \b
    Example:
        mm7soap outbox prune --older-than 7d
    """
    with existing_store(outbox_database(database)) as store:
        deleted = outbox_admin.prune(store.db, older_than, batch)
    click.echo(f"deleted {deleted} delivered event{'' if deleted == 1 else 's'}")


def parse_age(value: str) -> float:
    try:
        return outbox_admin.parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# `stats` and `prune` (issue 19) are in a module of their own, which uses the helpers above.
from mm7soap.cli_operations import OPERATIONS  # noqa: E402

for command in OPERATIONS:
    cli.add_command(command)

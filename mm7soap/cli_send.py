"""`mm7soap send`: post MM7 requests to an endpoint as an MMSC (Sinch) does and check the
answers, a thin layer over mm7soap.mmsc and mm7soap.checks. A module of its own so that cli.py
stays the group and the helpers its commands share; registered on the `mm7soap` group at the
end of mm7soap/cli.py. It uses none of cli.py's helpers, so it imports on its own."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from mm7soap.checks import Outcome, send_many
from mm7soap.checks import send as send_one
from mm7soap.mmsc import FORMATS, SINCH, Connection, MobileOriginated, Report, Request
from mm7soap.namespaces import DEFAULT_NAME, MM7_NAMESPACES


@click.command()
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

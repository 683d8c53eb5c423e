"""The `mm7soap` command: a thin layer over the library.

This module holds the group, `serve`, `wsdl`, `forward` and `outbox`, and the helpers the
commands share (the -d and --since options, tables and JSON, settings and the Store of an
existing database). The other commands are in modules of their own, registered at the end:
`send` in mm7soap/cli_send.py, the reading commands (`reports`, `report`, `messages`,
`message`) in mm7soap/cli_read.py, `stats`, `prune` and `copy` in mm7soap/cli_operations.py."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import psycopg

from mm7soap import errors, outbox_admin, postgres
from mm7soap.envelope import raw_text
from mm7soap.settings import ENV_PREFIX, Settings
from mm7soap.store import Store
from mm7soap.times import parse_time


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


# `stats` and `prune` (issue 19), `send` and the reading commands are in modules of their own,
# which use the helpers above (all but cli_send).
from mm7soap.cli_operations import OPERATIONS  # noqa: E402
from mm7soap.cli_read import READING  # noqa: E402
from mm7soap.cli_send import send  # noqa: E402

for command in (*READING, send, *OPERATIONS):
    cli.add_command(command)

"""The `mm7soap` command: a thin layer over the library."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from mm7soap.envelope import raw_text
from mm7soap.settings import Settings
from mm7soap.store import Store, parse_time

# What `reports` prints per row without --json, in this order.
TABLE_COLUMNS = ("id", "received_at", "message_id", "recipient", "sender", "mm_status", "status_text", "operator_id")


def database_option(command: Any) -> Any:
    return click.option(
        "--database",
        "-d",
        type=click.Path(dir_okay=False),
        default=None,
        help="SQLite file (default: $MM7SOAP_DATABASE or ./mm7soap.db).",
    )(command)


@click.group()
@click.version_option(package_name="mm7soap")
def cli() -> None:
    """mm7soap: an MM7 (3GPP TS 23.140) endpoint that stores what an MMSC sends.

    \b
    Example:
        mm7soap serve --port 8080
    """


@cli.command()
@database_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", "-p", type=int, default=None, help="Port to listen on (default 8080).")
@click.option("--path", default=None, help="Endpoint path (default /mm7; / also works).")
@click.option("--workers", "-w", type=int, default=None, help="gunicorn worker processes (default 2).")
def serve(database: str | None, host: str | None, port: int | None, path: str | None, workers: int | None) -> None:
    """Run the MM7 endpoint under gunicorn.

    \b
    Example:
        mm7soap serve --database /var/lib/mm7soap/mm7soap.db --host 0.0.0.0 --port 8080
    """
    from mm7soap.serving import serve as run

    run(Settings.from_env(database=database, host=host, port=port, path=path, workers=workers))


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

    with Store(Settings.from_env(database=":memory:")) as store:
        for path in WsdlDocuments(Endpoint(store)).write(folder):
            click.echo(str(path))


@cli.command()
@database_option
@click.option("--message-id", help="Only reports for this MessageID.")
@click.option("--recipient", help="Only reports for this recipient address.")
@click.option("--status", help="Only reports with this MMStatus (as sent, e.g. Retrieved).")
@click.option(
    "--since",
    callback=lambda ctx, param, value: time_option(value),
    help="Only reports received at or after this time (ISO 8601; no zone means UTC).",
)
@click.option("--limit", type=int, default=None, help="At most this many reports.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every stored field.")
def reports(
    database: str | None,
    message_id: str | None,
    recipient: str | None,
    status: str | None,
    since: datetime | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List stored delivery reports, newest first.

    \b
    Example:
        mm7soap reports --status Retrieved --since 2026-11-01T00:00:00Z
    """
    with Store(Settings.from_env(database=database)) as store:
        rows = list(
            store.delivery_reports(message_id=message_id, recipient=recipient, status=status, since=since, limit=limit)
        )
    print_rows(rows, as_json)


@cli.command()
@database_option
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every stored field.")
def report(database: str | None, message_id: str, as_json: bool) -> None:
    """Show every report for one MESSAGE_ID, newest first.

    \b
    Example:
        mm7soap report 369500617770864640
    """
    with Store(Settings.from_env(database=database)) as store:
        rows = list(store.delivery_reports(message_id=message_id))
    if not rows:
        raise click.ClickException(f"no report for MessageID {message_id}")
    print_rows(rows, as_json)


def time_option(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-27T10:00:00Z") from None


def print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            raw = row.get("raw_envelope")
            if isinstance(raw, bytes):
                row["raw_envelope"] = raw_text(raw)
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    widths = {c: max([len(c)] + [len(str(r.get(c) or "")) for r in rows]) for c in TABLE_COLUMNS}
    click.echo("  ".join(c.ljust(widths[c]) for c in TABLE_COLUMNS).rstrip())
    click.echo("  ".join("-" * widths[c] for c in TABLE_COLUMNS))
    for row in rows:
        click.echo("  ".join(str(row.get(c) or "").ljust(widths[c]) for c in TABLE_COLUMNS).rstrip())

"""`mm7soap stats` and `mm7soap prune` (issue 19), `mm7soap copy` (issue 20): a thin layer
over mm7soap.stats, mm7soap.retention and mm7soap.copying, registered on the `mm7soap` group
at the end of mm7soap/cli.py (whose helpers these commands use: import mm7soap.cli, not this
module, first)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from mm7soap import copying, retention
from mm7soap import stats as figures
from mm7soap.cli import (
    ConfigError,
    checked_settings,
    database_option,
    existing_store,
    parse_age,
    parse_since,
    print_rows,
    since_option,
)
from mm7soap.outbox_admin import age_text
from mm7soap.postgres import redacted

NO_OPERATOR = "(none)"  # a report without X-Mblox-Carrier-Id, in a table


@click.command()
@database_option
@since_option
@click.option(
    "--until",
    callback=lambda ctx, param, value: parse_since(value),
    help="Only what was received before this time (ISO 8601; no zone means UTC): an MMS counts at its status then.",
)
@click.option(
    "--by",
    multiple=True,
    help="Group by day or hour, operator and status: comma-separated or repeated, in the order"
    " given (default: day,operator).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: every group and the totals, times in seconds.")
def stats(
    database: str | None, since: datetime | None, until: datetime | None, by: tuple[str, ...], as_json: bool
) -> None:
    """What the MMSC reported, by day (or hour), operator and status.

    Delivery reports: each MMS (a MessageID and a recipient) counts once, at its final
    status, the last report stored for it (Forwarded then Retrieved is one MMS, delivered),
    in the day or hour of that report. Delivered means Retrieved. p50/p90/p99: the time from
    the MMS's Date to its final report (nearest-rank percentiles), over the delivered MMS,
    or with --by status over the MMS of that status. Then read replies by status and MO
    messages. Days and hours are UTC.

    \b
    Example:
        mm7soap stats --since 2026-11-27 --until 2026-11-28 --by operator
    """
    try:
        dimensions = figures.checked_by(name.strip() for names in by for name in names.split(",") if name.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    with existing_store(database) as store:
        found = figures.gather(store.db, since, until, dimensions)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2, ensure_ascii=False))
        return
    print_reports(found)
    print_counts("read replies", "replies", found.read_replies, found.read_replies_total, found.by)
    print_counts("MO messages", "messages", found.messages, found.messages_total, found.by)


def print_reports(found: figures.Stats) -> None:
    total = found.reports_total
    if not total.messages:
        click.echo("delivery reports: none")
        return
    click.echo(
        f"delivery reports: {total.messages} MMS, {total.delivered} delivered ({percent(total.share)});"
        f" to the final report of the delivered: {times(total.latency)}"
    )
    by_status = "status" in found.by
    statuses = [] if by_status else list(total.statuses)
    columns = (*found.by, "MMS", *(() if by_status else ("delivered",)), "share", "p50", "p90", "p99", *statuses)
    rows = []
    for group in found.reports:
        latency = group.latency
        row: dict[str, Any] = {**shown(group.key), "MMS": group.messages, "delivered": group.delivered}
        row |= {"share": percent(group.share), "p50": duration(latency.p50), "p90": duration(latency.p90)}
        rows.append(row | {"p99": duration(latency.p99)} | counts(group.statuses, statuses))
    click.echo("")
    print_rows(rows, columns, as_json=False)


def print_counts(
    title: str, noun: str, groups: list[figures.CountGroup], total: figures.CountGroup, by: tuple[str, ...]
) -> None:
    click.echo("")
    if not total.count:
        click.echo(f"{title}: none")
        return
    named = ", ".join(f"{status} {count}" for status, count in total.statuses.items())
    click.echo(f"{title}: {total.count}" + (f" ({named})" if named else ""))
    dimensions = tuple(groups[0].key) if groups else ()
    statuses = [] if "status" in dimensions else list(total.statuses)
    rows = [{**shown(group.key), noun: group.count} | counts(group.statuses, statuses) for group in groups]
    if dimensions:
        click.echo("")
        print_rows(rows, (*dimensions, noun, *statuses), as_json=False)


def shown(key: dict[str, str | None]) -> dict[str, str | None]:
    return {name: NO_OPERATOR if name == "operator" and value is None else value for name, value in key.items()}


def counts(found: dict[str, int], statuses: list[str]) -> dict[str, int]:
    """A group's count of each status of the table's columns, 0 included."""
    return {status: found.get(status, 0) for status in statuses}


def percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def times(latency: figures.Percentiles) -> str:
    if not latency.count:
        return "no times (no Date)"
    return f"p50 {duration(latency.p50)}, p90 {duration(latency.p90)}, p99 {duration(latency.p99)}"


def duration(seconds: float | None) -> str:
    """Seconds for people: `0.8s`, `42.0s`, `12m 5s`, `3h 20m`, `2d 4h` (a clock ahead of the
    MMSC's makes it negative)."""
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else ""
    return sign + (f"{abs(seconds):.1f}s" if abs(seconds) < 60 else age_text(abs(seconds)))


@click.command()
@database_option
@click.option(
    "--older-than",
    callback=lambda ctx, param, value: None if value is None else parse_age(value),
    help="Delete what was stored longer ago than this: a number and s, m, h or d (90d)."
    " Default: MM7SOAP_RETENTION_DAYS days.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows deleted per transaction."
)
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then rewrite the whole file (VACUUM) to give the free space back to the filesystem, and make later"
    " prunes give theirs back step by step. It holds the write lock until done: reports wait, and past"
    " MM7SOAP_BUSY_TIMEOUT_MS get 3000 (the MMSC retries). It needs about twice the database's size free"
    " on disk. Once, at a quiet hour. On PostgreSQL: VACUUM FULL of each pruned table, locked while it is"
    " rewritten (a prune without --vacuum runs a plain VACUUM, which lets new rows reuse the space).",
)
def prune(database: str | None, older_than: float | None, batch: int, vacuum: bool) -> None:
    """Delete reports, read replies, MO messages and delivered events older than an age.

    What was stored longer ago than --older-than (default MM7SOAP_RETENTION_DAYS) is
    deleted in short transactions, so the service keeps answering meanwhile, but never a
    row whose webhook event is not delivered (pending or failed): it stays until it is.
    Then delivered events older than the age. The space freed is used by new rows; see
    --vacuum to give it back to the filesystem. With MM7SOAP_RETENTION_DAYS set, `mm7soap
    serve` runs this every hour by itself.

    \b
    Example:
        mm7soap prune --older-than 90d
    """
    settings = checked_settings(database=database)
    if older_than is None and not settings.retention_days:
        raise ConfigError("no age: give --older-than (e.g. 90d) or set MM7SOAP_RETENTION_DAYS")
    age = older_than if older_than is not None else settings.retention_days * 86400.0
    with existing_store(database) as store:
        store.migrate()  # migration 7's indexes, which find the rows to keep
        pruned = retention.prune(store.db, age, batch, vacuum=vacuum)
    click.echo(pruned.summary())
    if pruned.kept:
        click.echo(f"kept {pruned.kept} older rows: their events are not delivered yet (mm7soap outbox)")
    if pruned.vacuumed:
        later = "; from now on each prune gives back what it frees" if pruned.gives_back_later else ""
        click.echo(f"VACUUM gave {mib(pruned.returned_bytes)} back{later}")
    elif pruned.returned_bytes:
        click.echo(f"gave {mib(pruned.returned_bytes)} back to the filesystem")
    elif pruned.free_bytes:
        click.echo(f"{mib(pruned.free_bytes)} free in the file, for new rows (--vacuum gives it back)")


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@click.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False),
    help="The SQLite file to copy. It may be in use: its rows as of the start of the copy are copied.",
)
@click.option(
    "--to",
    "target",
    help="The PostgreSQL database, a postgresql:// URL; it must hold no rows (default: $MM7SOAP_DATABASE,"
    " which keeps the password off the command line, as do PGPASSWORD and ~/.pgpass).",
)
def copy_rows(source: str, target: str | None) -> None:
    """Copy a SQLite database's rows into an empty PostgreSQL database.

    Delivery reports, read replies, MO messages with their parts, and the outbox's events
    are copied as they are, ids and sequences included, so /events cursors and webhook ids
    stay valid; events pending stay pending, and the forwarders on PostgreSQL deliver them.
    The target is migrated first and must hold no rows; the copy is one transaction, so a
    failure leaves it empty. Stop the instances writing the SQLite file first: what they
    store after the copy starts is not copied.

    \b
    Example:
        mm7soap copy --from /var/lib/mm7soap/mm7soap.db --to postgresql://mm7soap@db:5432/mm7soap
    """
    target = target or checked_settings().database
    click.echo(f"copying {source} into {redacted(target)}")
    started = time.monotonic()

    def told(copied: copying.Copied) -> None:
        click.echo(f"{copied.table:<17} {copied.rows:>9} rows, next {copied.key} {copied.next_key}")

    try:
        done = copying.copy_database(source, target, told)
    except copying.CopyError as exc:
        raise click.ClickException(str(exc)) from None
    total = sum(copied.rows for copied in done)
    click.echo(f"committed: {total} rows in {time.monotonic() - started:.1f}s")


OPERATIONS = (stats, prune, copy_rows)

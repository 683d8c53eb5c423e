"""`mm7soap stats` (issue 19): what a campaign owner asks every morning, by day (or hour),
operator and status.

- **Delivery reports**, one MMS at a time.  An MMS is a MessageID and a recipient (an MMS to
  several recipients has one MessageID and a report for each).  Its *final* status is that of
  the last report stored for it, up to `until` (ids are given in commit order): `Forwarded`
  then `Retrieved` is one MMS, delivered.  An MMS is counted in the window, day or hour of its
  final report.  Delivered means `Retrieved` (any case): the only MMStatus that says the
  recipient's handset has the MM.  `Forwarded`, `Deferred` and `Indeterminate` are not final
  (another report may follow); `Expired`, `Rejected`, `Unrecognised` and `Unreachable` are.
- **Time to the final report**: from the MMS's `Date` to when its final report was stored.
  A report's Date is when the MMSC handled the MM (TS 23.140), so the MMS's Date is taken as
  the earliest Date of its reports, all of them, before the window too (for an MMSC that
  repeats the submission time in every report, that is it).  Reports whose Date is not an
  xs:dateTime (`date_utc` NULL) leave the MMS out of the times, not out of the counts.
  Percentiles are nearest-rank: p90 is the smallest time that at least 90 % of the times are
  at or below, always one of the times measured, never interpolated.
- **Read replies** by MMStatus (`Read`, `Deleted`, …), each reply once (resends are not
  stored twice); **MO messages** counted.  Both by the day or hour they were stored.

Days and hours are UTC, as every stored time.  `since` is inclusive, `until` exclusive.

The same statements run on SQLite and PostgreSQL (stored times are text of a fixed width on
both); only the arithmetic of times differs, in mm7soap.dialects (`seconds_between`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlite_utils

from mm7soap.dialects import SQLITE, Dialect, dialect_of
from mm7soap.schema import MESSAGES, READ_REPLIES, REPORTS
from mm7soap.times import utc_timestamp

DIMENSIONS = ("day", "hour", "operator", "status")
DEFAULT_BY = ("day", "operator")
DELIVERED = "retrieved"  # MMStatus, compared lower-cased
PERCENTS = (50, 90, 99)

# Each dimension's value, from a row of the table aliased `r`.
DIMENSION_SQL = {
    "day": "substr(r.received_at, 1, 10)",
    "hour": "substr(r.received_at, 1, 13) || ':00Z'",
    "operator": "r.operator_id",
    "status": "r.mm_status",
}


def checked_by(by: Iterable[str]) -> tuple[str, ...]:
    """The dimensions asked for, in their order, once each; ValueError for an unknown one, or
    for day and hour together (an hour names its day)."""
    found = tuple(dict.fromkeys(by)) or DEFAULT_BY
    unknown = [name for name in found if name not in DIMENSIONS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}: choose among {', '.join(DIMENSIONS)}")
    if "day" in found and "hour" in found:
        raise ValueError("group by day or by hour, not both (an hour names its day)")
    return found


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank percentiles of the times measured, in seconds, and how many there were."""

    count: int
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Percentiles:
        if not values:
            return cls(0)
        ordered = sorted(values)
        return cls(len(ordered), *(nearest_rank(ordered, percent) for percent in PERCENTS))


def nearest_rank(ordered: list[float], percent: int) -> float:
    """The smallest value with at least `percent` % of the values at or below it: the value
    of rank ⌈percent × n / 100⌉ (integers, so 90 % of 10 is rank 9, not 10 by rounding)."""
    rank = max(-(-percent * len(ordered) // 100), 1)
    return ordered[rank - 1]


@dataclass
class Tally:
    """The MMS of one group: how many, at which final status, and their times to the final report."""

    messages: int = 0
    delivered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)

    def add(self, status: str, delivered: int, seconds: float | None, timed: bool) -> None:
        self.messages += 1
        self.statuses[status] += 1
        self.delivered += delivered
        if timed and seconds is not None:
            self.times.append(seconds)


@dataclass(frozen=True)
class ReportGroup:
    """One line of the delivery reports: its dimensions' values, and its MMS.

    `latency` is over the group's delivered MMS; grouped by status, over all its MMS (the time
    to that status).  `share` is, grouped by status, the group's part of the MMS of the same
    other dimensions; else the delivered share."""

    key: dict[str, str | None]
    messages: int
    delivered: int
    statuses: dict[str, int]
    latency: Percentiles
    share: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key,
            "messages": self.messages,
            "delivered": self.delivered,
            "share": round(self.share, 6),
            "statuses": self.statuses,
            "seconds_to_final_report": asdict(self.latency),
        }


@dataclass(frozen=True)
class CountGroup:
    """One line of the read replies or MO messages: its dimensions' values and its count
    (read replies: also by MMStatus)."""

    key: dict[str, str | None]
    count: int
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self, noun: str) -> dict[str, Any]:
        found = {**self.key, noun: self.count}
        return {**found, "statuses": self.statuses} if noun == "replies" else found


@dataclass(frozen=True)
class Stats:
    """All of `mm7soap stats`: the window, the groups of each kind and their totals."""

    by: tuple[str, ...]
    since: str | None
    until: str | None
    reports: list[ReportGroup]
    reports_total: ReportGroup
    read_replies: list[CountGroup]
    read_replies_total: CountGroup
    messages: list[CountGroup]
    messages_total: CountGroup

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": list(self.by),
            "since": self.since,
            "until": self.until,
            "delivery_reports": {
                "groups": [group.as_dict() for group in self.reports],
                "total": self.reports_total.as_dict(),
            },
            "read_replies": {
                "groups": [group.as_dict("replies") for group in self.read_replies],
                "total": self.read_replies_total.as_dict("replies"),
            },
            "messages": {
                "groups": [group.as_dict("messages") for group in self.messages],
                "total": self.messages_total.as_dict("messages"),
            },
        }


def gather(
    db: sqlite_utils.Database,
    since: datetime | None = None,
    until: datetime | None = None,
    by: Iterable[str] = DEFAULT_BY,
) -> Stats:
    """The stats of what was stored in [since, until), grouped by `by` (dimensions of DIMENSIONS)."""
    by = checked_by(by)
    window = Window(utc_timestamp(since) if since else None, utc_timestamp(until) if until else None)
    tables = set(db.table_names())
    finals = final_reports(db, window, by) if REPORTS in tables else iter(())
    reports, reports_total = report_groups(finals, by)
    by_kind = tuple(name for name in by if name != "status")  # an MO has no status
    replies = counted(db, READ_REPLIES, window, (*by_kind, "status")) if READ_REPLIES in tables else []
    messages = counted(db, MESSAGES, window, by_kind) if MESSAGES in tables else []
    read_replies, read_replies_total = count_groups(replies, (*by_kind, "status"), by)
    mo, mo_total = count_groups(messages, by_kind, by_kind)
    return Stats(by, window.since, window.until, reports, reports_total, read_replies, read_replies_total, mo, mo_total)


@dataclass(frozen=True)
class Window:
    """[since, until) as stored times; None: unbounded."""

    since: str | None
    until: str | None

    def where(self, column: str = "received_at") -> tuple[str, dict[str, str]]:
        """The SQL condition of the window on `column` (TRUE for all time), and its parameters.
        TRUE, not 1: PostgreSQL wants a boolean in a WHERE; SQLite reads TRUE as 1."""
        found = [f"{column} >= :since" if self.since else "", f"{column} < :until" if self.until else ""]
        params = {name: value for name, value in (("since", self.since), ("until", self.until)) if value}
        return " AND ".join(term for term in found if term) or "TRUE", params


def final_reports(db: sqlite_utils.Database, window: Window, by: tuple[str, ...]) -> Iterator[tuple]:
    """The final report of each MMS whose final report is in the window: the values of its
    dimensions `by`, then its MMStatus, whether that is delivered, and the seconds from the
    MMS's Date to it (None without a Date)."""
    yield from db.execute(*final_reports_sql(window, by, dialect_of(db)))


def final_reports_sql(window: Window, by: tuple[str, ...], dialect: Dialect = SQLITE) -> tuple[str, dict[str, str]]:
    """The query of `final_reports`, and its parameters.

    Every report of an MMS up to `until` is looked at, those before `since` too: an MMS whose
    last report is in the window counts there, at that status, and its Date may be on an
    earlier report.  With a `since`, only the MessageIDs of the window's reports are looked at
    (found in the received_at index); without, every MMS, in the order of the MessageID index.
    Times are to the millisecond (`dialect.seconds_between`)."""
    conditions, params = [], {}
    if window.until:
        conditions.append("received_at < :until")
        params["until"] = window.until
    if window.since:
        inside, _ = window.where()
        conditions.append(f"message_id IN (SELECT message_id FROM {REPORTS} WHERE {inside})")
        params["since"] = window.since
    dimensions = "".join(f"{DIMENSION_SQL[name]}, " for name in by)
    seconds = dialect.seconds_between.format(start="f.first_date", end="r.received_at")
    sql = f"""
    WITH finals AS (
        SELECT max(id) AS id, min(date_utc) AS first_date FROM {REPORTS}
        WHERE {" AND ".join(conditions) or "TRUE"} GROUP BY message_id, recipient
    )
    SELECT {dimensions}r.mm_status, lower(r.mm_status) = '{DELIVERED}',
           {seconds}
    FROM finals AS f JOIN {REPORTS} AS r ON r.id = f.id WHERE {"r.received_at >= :since" if window.since else "TRUE"}
    """
    return sql, params


def report_groups(finals: Iterable[tuple], by: tuple[str, ...]) -> tuple[list[ReportGroup], ReportGroup]:
    """The groups of `by` in order, and the total (delivered share, times of the delivered)."""
    width, by_status = len(by), "status" in by
    tallies: dict[tuple, Tally] = defaultdict(Tally)
    total = Tally()
    for row in finals:
        status, delivered, seconds = row[width:]
        tallies[row[:width]].add(status, delivered, seconds, by_status or delivered)
        total.add(status, delivered, seconds, delivered)
    parent = parent_of(by)
    parents: Counter[tuple] = Counter()
    for key, tally in tallies.items():
        parents[parent(key)] += tally.messages
    groups = []
    for key in sorted(tallies, key=group_order(by, by_count(total.statuses))):
        tally = tallies[key]
        share = tally.messages / parents[parent(key)] if by_status else tally.delivered / tally.messages
        groups.append(report_group(dict(zip(by, key, strict=True)), tally, share))
    return groups, report_group({}, total, total.delivered / total.messages if total.messages else 0.0)


def parent_of(by: tuple[str, ...]) -> Callable[[tuple], tuple]:
    """A group's key without its status: grouped by status, a group's share is of the MMS
    with the same other dimensions (the day's, the operator's, or all)."""
    if "status" not in by:
        return lambda key: key
    at = by.index("status")
    return lambda key: key[:at] + key[at + 1 :]


def report_group(key: dict[str, str | None], tally: Tally, share: float) -> ReportGroup:
    latency = Percentiles.of(tally.times)
    return ReportGroup(key, tally.messages, tally.delivered, by_count(tally.statuses), latency, share)


def by_count(statuses: Counter[str]) -> dict[str, int]:
    """Statuses, the most frequent first (then by name)."""
    return dict(sorted(statuses.items(), key=lambda item: (-item[1], item[0])))


def group_order(by: tuple[str, ...], statuses: dict[str, int]) -> Callable[[tuple], tuple]:
    """The order of groups: by their dimensions' values (an operator without id first), a
    status where it is in `statuses` (all groups', most frequent first)."""
    rank = {status: place for place, status in enumerate(statuses)}

    def order(key: tuple) -> tuple:
        return tuple(
            (rank.get(value, len(rank)), "") if name == "status" else (value is not None, value or "")
            for name, value in zip(by, key, strict=True)
        )

    return order


def counted(db: sqlite_utils.Database, table: str, window: Window, by: tuple[str, ...]) -> list[tuple]:
    """(dimensions `by`…, count) of the rows of `table` stored in the window."""
    where, params = window.where("r.received_at")
    dimensions = ", ".join(DIMENSION_SQL[name] for name in by)
    group = f" GROUP BY {dimensions}" if by else ""
    sql = f"SELECT {dimensions}{', ' if by else ''}count(*) FROM {table} AS r WHERE {where}{group}"
    return [row for row in db.execute(sql, params).fetchall() if row[-1]]


def count_groups(
    rows: list[tuple], columns: tuple[str, ...], by: tuple[str, ...]
) -> tuple[list[CountGroup], CountGroup]:
    """Rows of (`columns`…, count) summed into the groups of `by` (some of the columns), in
    order, each with its counts by status when the rows have a status; and the total."""
    at = [columns.index(name) for name in by]
    status_at = columns.index("status") if "status" in columns else None
    groups: dict[tuple, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for row in rows:
        status = row[status_at] if status_at is not None else ""
        groups[tuple(row[i] for i in at)][status] += row[-1]
        total[status] += row[-1]
    ordered = sorted(groups, key=group_order(by, by_count(total)))
    found = [count_group(dict(zip(by, key, strict=True)), groups[key]) for key in ordered]
    return found, count_group({}, total)


def count_group(key: dict[str, str | None], statuses: Counter[str]) -> CountGroup:
    return CountGroup(key, statuses.total(), {status: n for status, n in by_count(statuses).items() if status})

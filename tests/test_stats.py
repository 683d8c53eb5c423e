"""`mm7soap stats` (issue 19): on a database of known contents, the exact counts, shares and
nearest-rank percentiles; an MMS counted once at its final status; every --by; --json; the
--since/--until bounds."""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from itertools import count
from typing import Any

import pytest
from click.testing import CliRunner

from mm7soap import stats
from mm7soap.cli import cli
from mm7soap.settings import Settings
from mm7soap.store import Store
from tests.backends import only_sqlite
from tests.test_stored_right import acknowledged, report

A, B = "0001890", "0002011"
numbers = count(1)


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test of a database here runs on SQLite and on PostgreSQL (tests/conftest.py)."""
    return backend_settings


def put_report(
    db: Any, received: str, message_id: str, recipient: str, status: str, date: str | None, operator: str | None
) -> None:
    """A stored delivery report, with the times given (`HH:MM:SS` of 2026-11-27, or a full time)."""
    db.execute(
        "INSERT INTO delivery_reports (received_at, message_id, recipient, mm_status, date_utc, operator_id,"
        " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [when(received), message_id, recipient, status, when(date) if date else None, operator, f"fp-{next(numbers)}"],
    )


def put(db: Any, table: str, received: str, operator: str | None, status: str | None = None) -> None:
    """A stored read reply (with its MMStatus) or MO message."""
    if table == "read_replies":
        sql = "INSERT INTO read_replies (received_at, message_id, mm_status, operator_id, fingerprint)"
        db.execute(sql + " VALUES (?, 'm', ?, ?, ?)", [when(received), status, operator, f"fp-{next(numbers)}"])
    else:
        sql = "INSERT INTO messages (received_at, operator_id, fingerprint) VALUES (?, ?, ?)"
        db.execute(sql, [when(received), operator, f"fp-{next(numbers)}"])


def when(text: str) -> str:
    return text if "T" in text else f"2026-11-27T{text}.000000Z"


@pytest.fixture
def known(settings: Settings) -> Settings:
    """Eight MMS (MessageID and recipient) on 2026-11-27 and 28; times in seconds:

    m1/r1  A  Forwarded, then Retrieved 30 s after the Forwarded's Date   27th   delivered, 30
    m2/r1  A  Retrieved                                        10 s       27th   delivered, 10
    m2/r2  A  Expired (same MessageID, another recipient)      3540 s     27th
    m3/r3  B  Retrieved                                        40 s       27th   delivered, 40
    m4/r4  B  Forwarded 27th 13:00, Retrieved 28th 08:00       68400 s    28th   delivered, 68400
    m5/r5  B  Retrieved, Date not a time (date_utc NULL)                  27th   delivered, no time
    m6/r6  A  Forwarded 27th 23:59:50, Retrieved 28th 00:00:20  40 s      28th   delivered, 40
    m7/r7  -  Retrieved, no operator id                        5 s        28th   delivered, 5
    """
    with Store(settings) as store:
        store.migrate()
        db = store.db
        put_report(db, "10:00:05", "m1", "r1", "Forwarded", "10:00:00", A)
        put_report(db, "10:00:30", "m1", "r1", "Retrieved", "10:00:20", A)
        put_report(db, "10:01:10", "m2", "r1", "Retrieved", "10:01:00", A)
        put_report(db, "11:00:00", "m2", "r2", "Expired", "10:01:00", A)
        put_report(db, "12:00:40", "m3", "r3", "Retrieved", "12:00:00", B)
        put_report(db, "13:00:02", "m4", "r4", "Forwarded", "13:00:00", B)
        put_report(db, "14:00:50", "m5", "r5", "Retrieved", None, B)
        put_report(db, "23:59:50", "m6", "r6", "Forwarded", "23:59:40", A)
        put_report(db, "2026-11-28T00:00:20.000000Z", "m6", "r6", "Retrieved", "2026-11-28T00:00:10.000000Z", A)
        put_report(db, "2026-11-28T08:00:00.000000Z", "m4", "r4", "Retrieved", "2026-11-28T07:59:00.000000Z", B)
        put_report(db, "2026-11-28T09:00:05.000000Z", "m7", "r7", "Retrieved", "2026-11-28T09:00:00.000000Z", None)
        put(db, "read_replies", "10:05:00", A, "Read")
        put(db, "read_replies", "10:06:00", A, "Read")
        put(db, "read_replies", "12:30:00", B, "Deleted")
        put(db, "read_replies", "2026-11-28T01:00:00.000000Z", A, "Read")
        put(db, "messages", "09:00:00", A)
        put(db, "messages", "15:00:00", None)
        put(db, "messages", "2026-11-28T10:00:00.000000Z", B)
    return settings


def gather(settings: Settings, **options: Any) -> stats.Stats:
    with Store(settings) as store:
        return stats.gather(store.db, **options)


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def summary(group: stats.ReportGroup) -> tuple:
    latency = group.latency
    return (group.messages, group.delivered, round(group.share, 4), latency.p50, latency.p90, latency.p99)


# --- Percentiles -------------------------------------------------------------------------


def test_nearest_rank_is_the_smallest_value_with_that_share_at_or_below_it():
    values = [float(n) for n in range(1, 101)]
    assert [stats.nearest_rank(values, p) for p in (50, 90, 99)] == [50.0, 90.0, 99.0]
    ten = [float(n) for n in range(1, 11)]
    assert [stats.nearest_rank(ten, p) for p in (50, 90, 99)] == [5.0, 9.0, 10.0]  # ⌈9.0⌉ is rank 9
    assert stats.Percentiles.of([7.0]) == stats.Percentiles(1, 7.0, 7.0, 7.0)
    assert stats.Percentiles.of([]) == stats.Percentiles(0)


def test_percentiles_are_values_measured_not_interpolated():
    found = stats.Percentiles.of([40.0, 5.0, 10.0, 30.0, 68400.0, 40.0])  # in any order
    assert (found.p50, found.p90, found.p99) == (30.0, 68400.0, 68400.0)  # an interpolated median is 35


# --- Final status, counts, times -----------------------------------------------------------


def test_each_mms_counts_once_at_its_final_status(known):
    found = gather(known, by=("day", "operator"))
    total = found.reports_total
    # m1/r1 (Forwarded then Retrieved) is one MMS; m2 is two (two recipients).
    assert (total.messages, total.delivered, total.share) == (8, 7, 0.875)
    assert total.statuses == {"Retrieved": 7, "Expired": 1}
    # Delivered times: 30, 10, 40, 68400 (from m4's first Date, a day before), 40, 5; m5 has no Date.
    assert (total.latency.count, total.latency.p50, total.latency.p90, total.latency.p99) == (6, 30.0, 68400.0, 68400.0)


def test_by_day_and_operator(known):
    found = gather(known, by=("day", "operator"))
    assert [(g.key["day"], g.key["operator"], summary(g)) for g in found.reports] == [
        ("2026-11-27", A, (3, 2, 0.6667, 10.0, 30.0, 30.0)),
        ("2026-11-27", B, (2, 2, 1.0, 40.0, 40.0, 40.0)),  # m4 counts on the 28th, where it was retrieved
        ("2026-11-28", None, (1, 1, 1.0, 5.0, 5.0, 5.0)),
        ("2026-11-28", A, (1, 1, 1.0, 40.0, 40.0, 40.0)),
        ("2026-11-28", B, (1, 1, 1.0, 68400.0, 68400.0, 68400.0)),
    ]
    assert found.reports[0].statuses == {"Retrieved": 2, "Expired": 1}


def test_by_status_times_each_status_and_shares_all(known):
    found = gather(known, by=("status",))
    assert [(g.key["status"], summary(g)) for g in found.reports] == [
        ("Retrieved", (7, 7, 0.875, 30.0, 68400.0, 68400.0)),
        ("Expired", (1, 0, 0.125, 3540.0, 3540.0, 3540.0)),  # the time to Expired
    ]


def test_by_day_and_status_shares_are_of_the_day(known):
    found = gather(known, by=("day", "status"))
    assert [(g.key["day"], g.key["status"], g.messages, round(g.share, 2)) for g in found.reports] == [
        ("2026-11-27", "Retrieved", 4, 0.8),
        ("2026-11-27", "Expired", 1, 0.2),
        ("2026-11-28", "Retrieved", 3, 1.0),
    ]


def test_by_hour(known):
    found = gather(known, by=("hour",))
    assert [(g.key["hour"], g.messages) for g in found.reports] == [
        ("2026-11-27T10:00Z", 2),
        ("2026-11-27T11:00Z", 1),
        ("2026-11-27T12:00Z", 1),
        ("2026-11-27T14:00Z", 1),
        ("2026-11-28T00:00Z", 1),
        ("2026-11-28T08:00Z", 1),
        ("2026-11-28T09:00Z", 1),
    ]


def test_by_operator_alone_in_the_order_given(known):
    found = gather(known, by=("operator", "day"))
    assert [(g.key["operator"], g.key["day"]) for g in found.reports][:3] == [
        (None, "2026-11-28"),
        (A, "2026-11-27"),
        (A, "2026-11-28"),
    ]


def test_read_replies_by_status_and_mo_messages_counted(known):
    found = gather(known, by=("day", "operator"))
    assert [(g.key["day"], g.key["operator"], g.count, g.statuses) for g in found.read_replies] == [
        ("2026-11-27", A, 2, {"Read": 2}),
        ("2026-11-27", B, 1, {"Deleted": 1}),
        ("2026-11-28", A, 1, {"Read": 1}),
    ]
    assert (found.read_replies_total.count, found.read_replies_total.statuses) == (4, {"Read": 3, "Deleted": 1})
    assert [(g.key["day"], g.key["operator"], g.count) for g in found.messages] == [
        ("2026-11-27", None, 1),
        ("2026-11-27", A, 1),
        ("2026-11-28", B, 1),
    ]
    by_status = gather(known, by=("status",))
    assert [(g.key, g.count) for g in by_status.read_replies] == [({"status": "Read"}, 3), ({"status": "Deleted"}, 1)]
    assert by_status.messages_total.count == 3 and [g.key for g in by_status.messages] == [{}]


# --- The window ----------------------------------------------------------------------------


def test_until_counts_each_mms_at_its_status_then(known):
    found = gather(known, until=day("2026-11-28"), by=("day",))
    # m4 and m6 were Forwarded on the 27th: not yet delivered then; m7 came later.
    assert [(g.key["day"], g.messages, g.delivered, g.statuses) for g in found.reports] == [
        ("2026-11-27", 7, 4, {"Retrieved": 4, "Forwarded": 2, "Expired": 1}),
    ]
    assert (found.read_replies_total.count, found.messages_total.count) == (3, 2)


def test_since_takes_the_earlier_reports_of_an_mms_into_account(known):
    found = gather(known, since=day("2026-11-28"), by=("day",))
    [group] = found.reports
    # m4, m6 and m7; m4's and m6's times from the Dates of their Forwarded, before the window.
    assert (group.key["day"], group.messages, group.delivered) == ("2026-11-28", 3, 3)
    assert (group.latency.count, group.latency.p50, group.latency.p99) == (3, 40.0, 68400.0)
    assert (found.read_replies_total.count, found.messages_total.count) == (1, 1)


def test_since_is_inclusive_and_until_exclusive(known):
    at = datetime(2026, 11, 28, 0, 0, 20, tzinfo=timezone.utc)  # m6's Retrieved, to the microsecond
    assert gather(known, since=at, until=at).reports_total.messages == 0
    assert gather(known, since=at, until=day("2026-11-28T05:00:00")).reports_total.messages == 1
    assert gather(known, since=day("2026-11-27"), until=at).reports_total.statuses == {
        "Retrieved": 4,
        "Forwarded": 2,
        "Expired": 1,
    }


def test_delivered_is_retrieved_in_any_case(settings):
    with Store(settings) as store:
        store.migrate()
        put_report(store.db, "10:00:10", "m1", "r1", "retrieved", "10:00:00", A)
        put_report(store.db, "10:00:20", "m2", "r2", "Rejected", "10:00:00", A)
    total = gather(settings, by=("day",)).reports_total
    assert (total.delivered, total.statuses, total.latency.count) == (1, {"Rejected": 1, "retrieved": 1}, 1)


def test_reports_stored_by_the_service(app, settings):
    """Forwarded then Retrieved through the real intake: one MMS, delivered; its Date is the
    report's (date_utc)."""
    acknowledged(app, report("tx-1", "Forwarded"))
    acknowledged(app, report("tx-2", "Retrieved", Date="<Date>2026-11-27T10:00:30Z</Date>"))
    acknowledged(app, report("tx-3", "Retrieved", Recipient="<Recipient><Number>15551230002</Number></Recipient>"))
    total = gather(settings).reports_total
    assert (total.messages, total.delivered, total.latency.count) == (2, 2, 2)
    received = app.store.db.execute("SELECT max(received_at) FROM delivery_reports").fetchone()[0]
    seconds = (datetime.fromisoformat(received[:-1]) - datetime(2026, 11, 27, 10)).total_seconds()
    assert math.isclose(total.latency.p99, seconds, abs_tol=0.002)  # from the first Date, 10:00:00


# --- The migration's indexes ---------------------------------------------------------------


def plan(settings: Settings, window: stats.Window) -> str:
    """SQLite's plan of the final reports (PostgreSQL plans by its statistics, not by rule)."""
    sql, params = stats.final_reports_sql(window, ("day",))
    with closing(sqlite3.connect(settings.database)) as db:
        return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))


@only_sqlite
def test_the_final_reports_are_read_from_the_indexes_of_migration_7(known):
    window = plan(known, stats.Window("2026-11-28T00:00:00.000000Z", "2026-11-29T00:00:00.000000Z"))
    # The window's MessageIDs from the received_at index, then each one's reports from the
    # MessageID index alone.
    assert "COVERING INDEX delivery_reports_received_at (received_at>? AND received_at<?)" in window
    assert "COVERING INDEX delivery_reports_message (message_id=?)" in window
    everything = plan(known, stats.Window(None, None))
    assert "SCAN delivery_reports USING COVERING INDEX delivery_reports_message" in everything
    assert "TEMP B-TREE" not in everything  # grouped in the index's order, never sorted


# --- The command ---------------------------------------------------------------------------


def run(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(cli, ["stats", "-d", settings.database, *args])


def test_the_command_prints_the_tables(known):
    result = run(known)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "delivery reports: 8 MMS, 7 delivered (87.5%); to the final report of the delivered:"
        " p50 30.0s, p90 19h 0m, p99 19h 0m"
    )
    assert lines[2].split() == [
        "day",
        "operator",
        "MMS",
        "delivered",
        "share",
        "p50",
        "p90",
        "p99",
        "Retrieved",
        "Expired",
    ]
    assert lines[4].split() == ["2026-11-27", A, "3", "2", "66.7%", "10.0s", "30.0s", "30.0s", "2", "1"]
    assert lines[6].split() == ["2026-11-28", "(none)", "1", "1", "100.0%", "5.0s", "5.0s", "5.0s", "1", "0"]
    assert "read replies: 4 (Read 3, Deleted 1)" in lines
    assert "MO messages: 3" in lines


def test_the_command_by_status_and_operator(known):
    result = run(known, "--by", "status,operator", "--since", "2026-11-27", "--until", "2026-11-28")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2].split() == ["status", "operator", "MMS", "share", "p50", "p90", "p99"]
    # Each status's share of the operator's MMS: A has four, B three.
    assert [line.split()[:4] for line in lines[4:9]] == [
        ["Retrieved", A, "2", "50.0%"],
        ["Retrieved", B, "2", "66.7%"],
        ["Forwarded", A, "1", "25.0%"],
        ["Forwarded", B, "1", "33.3%"],
        ["Expired", A, "1", "25.0%"],
    ]


def test_the_command_prints_json(known):
    result = run(known, "--by", "day", "--by", "operator", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["by"] == ["day", "operator"] and found["since"] is None
    assert found["delivery_reports"]["groups"][0] == {
        "day": "2026-11-27",
        "operator": A,
        "messages": 3,
        "delivered": 2,
        "share": 0.666667,
        "statuses": {"Retrieved": 2, "Expired": 1},
        "seconds_to_final_report": {"count": 2, "p50": 10.0, "p90": 30.0, "p99": 30.0},
    }
    assert found["delivery_reports"]["total"]["messages"] == 8
    assert found["read_replies"]["total"] == {"replies": 4, "statuses": {"Read": 3, "Deleted": 1}}
    assert found["messages"]["groups"][-1] == {"day": "2026-11-28", "operator": B, "messages": 1}


def test_the_command_window_in_json(known):
    result = run(known, "--since", "2026-11-28", "--until", "2026-11-28T05:00:00+01:00", "--json")
    found = json.loads(result.output)
    assert (found["since"], found["until"]) == ("2026-11-28T00:00:00.000000Z", "2026-11-28T04:00:00.000000Z")
    assert found["delivery_reports"]["total"]["messages"] == 1  # m6 only


@pytest.mark.parametrize(("by", "said"), [("day,hour", "day or by hour"), ("week", "cannot group by week"), ("", "")])
def test_the_command_refuses_a_bad_grouping(known, by, said):
    result = run(known, "--by", by)
    if not said:  # an empty --by is the default
        assert result.exit_code == 0 and "day " in result.output.splitlines()[2]
        return
    assert result.exit_code == 2 and said in result.output


def test_the_command_refuses_a_bad_time(known):
    result = run(known, "--until", "yesterday")
    assert result.exit_code == 2 and "not an ISO 8601 time" in result.output


def test_the_command_on_an_empty_database(settings):
    with Store(settings) as store:
        store.migrate()
    result = run(settings)
    assert result.exit_code == 0
    assert result.output.splitlines() == ["delivery reports: none", "", "read replies: none", "", "MO messages: none"]


def test_the_command_refuses_a_missing_database(tmp_path):
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, ["stats", "-d", str(missing)])
    assert result.exit_code == 2 and "no database at" in result.output
    assert not missing.exists()

"""The outbox (issue 18): an event written with each stored row in one transaction, read back
by `GET /events`, and the webhook settings checked at start.

Delivery of the events (the forwarder) is tested in `tests/test_forwarder.py`.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mm7soap import outbox, times
from mm7soap.dialects import POSTGRESQL, SQLITE, dialect_of
from mm7soap.outbox import Backoff, Event, Outcome
from mm7soap.schema import OUTBOX
from mm7soap.settings import Settings
from tests.backends import fail_inserts_into, only_postgresql, only_sqlite, traced
from tests.helpers import call
from tests.test_deliver import PNG, envelope, post, with_picture
from tests.test_stored_right import acknowledged, read_reply, report

SECRET = "whsec_" + base64.b64encode(b"outbox-test-secret-32-bytes-long").decode()


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


def events(app: Any) -> list[dict[str, Any]]:
    """Every outbox row, in sequence order."""
    return list(app.store.db.query("SELECT * FROM outbox ORDER BY sequence"))


def count(app: Any, table: str) -> int:
    return app.store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def get_events(app: Any, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    response = call(app, method="GET", path="/events", query=query, headers=headers)
    assert response.headers["Content-Type"] == "application/json"
    return response.status, json.loads(response.body)


# --- One event per stored row, in the row's transaction -------------------------------------


def test_a_delivery_report_read_reply_and_mo_each_have_one_event_of_their_type(app):
    acknowledged(app, report(tx="dr-1", status="Retrieved", MessageID="<MessageID>msg-dr</MessageID>"))
    acknowledged(app, read_reply("rr-1", "Read"), "ReadReplyRsp")
    response = post(app, with_picture(envelope(tx="mo-1")))
    assert response.text("Body/DeliverRsp/Status/StatusCode") == "1000", response.body

    [dr] = app.store.delivery_reports()
    [rr] = app.store.read_replies()
    [mo] = app.store.messages()
    got = [(e["type"], e["source_id"], e["order_key"], e["state"], e["attempts"]) for e in events(app)]
    assert got == [
        ("delivery_report", dr["id"], "msg-dr", "pending", 0),
        ("read_reply", rr["id"], "msg-1", "pending", 0),
        ("message", mo["id"], None, "pending", 0),  # an MO has no MessageID to order by
    ]
    # The event's time is the row's: both taken in the one write transaction.
    assert [e["created_at"] for e in events(app)] == [dr["received_at"], rr["received_at"], mo["received_at"]]


def test_a_resend_makes_no_second_event(app):
    acknowledged(app, report(tx="tx-1", status="Retrieved"))
    acknowledged(app, report(tx="tx-2", status="Retrieved"))  # the same report, a new TransactionID
    acknowledged(app, read_reply("rr-1", "Read"), "ReadReplyRsp")
    acknowledged(app, read_reply("rr-2", "Read"), "ReadReplyRsp")
    for tx in ("mo-1", "mo-2"):
        assert post(app, with_picture(envelope(tx=tx))).text("Body/DeliverRsp/Status/StatusCode") == "1000"

    assert (count(app, "delivery_reports"), count(app, "read_replies"), count(app, "messages")) == (1, 1, 1)
    assert [e["type"] for e in events(app)] == ["delivery_report", "read_reply", "message"]


def test_every_new_report_gets_its_own_event_with_increasing_sequences(app):
    for n, status in enumerate(["Forwarded", "Retrieved", "Forwarded", "Retrieved", "Rejected"]):
        acknowledged(app, report(tx=f"tx-{n}", status=status, MessageID=f"<MessageID>msg-{n // 2}</MessageID>"))

    rows = sorted(app.store.delivery_reports(), key=lambda row: row["id"])
    found = events(app)
    sequences = [e["sequence"] for e in found]
    assert sequences == sorted(set(sequences)) and len(sequences) == 5  # strictly increasing
    assert [e["source_id"] for e in found] == [row["id"] for row in rows]
    assert [e["order_key"] for e in found] == ["msg-0", "msg-0", "msg-1", "msg-1", "msg-2"]
    assert len({e["event_id"] for e in found}) == 5
    assert all(e["event_id"].startswith("evt_") for e in found)


@pytest.mark.parametrize("refusing", ["delivery_reports", "outbox"])
def test_a_storage_failure_leaves_neither_row_nor_event(app, refusing):
    """3000 whether the row or its event cannot be written; the MMSC's retry then stores both."""
    with fail_inserts_into(app.store.db, refusing):
        response = call(app, report(tx="tx-1"))
    assert response.text("Body/Fault/detail/VASPErrorRsp/Status/StatusCode") == "3000", response.body
    assert (count(app, "delivery_reports"), count(app, "outbox")) == (0, 0)

    acknowledged(app, report(tx="tx-1"))  # the retry is stored, not taken for a resend
    assert (count(app, "delivery_reports"), count(app, "outbox")) == (1, 1)


def test_an_mo_whose_event_cannot_be_written_leaves_no_message_or_parts(app):
    with fail_inserts_into(app.store.db, "outbox"):
        response = post(app, with_picture(envelope(tx="mo-1")))
    assert response.text("Body/Fault/detail/VASPErrorRsp/Status/StatusCode") == "3000", response.body
    assert (count(app, "messages"), count(app, "message_parts"), count(app, "outbox")) == (0, 0, 0)


def test_the_payload_carries_the_row_under_its_column_names_and_mo_parts_in_base64(app):
    post(app, with_picture(envelope(tx="mo-1")))
    [event] = events(app)
    as_claimed = Event(event["sequence"], event["event_id"], "message", event["source_id"], event["created_at"], 0)
    sent = outbox.payload(app.store.db, as_claimed)
    row = app.store.db.execute("SELECT * FROM messages").fetchone()
    names = [column[0] for column in app.store.db.execute("SELECT * FROM messages").description]
    stored = dict(zip(names, row, strict=True))
    assert {k: v for k, v in sent["data"].items() if k != "parts"} == {
        k: v for k, v in stored.items() if k != "raw_envelope"
    }
    [part] = sent["data"]["parts"]
    assert base64.b64decode(part["data"]) == PNG
    assert (part["position"], part["content_type"], part["content_id"]) == (1, "image/png", "x")


# --- Backoff and settling, without HTTP -------------------------------------------------------


def test_backoff_doubles_from_first_spreads_by_half_and_is_capped():
    backoff = Backoff(first=2.0, cap=10.0, max_age=60.0)
    assert [backoff.delay(n, 0.5) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]
    assert backoff.delay(1, 0.0) == 1.0 and backoff.delay(1, 0.999) == pytest.approx(2.998)
    assert backoff.delay(9, 0.0) == 5.0  # the cap is spread too, so retries do not bunch up


def test_backoff_stays_at_the_cap_however_many_attempts_were_made():
    # A cap of a minute and a day's max age make ~1440 attempts; 2 ** 1024 is no float.
    backoff = Backoff(first=5.0, cap=60.0, max_age=86400.0)
    assert [backoff.delay(n, 0.5) for n in (1000, 1025, 1440, 10**6)] == [60.0] * 4


def test_settle_of_an_event_tried_thousands_of_times_still_writes(app):
    acknowledged(app, report())
    [claimed] = outbox.claim(app.store.db, 10, lease_seconds=60)
    tried = Event(claimed.sequence, claimed.event_id, claimed.type, claimed.source_id, claimed.created_at, 1500)
    backoff = Backoff(first=5.0, cap=60.0, max_age=86400.0)
    outbox.settle(app.store.db, [(tried, Outcome(tried.sequence, False, 500, "HTTP 500"))], backoff, lambda: 0.5)
    [row] = events(app)
    assert (row["state"], row["attempts"]) == ("pending", 1501)


def test_settle_schedules_a_retry_by_the_backoff_then_fails_past_max_age(app):
    acknowledged(app, report())
    [claimed] = outbox.claim(app.store.db, 10, lease_seconds=60)
    backoff = Backoff(first=2.0, cap=10.0, max_age=3600.0)
    outbox.settle(app.store.db, [(claimed, Outcome(claimed.sequence, False, 503, "HTTP 503"))], backoff, lambda: 0.5)
    [row] = events(app)
    assert (row["state"], row["attempts"], row["last_status"], row["last_error"]) == ("pending", 1, 503, "HTTP 503")
    assert row["lease_until"] is None
    waited = times.parse_stored(row["next_attempt_at"]) - times.parse_stored(row["last_attempt_at"])
    assert waited == timedelta(seconds=2.0)
    assert outbox.claim(app.store.db, 10, 60) == []  # not due yet

    # The same event, written as made long ago: the next failure gives it up, and keeps it.
    old = times.utc_timestamp(datetime.now(timezone.utc) - timedelta(hours=2))
    aged = Event(claimed.sequence, claimed.event_id, claimed.type, claimed.source_id, old, 1)
    refused = Outcome(aged.sequence, False, None, "ConnectError: refused")
    outbox.settle(app.store.db, [(aged, refused)], backoff, lambda: 0.5)
    [row] = events(app)
    assert (row["state"], row["attempts"], row["last_status"], row["last_error"]) == ("failed", 2, None, refused.error)


def test_an_exchange_settles_and_claims_in_one_transaction_so_the_next_of_a_message_follows(app):
    """The forwarder's one write per round: the outcome of `Forwarded` is written and
    `Retrieved` of the same MessageID, blocked until then, is claimed by the same call."""
    acknowledged(app, report("tx-fwd", "Forwarded"))
    acknowledged(app, report("tx-ret", "Retrieved"))
    [forwarded] = outbox.claim(app.store.db, 10, lease_seconds=60)  # the second waits for it
    backoff = Backoff(first=2.0, cap=10.0, max_age=3600.0)
    delivered = Outcome(forwarded.sequence, True, 204)
    with traced(app.store.db) as statements:
        [retrieved] = outbox.exchange(app.store.db, [(forwarded, delivered)], backoff, lambda: 0.5, 10, 60)
    begin = dialect_of(app.store.db).begin  # BEGIN IMMEDIATE on SQLite, BEGIN on PostgreSQL
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [begin, "COMMIT"]
    assert retrieved.sequence == forwarded.sequence + 1
    assert [(row["state"], row["lease_until"] is None) for row in events(app)] == [
        ("delivered", True),
        ("pending", False),
    ]


@only_sqlite
def test_a_claim_reads_only_due_events_in_index_order_and_sorts_nothing(app):
    """A claim holds the write lock: sorting every pending event there made a backlog of
    50,000 drain at a third of the speed, and reading every event that waits for its retry
    (the receiver down) took 9 ms a claim at 50,000 (benchmarks/handoff.py)."""
    plan = app.store.db.execute(
        f"EXPLAIN QUERY PLAN {outbox.claim_sql(SQLITE)}", {"now": times.utc_timestamp(), "limit": 16}
    )
    steps = [step[-1] for step in plan.fetchall()]
    assert any("USING INDEX outbox_due (next_attempt_at<?)" in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps)
    for n in range(3):  # and it still takes the due events, oldest first
        acknowledged(app, report(f"tx-claim-{n}", MessageID=f"<MessageID>claim-{n}</MessageID>"))
    claimed = outbox.claim(app.store.db, 2, lease_seconds=60)
    assert [event.sequence for event in claimed] == [row["sequence"] for row in events(app)][:2]


@only_sqlite
def test_an_events_due_time_is_one_step_down_its_message_ids_events_however_many(app):
    """A new event is due no earlier than the latest due time of its MessageID's pending
    events.  A MessageID sent to many recipients has an event per report, all pending while
    the receiver is down: finding that time must not read them all (outbox_pending_order is
    in due-time order within a MessageID; PostgreSQL's plans: tests/test_postgres_batch.py)."""
    conn = app.store.db.conn

    def steps_to_record(pending: int) -> int:
        """SQLite's virtual machine steps to record one event of a MessageID with `pending`
        events waiting; nothing of it kept."""
        conn.execute("BEGIN")
        try:
            conn.executemany(
                f"INSERT INTO {OUTBOX} (event_id, type, source_id, order_key, created_at, next_attempt_at)"
                " VALUES (?, 'delivery_report', ?, 'mid-many', '2026-12-04T00:00:00Z', ?)",
                [(f"evt_{n}", n, f"2026-12-04T00:{n // 60 % 60:02}:{n % 60:02}Z") for n in range(pending)],
            )
            steps = itertools.count()
            conn.set_progress_handler(lambda: next(steps) < 0, 1)  # counts each step, stops none
            try:
                event = {"event_id": "e", "type": "message", "source_id": 0, "order_key": "mid-many", "created_at": "x"}
                conn.execute(outbox.record_sql(SQLITE), event).fetchall()
            finally:
                conn.set_progress_handler(None, 1)
            return next(steps)
        finally:
            conn.execute("ROLLBACK")

    few, many = steps_to_record(3), steps_to_record(3000)
    assert many < few + 50, (few, many)  # a few steps more for a deeper index, not one per event


@only_sqlite
def test_a_claim_finds_earlier_events_of_a_message_id_among_its_own(app):
    steps = [
        step[-1]
        for step in app.store.db.execute(
            f"EXPLAIN QUERY PLAN {outbox.claim_sql(SQLITE)}", {"now": "x", "limit": 2}
        ).fetchall()
    ]
    assert any("USING INDEX outbox_pending_order (order_key=?" in step for step in steps), steps


@only_postgresql
def test_a_claim_can_read_only_due_events_in_index_order_on_postgresql(app):
    """PostgreSQL's plan follows its statistics: with a few rows it rightly reads the table and
    sorts it (at 50,000 pending events it takes outbox_due).  Told not to, it must find an
    index that the claim's condition narrows and that gives its order, so nothing is sorted."""
    db = app.store.db
    db.execute("SET enable_seqscan = off")
    db.execute("SET enable_sort = off")
    try:
        plan = db.execute(f"EXPLAIN {outbox.claim_sql(POSTGRESQL)}", {"now": times.utc_timestamp(), "limit": 16})
        steps = [row[0] for row in plan.fetchall()]
    finally:
        db.execute("RESET enable_seqscan")
        db.execute("RESET enable_sort")
    assert any("Index Scan using outbox_due on outbox o " in step for step in steps), steps
    assert any("Index Cond: (next_attempt_at <= " in step for step in steps), steps
    assert not any("Sort" in step for step in steps), steps
    assert any("LockRows" in step for step in steps), steps  # FOR UPDATE … SKIP LOCKED
    for n in range(3):  # and it still takes the due events, oldest first
        acknowledged(app, report(f"tx-claim-{n}", MessageID=f"<MessageID>claim-{n}</MessageID>"))
    claimed = outbox.claim(app.store.db, 2, lease_seconds=60)
    assert [event.sequence for event in claimed] == [row["sequence"] for row in events(app)][:2]


def failed_once(app: Any, event: Event, backoff: Backoff) -> dict[str, Any]:
    outbox.settle(app.store.db, [(event, Outcome(event.sequence, False, 503, "HTTP 503"))], backoff, lambda: 0.5)
    return next(row for row in events(app) if row["sequence"] == event.sequence)


def test_a_report_behind_one_waiting_for_its_retry_waits_with_it(app):
    """Sinch's Retrieved arriving while Forwarded of the same MessageID waits for a retry is not
    due before it: claims never read the pile of such events an outage makes."""
    backoff = Backoff(first=30.0, cap=60.0, max_age=3600.0)
    acknowledged(app, report("tx-fwd", "Forwarded"))
    [forwarded] = outbox.claim(app.store.db, 10, lease_seconds=60)
    waiting = failed_once(app, forwarded, backoff)
    acknowledged(app, report("tx-ret", "Retrieved"))
    acknowledged(app, report("tx-other", MessageID="<MessageID>another-message</MessageID>"))
    rows = events(app)
    assert rows[1]["next_attempt_at"] == waiting["next_attempt_at"]  # behind Forwarded
    assert rows[2]["next_attempt_at"] == rows[2]["created_at"]  # another MessageID: due at once
    assert [e.sequence for e in outbox.claim(app.store.db, 10, 60)] == [rows[2]["sequence"]]


def test_a_failed_attempt_takes_the_later_reports_of_its_message_with_it(app):
    backoff = Backoff(first=30.0, cap=60.0, max_age=3600.0)
    acknowledged(app, report("tx-fwd", "Forwarded"))
    acknowledged(app, report("tx-ret", "Retrieved"))  # due, but behind Forwarded
    acknowledged(app, report("tx-other", MessageID="<MessageID>another-message</MessageID>"))
    claimed = outbox.claim(app.store.db, 10, lease_seconds=60)
    assert len(claimed) == 2  # Forwarded and the other; not Retrieved
    waiting = failed_once(app, claimed[0], backoff)
    rows = events(app)
    assert rows[1]["next_attempt_at"] == waiting["next_attempt_at"]
    assert rows[2]["next_attempt_at"] == rows[2]["created_at"]  # the other message is not held back
    # Given up (a dead letter), it holds nothing back: the next report goes at once.
    old = times.utc_timestamp(datetime.now(timezone.utc) - timedelta(hours=2))
    aged = Event(claimed[0].sequence, claimed[0].event_id, claimed[0].type, claimed[0].source_id, old, 1)
    app.store.db.execute("UPDATE outbox SET next_attempt_at = ? WHERE sequence = ?", [old, rows[1]["sequence"]])
    assert failed_once(app, aged, backoff)["state"] == "failed"
    assert rows[1]["sequence"] in [e.sequence for e in outbox.claim(app.store.db, 10, 60)]


# --- GET /events ------------------------------------------------------------------------------


def store_reports(app: Any, count: int, prefix: str = "tx") -> None:
    for n in range(count):
        acknowledged(app, report(tx=f"{prefix}-{n}", MessageID=f"<MessageID>{prefix}-msg-{n}</MessageID>"))


def test_events_pages_by_after_and_limit_in_sequence_order(app):
    store_reports(app, 5)
    status, first = get_events(app, "limit=2")
    assert status == 200
    assert [e["data"]["message_id"] for e in first["events"]] == ["tx-msg-0", "tx-msg-1"]
    assert first["next_after"] == first["events"][-1]["sequence"]

    status, rest = get_events(app, f"after={first['next_after']}&limit=10")
    assert [e["data"]["message_id"] for e in rest["events"]] == ["tx-msg-2", "tx-msg-3", "tx-msg-4"]
    sequences = [e["sequence"] for e in first["events"] + rest["events"]]
    assert sequences == [e["sequence"] for e in events(app)]

    status, empty = get_events(app, f"after={rest['next_after']}")
    assert (status, empty) == (200, {"events": [], "next_after": rest["next_after"]})  # the cursor stays put


def test_an_event_from_events_is_what_the_webhook_carries(app):
    acknowledged(app, report(StatusText="<StatusText>Grüße</StatusText>"))
    [row] = events(app)
    _, page = get_events(app)
    [event] = page["events"]
    assert event == {
        "type": "delivery_report",
        "id": row["event_id"],
        "sequence": row["sequence"],
        "timestamp": row["created_at"],
        "data": event["data"],
    }
    [stored] = app.store.delivery_reports()
    assert event["data"]["status_text"] == "Grüße" and event["data"]["id"] == stored["id"]
    assert "raw_envelope" not in event["data"]


def test_events_carries_the_raw_envelope_only_when_asked(make_app):
    plain = make_app()
    acknowledged(plain, report())
    assert "raw_envelope" not in get_events(plain)[1]["events"][0]["data"]
    raw = make_app(webhook_include_raw=1)
    assert get_events(raw)[1]["events"][0]["data"]["raw_envelope"] == report().decode()


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=1001", "limit=", "after=1.5"])
def test_bad_events_parameters_are_400_json(app, query):
    status, answer = get_events(app, query)
    assert status == 400
    assert "after" in answer["error"] or "limit" in answer["error"]


def test_an_after_past_sqlites_integers_is_400_json(app):
    status, answer = get_events(app, f"after={2**63}")
    assert status == 400 and "after" in answer["error"]


def test_events_asks_for_the_mm7_credentials_and_keeps_to_the_allow_list(make_app):
    guarded = make_app(auth_user="vasp", auth_password="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"vasp:s3cret").decode()}
    assert call(guarded, report(), headers=good).status == 200  # one event to (not) see

    response = call(guarded, method="GET", path="/events")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert "events" not in json.loads(response.body)
    wrong = {"Authorization": "Basic " + base64.b64encode(b"vasp:guess").decode()}
    assert get_events(guarded, headers=wrong)[0] == 401
    status, page = get_events(guarded, headers=good)
    assert status == 200 and len(page["events"]) == 1

    elsewhere = make_app(allow_ips=("10.0.0.0/8",))  # the test client is 192.0.2.10
    assert get_events(elsewhere)[0] == 403


def test_paging_while_writers_store_never_skips_or_repeats_an_event(make_app):
    """Readers that page by `after=` as reports are committed (by two apps, as two workers
    would) see every event exactly once: a sequence is never committed after a higher one."""
    apps = [make_app(busy_timeout_ms=5000), make_app(busy_timeout_ms=5000)]
    writers_done = threading.Event()
    failures: list[BaseException] = []

    def write(app: Any, name: str) -> None:
        try:
            for n in range(30):
                body = report(tx=f"{name}-{n}", MessageID=f"<MessageID>{name}-{n}</MessageID>")
                assert call(app, body).text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
        except BaseException as exc:
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(apps[n % 2], f"w{n}")) for n in range(4)]
    for thread in writers:
        thread.start()
    threading.Thread(target=lambda: ([t.join() for t in writers], writers_done.set()), daemon=True).start()

    seen: list[int] = []
    after, pages_meanwhile = 0, 0
    while True:
        finished = writers_done.is_set()  # read before the page: a page after the end sees all
        _, page = get_events(apps[0], f"after={after}&limit=7")
        seen += [e["sequence"] for e in page["events"]]
        after = page["next_after"]
        pages_meanwhile += bool(page["events"]) and not finished
        if finished and not page["events"]:
            break
    assert not failures, failures
    assert pages_meanwhile >= 3  # it did page while the writers wrote
    assert seen == [e["sequence"] for e in events(apps[0])]  # all, in order, none twice
    assert len(seen) == 4 * 30 and seen == list(range(seen[0], seen[0] + len(seen)))


# --- Settings ----------------------------------------------------------------------------------


def webhook_env(**values: str) -> dict[str, str]:
    return {f"MM7SOAP_WEBHOOK_{name.upper()}": value for name, value in values.items()}


def test_good_webhook_settings_are_read_from_the_environment():
    settings = Settings.from_env(webhook_env(url="https://hooks.example.com/mm7", secret=SECRET, include_raw="1"))
    assert settings.webhook_url == "https://hooks.example.com/mm7"
    assert (settings.webhook_secret, settings.webhook_include_raw) == (SECRET, 1)


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"url": "ftp://x", "secret": SECRET}, "http:// or https://"),
        ({"url": "hooks.example.com/mm7", "secret": SECRET}, "http:// or https://"),
        ({"url": "http://", "secret": SECRET}, "with a host"),
        ({"url": "https://hooks.example.com/"}, "but webhook_secret is not"),
        ({"url": "https://hooks.example.com/", "secret": "whsec_not*base64!!"}, "not base64"),
        ({"url": "https://hooks.example.com/", "secret": "whsec_" + base64.b64encode(b"short").decode()}, "shorter"),
        ({"url": "https://hooks.example.com/", "secret": SECRET, "concurrency": "0"}, "concurrency"),
        ({"url": "https://hooks.example.com/", "secret": SECRET, "retry_first": "0"}, "retry_first"),
    ],
)
def test_bad_webhook_settings_fail_at_start_without_repeating_the_secret(values, said):
    with pytest.raises(ValueError, match=said) as raised:
        Settings.from_env(webhook_env(**values))
    secret = values.get("secret", "")
    assert not secret or secret.removeprefix("whsec_") not in str(raised.value)


def test_an_events_page_stops_at_about_eight_mebibytes_of_parts(app, monkeypatch):
    """`limit` MOs of 20 MiB each would be gigabytes in one answer: a page stops at the
    event that passes PAGE_BYTES, and `next_after` takes the reader on from there."""
    from tests.test_deliver import ROOT
    from tests.test_mime import part

    monkeypatch.setattr(outbox, "PAGE_BYTES", 300_000)
    picture = bytes(range(256)) * 600  # 150 KiB: 200 KiB in base64
    for number in range(3):
        parts = [
            part(ROOT, envelope(tx=f"big-{number}")),
            part(["Content-Type: image/png", "Content-ID: <x>"], picture),
        ]
        parts[0] = parts[0].replace(b"mo-1", f"mo-big-{number}".encode())
        assert post(app, parts).status == 200
    status, first = get_events(app, "after=0&limit=10")
    assert status == 200 and [event["sequence"] for event in first["events"]] == [1, 2]
    status, rest = get_events(app, f"after={first['next_after']}&limit=10")
    assert [event["sequence"] for event in rest["events"]] == [3]

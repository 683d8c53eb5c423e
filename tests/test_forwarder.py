"""The forwarder (issue 18): the outbox's events POSTed to a real local receiver, signed per
Standard Webhooks (checked with the `standardwebhooks` package, not our code), retried with
backoff, kept when given up, in order per MessageID, many at once over keep-alive, and taken
over from a forwarder that died.

The receivers are real HTTP servers on 127.0.0.1 in threads: the forwarder's httpx client is
what is under test, so nothing of it is mocked.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from mm7soap import outbox, times
from mm7soap.envelope import raw_text
from mm7soap.forwarder import Forwarder
from mm7soap.settings import Settings
from tests.backends import durability, on_postgresql, other_connection
from tests.helpers import call, data
from tests.test_deliver import JPEG, TEXT, sinch_body, sinch_envelope
from tests.test_stored_right import acknowledged, report

SECRET = "whsec_" + base64.b64encode(b"forwarder-test-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else-s-secret-012345678").decode()


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL, unless narrowed to one engine."""
    return backend_settings


# --- A receiver: a real HTTP server that answers as a test tells it ---------------------------


@dataclass(frozen=True)
class Delivery:
    """One POST as the receiver got it."""

    event_id: str
    attempt: int  # 1 for the first delivery of this webhook-id, 2 for its first retry, …
    headers: dict[str, str]
    body: bytes
    port: int  # the client's port: one per connection
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


# What a receiver does with a delivery: the HTTP status it answers, after how many seconds.
Policy = Callable[[Delivery], tuple[int, float]]


def answer(status: int = 200, delay: float = 0.0) -> Policy:
    return lambda delivery: (status, delay)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a late answer to a client that timed out and hung up: expected here


class Receiver:
    """Records every delivery, and the order of arrivals and 2xx answers."""

    def __init__(self, policy: Policy, port: int = 0) -> None:
        self.policy = policy
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.timeline: list[tuple[str, str]] = []  # ("arrived" or "2xx", webhook-id)
        self.active = self.most_active = 0
        self.server = QuietServer(("127.0.0.1", port), type("Handler", (Handler,), {"receiver": self}))
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/mm7"

    def arrived(self, headers: dict[str, str], body: bytes, port: int) -> tuple[int, float]:
        event_id = headers.get("webhook-id", "")
        with self.lock:
            attempt = 1 + sum(d.event_id == event_id for d in self.deliveries)
            delivery = Delivery(event_id, attempt, headers, body, port, time.monotonic())
            self.deliveries.append(delivery)
            self.timeline.append(("arrived", event_id))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        return self.policy(delivery)

    def answering(self, event_id: str, status: int) -> None:
        """Noted before the answer is written: the forwarder cannot have seen it earlier."""
        with self.lock:
            self.active -= 1
            if 200 <= status < 300:
                self.timeline.append(("2xx", event_id))

    def by_id(self) -> dict[str, list[Delivery]]:
        found: dict[str, list[Delivery]] = {}
        for delivery in self.deliveries:
            found.setdefault(delivery.event_id, []).append(delivery)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connections can be counted
    receiver: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, delay = self.receiver.arrived(headers, body, self.client_address[1])
        time.sleep(delay)
        self.receiver.answering(headers.get("webhook-id", ""), status)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(policy: Policy | None = None, port: int = 0) -> Receiver:
        made.append(Receiver(policy or answer(200), port))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# --- Running a forwarder ------------------------------------------------------------------------


def forwarding(settings: Settings, url: str, **changes: Any) -> Settings:
    """`settings` forwarding to `url`, with retries quick enough for a test."""
    quick = {"webhook_timeout": 2.0, "webhook_retry_first": 0.05, "webhook_retry_cap": 0.2, **changes}
    return replace(settings, webhook_url=url, webhook_secret=SECRET, **quick).checked()


@contextmanager
def running(settings: Settings) -> Iterator[Forwarder]:
    """A forwarder running in a thread until the block ends (then stopped, joined, closed)."""
    forwarder = Forwarder(settings)
    thread = threading.Thread(target=forwarder.run, name="forwarder")
    thread.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()
        thread.join(10)
        forwarder.close()
    assert not thread.is_alive(), "the forwarder did not stop"


def drain(settings: Settings, within: float = 10.0) -> float:
    """Forward until no event is pending; the seconds it took."""
    forwarder = Forwarder(settings)
    thread = threading.Thread(target=forwarder.run, kwargs={"until_drained": True}, name="forwarder")
    started = time.monotonic()
    thread.start()
    thread.join(within)
    took = time.monotonic() - started
    drained = not thread.is_alive()
    forwarder.stop()
    thread.join(10)
    forwarder.close()
    assert drained, f"events still pending after {within} s: {pending_states(settings)}"
    return took


def pending_states(settings: Settings) -> list[tuple]:
    with other_connection(settings.database) as db:
        return db.execute("SELECT sequence, state, attempts, last_status, last_error FROM outbox").fetchall()


def eventually(check: Callable[[], Any], within: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.01)


def events(app: Any) -> list[dict[str, Any]]:
    return list(app.store.db.query("SELECT * FROM outbox ORDER BY sequence"))


def row_of(app: Any, table: str, row_id: int) -> dict[str, Any]:
    [row] = app.store.db.query(f"SELECT * FROM {table} WHERE id = ?", [row_id])
    return row


def free_port() -> int:
    """A port nothing listens on (until a test starts a receiver there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_reports(app: Any, count: int, prefix: str = "tx") -> None:
    for n in range(count):
        acknowledged(app, report(tx=f"{prefix}-{n}", MessageID=f"<MessageID>{prefix}-msg-{n}</MessageID>"))


# --- What is delivered --------------------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks_and_carries_the_stored_row(app, receivers):
    acknowledged(app, data("sinch_delivery_report.xml"))
    receiver = receivers()
    drain(forwarding(app.settings, receiver.url))

    [delivery] = receiver.deliveries
    sent = Webhook(SECRET).verify(delivery.body, delivery.headers)  # the reference verifier
    [event] = events(app)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"] == sent["id"] == event["event_id"]
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 10
    assert sent["type"] == "delivery_report"
    assert (sent["sequence"], sent["timestamp"]) == (event["sequence"], event["created_at"])
    stored = row_of(app, "delivery_reports", event["source_id"])
    assert sent["data"] == {name: value for name, value in stored.items() if name != "raw_envelope"}
    assert (sent["data"]["message_id"], sent["data"]["mm_status"]) == ("481516234200000001", "Retrieved")

    # The signature is what makes it trustworthy: another secret, or another body, fails.
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(delivery.body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery.body.replace(b"Retrieved", b"Rejected!"), delivery.headers)

    [event] = events(app)
    assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 1, 200)
    assert event["last_error"] is None
    assert event["delivered_at"] is not None and event["lease_until"] is None


def test_an_mo_is_delivered_with_its_parts_bytes_in_base64(app, receivers):
    body, content_type = sinch_body(sinch_envelope())
    assert call(app, body, content_type=content_type).status == 200
    receiver = receivers()
    drain(forwarding(app.settings, receiver.url))

    [delivery] = receiver.deliveries
    sent = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert sent["type"] == "message" and sent["data"]["linked_id"] == "sinch-mo-1"
    [message] = app.store.messages()
    stored_parts = app.store.message_parts(message["id"], with_data=True)
    assert [base64.b64decode(part["data"]) for part in sent["data"]["parts"]] == [JPEG, TEXT]
    assert [base64.b64decode(part["data"]) for part in sent["data"]["parts"]] == [p["data"] for p in stored_parts]
    assert [part["content_type"] for part in sent["data"]["parts"]] == [p["content_type"] for p in stored_parts]


@pytest.mark.parametrize("include_raw", [0, 1])
def test_the_raw_envelope_is_sent_only_when_asked(app, receivers, include_raw):
    acknowledged(app, data("sinch_delivery_report.xml"))
    receiver = receivers()
    drain(forwarding(app.settings, receiver.url, webhook_include_raw=include_raw))
    [delivery] = receiver.deliveries
    sent = Webhook(SECRET).verify(delivery.body, delivery.headers)
    if include_raw:
        assert sent["data"]["raw_envelope"] == raw_text(data("sinch_delivery_report.xml"))
    else:
        assert "raw_envelope" not in sent["data"]


# --- Delivered, retried, given up ---------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_any_2xx_is_delivered_at_the_first_attempt(app, receivers, status):
    acknowledged(app, report())
    receiver = receivers(answer(status))
    drain(forwarding(app.settings, receiver.url))
    assert len(receiver.deliveries) == 1
    [event] = events(app)
    assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 1, status)


FAILURES: dict[str, tuple[int, float]] = {
    "300": (300, 0.0),
    "400": (400, 0.0),
    "500": (500, 0.0),
    "timeout": (200, 0.9),  # a 2xx, but after webhook_timeout (0.3 s): the forwarder has given up on it
}


@dataclass(frozen=True)
class Attempt:
    """One POST, timed around the forwarder's own call of it."""

    started: float
    ended: float
    error: str | None  # the exception's class, or None for an answer

    @property
    def took(self) -> float:
        return self.ended - self.started


def timed_attempts(monkeypatch: pytest.MonkeyPatch) -> list[Attempt]:
    """Every POST the forwarder makes, timed by the forwarder's thread: its timeout and backoff
    are bounds on the forwarder's own clock.  The receiver's arrival times are late by however
    long its thread waited for the CPU, so gaps between them could be shorter than either on a
    loaded machine (CI: 0.23 s between two attempts that each waited for a 0.3 s timeout)."""
    attempts: list[Attempt] = []
    post = Forwarder.post

    def timed(self: Forwarder, body: bytes, headers: dict[str, str]) -> int:
        started, error = time.monotonic(), None
        try:
            return post(self, body, headers)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            attempts.append(Attempt(started, time.monotonic(), error))

    monkeypatch.setattr(Forwarder, "post", timed)
    return attempts


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_attempt_is_retried_with_the_same_webhook_id(app, receivers, failure, monkeypatch):
    acknowledged(app, report())
    receiver = receivers(lambda delivery: failure if delivery.attempt <= 2 else (200, 0.0))
    timeout = 0.3 if failure[1] else 2.0  # only the slow receiver's attempts are meant to time out
    attempts = timed_attempts(monkeypatch)
    drain(forwarding(app.settings, receiver.url, webhook_timeout=timeout))

    [event] = events(app)
    assert [d.event_id for d in receiver.deliveries] == [event["event_id"]] * 3
    for delivery in receiver.deliveries:
        Webhook(SECRET).verify(delivery.body, delivery.headers)  # signed afresh, with that attempt's time
    assert len({d.json["id"] for d in receiver.deliveries}) == 1
    assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 3, 200)
    assert len(attempts) == 3
    waits = [later.started - earlier.ended for earlier, later in pairwise(attempts)]
    assert waits[0] >= 0.025 and waits[1] >= 0.05  # webhook_retry_first, doubled, at least halved by jitter
    if failure[1]:  # each slow attempt was given up at the timeout, not before
        assert [attempt.error for attempt in attempts] == ["ReadTimeout", "ReadTimeout", None]
        assert min(attempt.took for attempt in attempts[:2]) >= timeout


def test_a_refused_connection_is_retried_until_the_receiver_listens(app, receivers):
    acknowledged(app, report())
    port = free_port()
    with running(forwarding(app.settings, f"http://127.0.0.1:{port}/hooks")):

        def refused_twice() -> bool:
            [event] = events(app)
            return event["attempts"] >= 2

        eventually(refused_twice, what="two refused attempts")
        [event] = events(app)
        assert (event["state"], event["last_status"]) == ("pending", None)
        assert event["last_error"].startswith("ConnectError")

        receiver = receivers(port=port)
        eventually(lambda: events(app)[0]["state"] == "delivered", what="the delivery")
    assert [d.event_id for d in receiver.deliveries] == [event["event_id"]]


# How a receiver keeps failing: its answer (None: nothing listens), and the error kept.
KEEPS_FAILING: dict[str, tuple[tuple[int, float] | None, int | None, str]] = {
    "500": ((500, 0.0), 500, "HTTP 500"),
    "timeout": ((200, 0.6), None, "ReadTimeout"),
    "refused": (None, None, "ConnectError"),
}


@pytest.mark.parametrize(("answers", "status", "error"), KEEPS_FAILING.values(), ids=KEEPS_FAILING.keys())
def test_an_event_past_max_age_is_failed_and_kept(app, receivers, answers, status, error):
    acknowledged(app, report())
    receiver = receivers(answer(*answers)) if answers else None
    url = receiver.url if receiver else f"http://127.0.0.1:{free_port()}/hooks"
    # The max age counts from the report's commit, the forwarder's start (a connection, the
    # migration check) included: 0.4 s was one attempt's worth on a loaded host, and the event
    # was given up at its first failure (seen on SQLite and PostgreSQL alike).
    drain(forwarding(app.settings, url, webhook_max_age=1.2, webhook_timeout=0.2))

    [event] = events(app)
    assert event["state"] == "failed"
    assert event["attempts"] >= 2 and event["delivered_at"] is None
    assert event["last_status"] == status and event["last_error"].startswith(error)
    if receiver is not None:
        assert [d.event_id for d in receiver.deliveries] == [event["event_id"]] * event["attempts"]
    # Kept: the report, and its event, still readable (and retried only by hand).
    assert len(list(app.store.delivery_reports())) == 1
    page = json.loads(call(app, method="GET", path="/events").body)
    assert [e["id"] for e in page["events"]] == [event["event_id"]]


# --- Order -------------------------------------------------------------------------------------


def test_one_message_ids_events_arrive_in_order_and_others_do_not_wait(app, receivers):
    """Forwarded, then Retrieved, for msg-A; the receiver fails Forwarded's first attempts.
    Retrieved must not arrive before Forwarded is acknowledged, and msg-B's events, stored
    after both, are delivered meanwhile."""
    stored = [("msg-A", "Forwarded"), ("msg-A", "Retrieved"), ("msg-B", "Forwarded"), ("msg-B", "Retrieved")]
    for n, (message_id, status) in enumerate(stored):
        acknowledged(app, report(tx=f"tx-{n}", status=status, MessageID=f"<MessageID>{message_id}</MessageID>"))
    assert [e["order_key"] for e in events(app)] == [message_id for message_id, _ in stored]
    ids = dict(zip(stored, [e["event_id"] for e in events(app)], strict=True))  # stored order is sequence order
    a_forwarded, a_retrieved = ids["msg-A", "Forwarded"], ids["msg-A", "Retrieved"]
    b_forwarded, b_retrieved = ids["msg-B", "Forwarded"], ids["msg-B", "Retrieved"]

    def fail_a_forwarded_three_times(delivery: Delivery) -> tuple[int, float]:
        return (503, 0.0) if delivery.event_id == a_forwarded and delivery.attempt <= 3 else (200, 0.0)

    receiver = receivers(fail_a_forwarded_three_times)
    drain(forwarding(app.settings, receiver.url))

    timeline = receiver.timeline
    assert len(receiver.by_id()[a_forwarded]) == 4
    assert timeline.index(("arrived", a_retrieved)) > timeline.index(("2xx", a_forwarded))
    assert timeline.index(("arrived", b_retrieved)) > timeline.index(("2xx", b_forwarded))
    assert timeline.index(("2xx", b_retrieved)) < timeline.index(("2xx", a_forwarded))  # B did not wait
    assert all(len(receiver.by_id()[i]) == 1 for i in (a_retrieved, b_forwarded, b_retrieved))
    assert {e["state"] for e in events(app)} == {"delivered"}


# --- Many at once ------------------------------------------------------------------------------


def test_many_deliveries_are_in_flight_at_once_over_keep_alive(make_app, receivers):
    app = make_app(synchronous="OFF")  # only to store the 40 reports quickly
    store_reports(app, 40)
    receiver = receivers(answer(200, delay=0.2))
    took = drain(forwarding(app.settings, receiver.url, webhook_concurrency=8))

    assert took < 3.0, f"40 deliveries of 0.2 s took {took:.2f} s: not 8 at a time"  # 8 s one by one
    assert 6 <= receiver.most_active <= 8
    assert sorted(d.event_id for d in receiver.deliveries) == sorted(e["event_id"] for e in events(app))
    connections = {d.port for d in receiver.deliveries}
    assert len(connections) <= 8, f"{len(connections)} connections for 40 deliveries: no keep-alive"


def test_a_stopped_forwarder_finishes_and_settles_what_is_in_flight(app, receivers):
    acknowledged(app, report())
    receiver = receivers(answer(200, delay=0.3))
    with running(forwarding(app.settings, receiver.url)) as forwarder:
        eventually(lambda: receiver.deliveries, what="a delivery")
        forwarder.stop()
    [event] = events(app)
    assert (event["state"], event["attempts"], event["lease_until"]) == ("delivered", 1, None)


# --- Leases --------------------------------------------------------------------------------------


def test_an_event_leased_by_a_dead_forwarder_waits_for_the_lease_then_is_delivered(app, receivers):
    acknowledged(app, report())
    claimed_at = time.monotonic()
    [claimed] = outbox.claim(app.store.db, 10, lease_seconds=0.8)  # ... and then this forwarder "dies"
    receiver = receivers()
    with running(forwarding(app.settings, receiver.url)):
        time.sleep(0.5)
        assert receiver.deliveries == []  # still leased: the other forwarder keeps off it
        eventually(lambda: receiver.deliveries, what="the delivery after the lease")
    [delivery] = receiver.deliveries
    assert delivery.at - claimed_at >= 0.75
    assert delivery.event_id == claimed.event_id
    [event] = events(app)
    assert (event["state"], event["attempts"]) == ("delivered", 1)


def test_an_expired_lease_is_taken_over_at_once(app, receivers):
    acknowledged(app, report())
    outbox.claim(app.store.db, 10, lease_seconds=3600)
    past = times.utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=1))
    app.store.db.execute("UPDATE outbox SET lease_until = ?", [past])
    receiver = receivers()
    started = time.monotonic()
    with running(forwarding(app.settings, receiver.url)):
        eventually(lambda: receiver.deliveries, within=2.0, what="the delivery")
    assert receiver.deliveries[0].at - started < 2.0  # not the hour the lease was taken for


def test_a_slow_attempt_keeps_its_lease_renewed_and_is_not_delivered_twice(app, receivers):
    """An answer slower than the lease, each read within the timeout: the lease is renewed
    while it is in flight, so the event is not claimed again meanwhile."""
    acknowledged(app, report())
    receiver = receivers(answer(200, delay=1.2))
    forwarder = Forwarder(forwarding(app.settings, receiver.url))
    forwarder.lease_seconds = 0.3  # renewed every 0.1 s; the answer takes four leases
    thread = threading.Thread(target=forwarder.run, kwargs={"until_drained": True})
    thread.start()
    thread.join(10)
    forwarder.close()
    assert [d.attempt for d in receiver.deliveries] == [1]
    [event] = events(app)
    assert (event["state"], event["attempts"]) == ("delivered", 1)


def test_an_attempt_past_its_deadline_is_given_up_and_retried(app, receivers, monkeypatch):
    """httpx's timeout bounds each read, not a whole answer: an attempt still unanswered after
    its deadline counts as failed, and the event is delivered again (the same webhook-id)."""
    import mm7soap.forwarder

    monkeypatch.setattr(mm7soap.forwarder, "ATTEMPT_DEADLINE_FACTOR", 0.1)  # 0.2 s, with a 0.1 s lease
    acknowledged(app, report())
    receiver = receivers(lambda delivery: (200, 1.5 if delivery.attempt == 1 else 0.0))
    forwarder = Forwarder(forwarding(app.settings, receiver.url))
    forwarder.lease_seconds = 0.1
    thread = threading.Thread(target=forwarder.run, kwargs={"until_drained": True})
    thread.start()
    thread.join(10)
    forwarder.close()
    assert [d.attempt for d in receiver.deliveries][:2] == [1, 2]
    assert len({d.event_id for d in receiver.deliveries}) == 1
    [event] = events(app)
    assert event["state"] == "delivered" and event["attempts"] >= 2


def test_two_forwarders_deliver_each_event_once(app, receivers):
    store_reports(app, 20)
    receiver = receivers(answer(200, delay=0.05))
    settings = forwarding(app.settings, receiver.url, webhook_concurrency=2, busy_timeout_ms=2000)
    with running(settings), running(settings):
        eventually(lambda: len(receiver.deliveries) >= 20, what="20 deliveries")
        time.sleep(0.2)  # time for a second delivery of any event, were there one
    assert sorted(d.event_id for d in receiver.deliveries) == sorted(e["event_id"] for e in events(app))
    assert {e["state"] for e in events(app)} == {"delivered"}


# --- How the loop spends its effort -------------------------------------------------------------


def test_a_new_event_is_claimed_at_once_when_another_connection_commits_it(app, receivers, monkeypatch):
    """When idle, the forwarder looks at `PRAGMA data_version` (no lock) rather than claiming:
    a commit by the service is seen at the next look, not at the next IDLE_SECONDS."""
    import mm7soap.forwarder

    monkeypatch.setattr(mm7soap.forwarder, "IDLE_SECONDS", 60.0)
    receiver = receivers()
    with running(forwarding(app.settings, receiver.url)) as forwarder:
        time.sleep(0.2)  # idle now: its first claim found nothing
        claims = count_exchanges(forwarder, monkeypatch)
        time.sleep(0.3)
        assert claims == [], "an idle forwarder with nothing committed claimed anyway"
        committed = time.monotonic()
        acknowledged(app, report())  # the app's own connection: another one than the forwarder's
        eventually(lambda: receiver.deliveries, within=2.0, what="the delivery of a new event")
    assert receiver.deliveries[0].at - committed < 2.0  # not the 60 s of IDLE_SECONDS


def test_an_event_falling_due_with_time_is_claimed_without_any_commit(app, receivers, monkeypatch):
    """A retry's backoff ends with no commit by anyone: IDLE_SECONDS bound how late it is seen."""
    import mm7soap.forwarder

    monkeypatch.setattr(mm7soap.forwarder, "IDLE_SECONDS", 0.1)
    acknowledged(app, report())
    soon = times.utc_timestamp(datetime.now(timezone.utc) + timedelta(seconds=0.5))
    app.store.db.execute("UPDATE outbox SET next_attempt_at = ?", [soon])
    receiver = receivers()
    with running(forwarding(app.settings, receiver.url)):
        eventually(lambda: receiver.deliveries, within=3.0, what="the delivery once due")


def count_exchanges(forwarder: Forwarder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The `room` of each claim the forwarder makes from now on."""
    made: list[int] = []
    real = forwarder.exchange

    def counted(finished: Any, room: int, renew: Any = ()) -> Any:
        made.append(room)
        return real(finished, room, renew)

    monkeypatch.setattr(forwarder, "exchange", counted)
    return made


def test_the_forwarders_own_writes_do_not_wait_for_the_disk_but_the_reports_do(app, receivers):
    """synchronous NORMAL (PostgreSQL: synchronous_commit off) on the forwarder's connection
    only: a lost outcome means an event delivered again with the same webhook-id; a lost
    report would be a lost report."""
    # The forwarder's, the reports' (FULL, the default), and the forwarder's under the operator's OFF.
    expected = ("off", "on", "off") if on_postgresql(app.store.db) else ("NORMAL", "FULL", "OFF")
    receiver = receivers()
    forwarder = Forwarder(forwarding(app.settings, receiver.url))
    try:
        assert durability(forwarder.store.db) == expected[0]
        assert durability(app.store.db) == expected[1]
    finally:
        forwarder.close()
    off = Forwarder(forwarding(replace(app.settings, synchronous="OFF"), receiver.url))
    try:
        assert durability(off.store.db) == expected[2]  # the operator's OFF stays
    finally:
        off.close()


def test_the_late_outcome_of_an_attempt_given_up_is_dropped():
    """An attempt past its deadline is settled as failed at once; when its thread ends at last,
    what it says is not settled a second time (the event may be in flight again by then)."""
    from mm7soap.forwarder import Attempts
    from mm7soap.outbox import Event, Outcome

    release = threading.Event()

    def deliver(event: Event) -> Outcome:
        release.wait(5)
        return Outcome(event.sequence, True, 204)

    attempts = Attempts(2, deliver)
    event = Event(1, "evt_1", "delivery_report", 1, times.utc_timestamp(), 0)
    try:
        attempts.start(event)
        [(given_up, failed)] = attempts.overdue(deadline=0.0)
        assert (given_up, failed.delivered, failed.error) == (event, False, "no whole answer within 0 s")
        attempts.start(event)  # claimed again: a new attempt
        release.set()
        ended = attempts.finished(2.0)
        while len(ended) < 1:
            ended += attempts.finished(2.0)
        time.sleep(0.1)
        ended += attempts.finished(0.1)
        assert [(e.sequence, o.delivered) for e, o in ended] == [(1, True)], ended  # one, not two
        assert attempts.in_flight == {}
    finally:
        release.set()
        attempts.close()


# --- Configuration ------------------------------------------------------------------------------


def test_a_forwarder_needs_a_webhook_url(settings):
    with pytest.raises(ValueError, match="webhook_url"):
        Forwarder(settings)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"webhook_url": "ftp://x"}, "http:// or https://"),
        ({"webhook_secret": ""}, "but webhook_secret is not"),
        ({"webhook_secret": "whsec_%%%"}, "not base64"),
    ],
)
def test_a_forwarder_refuses_settings_it_could_not_deliver_with(settings, changes, said):
    """Settings made in code skip `Settings.checked`; the forwarder checks them itself."""
    made = replace(settings, **{"webhook_url": "http://127.0.0.1:9/hooks", "webhook_secret": SECRET, **changes})
    with pytest.raises(ValueError, match=said) as raised:
        Forwarder(made)
    assert SECRET.removeprefix("whsec_") not in str(raised.value)

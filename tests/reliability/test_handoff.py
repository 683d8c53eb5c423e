"""Hand-off (issue 18): every request answered 1000 reaches the operator's application.

The service runs under gunicorn with its production config and a webhook URL; the forwarder
that gunicorn's master starts beside the workers POSTs each stored report, read reply and MO
to a real HTTP receiver run here on 127.0.0.1.  The receiver checks every delivery's Standard
Webhooks signature with the `standardwebhooks` package and logs what it took; it can be taken
down (not listening), fail a fraction of deliveries with 500, or answer after the forwarder's
timeout.  Meanwhile MMSC-like senders post at a fixed rate over several keep-alive
connections: single reports, Forwarded-then-Retrieved pairs for one MessageID (some with one
TransactionID for both), read replies after them, MO messages, and resends of acknowledged
requests; each request is re-sent until it is answered 1000, as an MMSC retries.

After each disruption the database's outbox is joined with the receiver's log by event id and
sequence: every acknowledged request has exactly one event and the receiver took it (lost 0);
a delivery repeated (same webhook-id) only when the earlier one's 2xx was lost (answered after
the timeout, cut by the receiver going down, or sent to a forwarder killed before it wrote it);
never the same request under two ids; and for each MessageID the receiver's first deliveries
come in sequence order.

Sizes: MM7SOAP_HANDOFF_REPORTS requests per scenario (default 600) and
MM7SOAP_HANDOFF_DOWN_SECONDS, how long the receiver is down (default 30).  Run with
`pytest -s` to see the figures lines (`RELIABILITY handoff …`).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import template
from tests.reliability.service import (
    BIN,
    NAMESPACE,
    ROOT,
    Client,
    Service,
    alive,
    children,
    delivery_report,
    free_port,
)
from tests.reliability.soak_mix import SWA, deliver

REPORTS = int(os.environ.get("MM7SOAP_HANDOFF_REPORTS", "600"))
DOWN_SECONDS = float(os.environ.get("MM7SOAP_HANDOFF_DOWN_SECONDS", "30"))
SECRET = "whsec_" + base64.b64encode(b"mm7soap hand-off reliability key").decode("ascii")
SENDERS = 6  # an MMSC's sending threads, one keep-alive connection each
RATE = 60.0  # requests per second, but while the receiver is down
WEBHOOK_TIMEOUT = 2.0  # generous: a forwarder starved of CPU on a busy machine must not time out a prompt 2xx
RETRY_FIRST = 0.2
RETRY_CAP = 2.0
# mm7soap.forwarder: the events a killed forwarder had claimed wait for their lease to end
# (and the later events of their MessageIDs with them).
LEASE_SECONDS = 2 * WEBHOOK_TIMEOUT + 30
# An answer written this long after the request arrived may have come after the forwarder
# stopped waiting (its timeout counts from its own send): its 2xx may be lost.
ANSWERED_IN_TIME = 0.5 * WEBHOOK_TIMEOUT
SLOW_ANSWER = WEBHOOK_TIMEOUT + 0.5
REQUEST_TIMEOUT = 10.0  # Sinch gives up on an answer after 10 s
FIRST_PAUSE = 0.02  # an unanswered request is retried after this, doubling up to the longest
LONGEST_PAUSE = 0.3
DRAIN_BUDGET = 30.0  # from the last acknowledgement (after a kill: plus the lease)
KILL_WAIT = 20.0

Key = tuple[str, str, str | None]  # (event type, TransactionID, MMStatus): one stored request


# --- What the MMSC sends --------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    type: str  # the event it makes: delivery_report, read_reply, message
    transaction_id: str
    message_id: str | None
    status: str | None
    body: bytes
    content_type: str = "text/xml; charset=utf-8"

    @property
    def key(self) -> Key:
        return (self.type, self.transaction_id, self.status)


def report(transaction_id: str, message_id: str, status: str) -> Request:
    return Request(
        "delivery_report", transaction_id, message_id, status, delivery_report(transaction_id, message_id, status)
    )


def read_reply(transaction_id: str, message_id: str) -> Request:
    body = template(
        "read_reply_template.xml",
        namespace=NAMESPACE,
        version="6.8.0",
        transaction_id=transaction_id,
        message_id=message_id,
        recipient_tag="Recipient",
        time_tag="TimeStamp",
        time_stamp="2026-11-27T10:00:00Z",
        status="Read",
    )
    return Request("read_reply", transaction_id, message_id, "Read", body)


def mobile_originated(name: str) -> Request:
    """An MO with a picture (SwA); soak_mix names its TransactionID and LinkedID `soak-mo-…`."""
    return Request("message", f"soak-mo-{name}", None, None, deliver(name), SWA)


Unit = tuple[Request, ...]  # sent in order by one sender, each once acknowledged; () is a resend


def plan(name: str, total: int, seed: int) -> list[Unit]:
    """The scenario's requests: seeded, so each run sends the same."""
    rng = random.Random(seed)
    units: list[Unit] = []
    count = 0
    while count < total:
        n = len(units)
        tid, mid = f"{name}-{n:05d}", f"mid-{name}-{n:05d}"
        roll = rng.random()
        if roll < 0.35:  # Forwarded, then Retrieved, for one MessageID; some MMSCs keep the TransactionID
            same = rng.random() < 0.5
            unit: Unit = (report(tid if same else f"{tid}-f", mid, "Forwarded"), report(tid, mid, "Retrieved"))
            if rng.random() < 0.3:  # then the recipient reads it
                unit = (*unit, read_reply(f"{tid}-rr", mid))
        elif roll < 0.85:
            unit = (report(tid, mid, "Retrieved"),)
        elif roll < 0.95:
            unit = (mobile_originated(tid),)
        else:
            unit = ()  # a resend of an acknowledged request
        units.append(unit)
        count += max(len(unit), 1)
    return units


@dataclass
class Traffic:
    """What the senders did, shared between their threads and the test."""

    units: list[Unit]
    rate: float
    start: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_unit: int = 0
    slots: int = 0  # requests given a time in the fixed-rate schedule
    acknowledged: dict[Key, Request] = field(default_factory=dict)  # new requests answered 1000
    acknowledged_first_try: int = 0
    retried: int = 0  # requests (and resends) answered 1000 only after a retry
    unacknowledged: list[Key] = field(default_factory=list)  # never answered 1000 within the budget
    resends: int = 0  # acknowledged requests sent again (each answered 1000 too)
    tries: int = 0  # HTTP requests, with every retry
    in_flight: int = 0
    slowest: float = 0.0  # the longest wait for a 1000
    stop: threading.Event = field(default_factory=threading.Event)  # the test failed: stop sending
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(max(len(unit), 1) for unit in self.units)

    @property
    def sent(self) -> int:
        return len(self.acknowledged) + len(self.unacknowledged)

    def take(self) -> Unit | None:
        with self.lock:
            if self.next_unit >= len(self.units) or self.stop.is_set():
                return None
            self.next_unit += 1
            return self.units[self.next_unit - 1]

    def pace(self) -> None:
        """Waits for the next slot of the schedule: open loop, so a slow service or a killed
        one makes requests wait here (then catch up) rather than lowering the rate."""
        with self.lock:
            due = self.start + self.slots / self.rate
            self.slots += 1
        time.sleep(max(0.0, due - time.monotonic()))


def until_acknowledged(client: Client, traffic: Traffic, request: Request, deadline: float) -> int:
    """Posts `request` until it is answered 1000 (the MMSC's retries); how many tries that
    took, or 0 past the deadline."""
    pause = FIRST_PAUSE
    tries = 0
    while time.monotonic() < deadline and not traffic.stop.is_set():
        with traffic.lock:
            traffic.in_flight += 1
            traffic.tries += 1
        sent = time.monotonic()
        tries += 1
        try:
            answer = client.post(request.body, content_type=request.content_type)
            acknowledged = answer.acknowledged
        except (OSError, http.client.HTTPException):
            acknowledged = False
        with traffic.lock:
            traffic.in_flight -= 1
            if acknowledged:
                traffic.slowest = max(traffic.slowest, time.monotonic() - sent)
                traffic.retried += tries > 1
                return tries
        time.sleep(pause)
        pause = min(2 * pause, LONGEST_PAUSE)
    return 0


def sender(traffic: Traffic, port: int, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    client = Client(port, timeout=REQUEST_TIMEOUT)
    mine: list[Request] = []  # this sender's acknowledged requests, for resends
    try:
        while (unit := traffic.take()) is not None:
            if not unit:
                if mine:
                    traffic.pace()
                    if until_acknowledged(client, traffic, rng.choice(mine), deadline):
                        with traffic.lock:
                            traffic.resends += 1
                continue
            for request in unit:  # a Retrieved goes once its Forwarded is acknowledged
                traffic.pace()
                tries = until_acknowledged(client, traffic, request, deadline)
                acknowledged = tries > 0
                with traffic.lock:
                    if acknowledged:
                        traffic.acknowledged[request.key] = request
                        traffic.acknowledged_first_try += tries == 1
                    else:
                        traffic.unacknowledged.append(request.key)
                if acknowledged:
                    mine.append(request)
    except BaseException as exc:  # reported by the test: an exception in a thread is lost
        traffic.errors.append(repr(exc))
    finally:
        client.close()


@contextmanager
def sending(traffic: Traffic, port: int, budget: float) -> Iterator[list[threading.Thread]]:
    """The senders running while the body of the `with` disrupts things; joined after."""
    traffic.start = time.monotonic()
    deadline = traffic.start + budget
    threads = [
        threading.Thread(target=sender, args=(traffic, port, deadline, seed), name=f"mmsc-{seed}")
        for seed in range(SENDERS)
    ]
    for thread in threads:
        thread.start()
    try:
        yield threads
    except BaseException:
        traffic.stop.set()
        raise
    finally:
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "senders still running past the budget"


def wait_until(condition: Callable[[], bool], what: str, timeout: float, log: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; gunicorn's log:\n{log()}" if log else ""))
        time.sleep(0.002)


# --- The operator's application -------------------------------------------------------------


@dataclass
class Delivery:
    """One delivery the receiver took (verified, answered 2xx or about to be)."""

    position: int  # in the receiver's log
    at: float
    webhook_id: str
    sequence: int
    type: str
    transaction_id: str | None
    message_id: str | None
    mm_status: str | None
    slow: bool = False  # to be answered after the forwarder's timeout
    # answered: the 2xx was written in time; late: after the forwarder's timeout (a lost 2xx);
    # cut: the receiver went down, or the connection broke, before it was answered.
    answer: str = "pending"
    peer: int = 0  # the forwarder's local port: which forwarder delivered it

    @property
    def key(self) -> Key:
        return (self.type, self.transaction_id or "", self.mm_status)


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection cut by `down()`, or by the forwarder's timeout: counted, not printed


class ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
    receiver: ClassVar[Receiver]
    current: Delivery | None = None  # taken, not yet answered

    def setup(self) -> None:
        super().setup()
        self.receiver.opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.receiver.closed(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:  # the forwarder's check at start
        self.answer(200, b"")

    def do_POST(self) -> None:
        self.receiver.receive(self)

    def answer(self, status: int, body: bytes) -> bool:
        """Writes the answer; False when the connection is gone."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False


TRICKLE_BYTES = 80
TRICKLE_PAUSE = 0.45  # under the forwarder's read timeout: each read succeeds


def trickled(handler: ReceiverHandler) -> bool:
    """A 200 whose body comes a byte at a time, TRICKLE_BYTES * TRICKLE_PAUSE seconds in all
    (a receiver behind a slow link or proxy): every read is within the forwarder's timeout."""
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(TRICKLE_BYTES))
        handler.end_headers()
        for _ in range(TRICKLE_BYTES):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(TRICKLE_PAUSE)
        return True
    except OSError:
        handler.close_connection = True
        return False


class Receiver:
    """The operator's webhook receiver on 127.0.0.1, in threads of the test process."""

    def __init__(self, secret: str, port: int | None = None, seed: int = 18) -> None:
        self.webhook = Webhook(secret)
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.server: ReceiverServer | None = None
        self.handlers: set[ReceiverHandler] = set()
        self.up = False
        self.fail_fraction = 0.0  # answered 500, not taken
        self.slow_fraction = 0.0  # taken, answered after the forwarder's timeout
        self.delay = 0.0  # every answer waits this long (deliveries in flight to kill under)
        self.trickle = 0  # the first deliveries taken are answered a byte at a time, past the lease
        self.deliveries: list[Delivery] = []
        self.refused = 0
        self.heads = 0
        self.busy = 0  # deliveries taken and not yet answered
        self.errors: list[str] = []  # bad signatures or payloads: the test fails

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        handler = type("Handler", (ReceiverHandler,), {"receiver": self})
        server = ReceiverServer(("127.0.0.1", self.port), handler)
        with self.lock:
            self.server, self.up = server, True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        """Not listening, and every connection closed: connection refused until `start()`."""
        with self.lock:
            self.up = False
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.lock:
            for handler in self.handlers:
                if handler.current is not None and handler.current.answer == "pending":
                    handler.current.answer = "cut"
                with suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)

    def opened(self, handler: ReceiverHandler) -> None:
        with self.lock:
            self.handlers.add(handler)

    def closed(self, handler: ReceiverHandler) -> None:
        with self.lock:
            self.handlers.discard(handler)

    def receive(self, handler: ReceiverHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        arrived = time.monotonic()
        with self.lock:
            if not self.up or len(body) < length:  # going down, or the forwarder died mid-request
                handler.close_connection = True
                return
            roll = self.rng.random()
        try:
            payload = self.webhook.verify(body, dict(handler.headers))
            data = payload["data"]
            if payload["id"] != handler.headers["webhook-id"]:
                raise ValueError(f"payload id {payload['id']} under webhook-id {handler.headers['webhook-id']}")
        except (WebhookVerificationError, ValueError, KeyError, TypeError) as exc:
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}: {body[:200]!r}")
            handler.answer(400, b'{"error":"bad delivery"}')
            return
        if roll < self.fail_fraction:
            with self.lock:
                self.refused += 1
            handler.answer(500, b'{"error":"try again"}')
            return
        slow = roll < self.fail_fraction + self.slow_fraction
        with self.lock:
            if not self.up:
                handler.close_connection = True
                return
            delivery = Delivery(
                len(self.deliveries),
                time.monotonic(),
                payload["id"],
                payload["sequence"],
                payload["type"],
                data.get("transaction_id"),
                data.get("message_id"),
                data.get("mm_status"),
                slow,
                peer=handler.client_address[1],
            )
            self.deliveries.append(delivery)
            handler.current = delivery
            self.busy += 1
            trickle = len(self.deliveries) <= self.trickle
        time.sleep(SLOW_ANSWER if slow else self.delay)
        if trickle:
            written = trickled(handler)
            arrived = time.monotonic()  # every byte came within the forwarder's timeout: in time
        else:
            written = handler.answer(200, b'{"ok":true}')
        in_time = time.monotonic() - arrived < ANSWERED_IN_TIME
        with self.lock:
            self.busy -= 1
            handler.current = None
            if delivery.answer == "pending":
                delivery.answer = "late" if slow or not in_time else "answered" if written else "cut"

    def log(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def taken(self) -> set[str]:
        with self.lock:
            return {delivery.webhook_id for delivery in self.deliveries}


# --- The service and its outbox -------------------------------------------------------------


def webhook_env(url: str) -> dict[str, str]:
    return {
        "MM7SOAP_WORKERS": "2",
        "MM7SOAP_WEBHOOK_URL": url,
        "MM7SOAP_WEBHOOK_SECRET": SECRET,
        "MM7SOAP_WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT),
        "MM7SOAP_WEBHOOK_RETRY_FIRST": str(RETRY_FIRST),
        "MM7SOAP_WEBHOOK_RETRY_CAP": str(RETRY_CAP),
    }


def forwarders(service: Service) -> list[int]:
    """The master's children running `python -m mm7soap.forwarder`."""
    found = []
    for pid in children(service.master):
        with suppress(OSError):
            if b"mm7soap.forwarder" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


@dataclass(frozen=True)
class StoredEvent:
    sequence: int
    event_id: str
    type: str
    state: str
    attempts: int
    order_key: str | None
    last_error: str | None
    transaction_id: str
    message_id: str | None
    mm_status: str | None

    @property
    def key(self) -> Key:
        return (self.type, self.transaction_id, self.mm_status)


EVENTS_SQL = """
SELECT o.sequence, o.event_id, o.type, o.state, o.attempts, o.order_key, o.last_error,
       COALESCE(r.transaction_id, rr.transaction_id, m.transaction_id),
       COALESCE(r.message_id, rr.message_id), COALESCE(r.mm_status, rr.mm_status)
FROM outbox AS o
LEFT JOIN delivery_reports AS r ON o.type = 'delivery_report' AND r.id = o.source_id
LEFT JOIN read_replies AS rr ON o.type = 'read_reply' AND rr.id = o.source_id
LEFT JOIN messages AS m ON o.type = 'message' AND m.id = o.source_id
ORDER BY o.sequence
"""


def stored_events(database: Path) -> list[StoredEvent]:
    with closing(sqlite3.connect(database, timeout=10)) as conn:
        return [StoredEvent(*row) for row in conn.execute(EVENTS_SQL)]


def stored_rows(database: Path) -> int:
    with closing(sqlite3.connect(database, timeout=10)) as conn:
        return sum(
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("delivery_reports", "read_replies", "messages")
        )


def drain(service: Service, receiver: Receiver, budget: float) -> float:
    """Waits until every event is delivered and the receiver has taken each; the seconds it took."""
    started = time.monotonic()
    while True:
        events = stored_events(service.database)
        if all(e.state == "delivered" for e in events) and {e.event_id for e in events} <= receiver.taken():
            return time.monotonic() - started
        if time.monotonic() - started > budget:
            states = Counter(e.state for e in events)
            errors = Counter(e.last_error for e in events if e.state != "delivered")
            raise AssertionError(
                f"not drained in {budget:.0f} s: {dict(states)}, errors {errors.most_common(3)};"
                f" receiver took {len(receiver.taken())} of {len(events)}; gunicorn's log:\n{service.log_tail()}"
            )
        time.sleep(0.25)


@contextmanager
def handoff(tmp_path: Path, receiver: Receiver | None = None) -> Iterator[tuple[Receiver, Service]]:
    """A receiver and the service forwarding to it; both stopped after, whatever failed."""
    receiver = receiver or Receiver(SECRET)
    receiver.start()
    service = Service(tmp_path / "handoff.db", webhook_env(receiver.url))
    try:
        service.start()
        yield receiver, service
    finally:
        if service.process is not None:
            service.kill_all()  # the master's process group: workers and forwarder too
        receiver.down()


# --- The proof ------------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    values: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        shown = " ".join(f"{name}={format_value(value)}" for name, value in self.values.items())
        return f"RELIABILITY handoff {self.scenario}: {shown}"


def format_value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def explanation(earlier: Delivery, later: Delivery, kills: list[float]) -> str | None:
    """Why `later` repeats `earlier` (the same event), or None when earlier's 2xx was not lost."""
    if any(earlier.at <= kill <= later.at for kill in kills):
        return "kill"  # the forwarder died with the 2xx unwritten (or unread)
    if earlier.answer in ("late", "cut") or earlier.slow:
        return "late" if earlier.slow else earlier.answer
    return None  # answered in time, or still being answered at the repeat: a second claim


def prove(
    scenario: str,
    traffic: Traffic,
    receiver: Receiver,
    service: Service,
    kills: list[float],
    **extra: Any,
) -> Figures:
    """Joins the outbox with the receiver's log; the figures, and every way the hand-off failed."""
    events = stored_events(service.database)
    log = receiver.log()
    figures = Figures(scenario)
    problems = figures.problems
    by_key: dict[Key, list[StoredEvent]] = defaultdict(list)
    for event in events:
        by_key[event.key].append(event)
    by_id = {event.event_id: event for event in events}
    taken: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in log:
        taken[delivery.webhook_id].append(delivery)

    # Every acknowledged request: one event, and the receiver took it.
    lost = [key for key in traffic.acknowledged if not by_key.get(key) or by_key[key][0].event_id not in taken]
    twice_stored = [key for key, found in by_key.items() if len(found) > 1]
    unasked = [key for key in by_key if key not in traffic.acknowledged]
    rows = stored_rows(service.database)
    # What the receiver took is what was stored, under the event's own id and sequence.
    strangers = [d.webhook_id for d in log if d.webhook_id not in by_id]
    mismatched = [
        d.webhook_id
        for d in log
        if d.webhook_id in by_id and (d.sequence, d.key) != (by_id[d.webhook_id].sequence, by_id[d.webhook_id].key)
    ]
    other_ids = [key for key, ids in group_ids(log).items() if len(ids) > 1]
    # Repeats: only of a delivery whose 2xx was lost.
    reasons: Counter[str] = Counter()
    unexplained = []
    for webhook_id, deliveries in taken.items():
        for earlier, later in pairwise(deliveries):
            reason = explanation(earlier, later, kills)
            reasons[reason or "unexplained"] += 1
            if reason is None:
                unexplained.append((webhook_id, earlier.answer, round(later.at - earlier.at, 3)))
    violations, ordered_keys = order_violations(events, taken)
    not_delivered = Counter(event.state for event in events if event.state != "delivered")

    figures.values = {
        "sent": traffic.sent,
        "tries": traffic.tries,
        "acknowledged": len(traffic.acknowledged),
        "acknowledged_first_try": traffic.acknowledged_first_try,
        "retried": traffic.retried,
        "resends": traffic.resends,
        "events": len(events),
        "delivered": len(taken),
        "deliveries": len(log),
        "refused_500": receiver.refused,
        "duplicates_same_id": sum(reasons.values()),
        **{f"duplicates_{reason}": count for reason, count in sorted(reasons.items())},
        "duplicates_other_id": len(other_ids),
        "lost": len(lost),
        "order_violations": violations,
        "message_ids_ordered": ordered_keys,
        "slowest_1000_s": traffic.slowest,
        **extra,
    }
    checks = [
        (not traffic.errors, f"a sender failed: {traffic.errors[:3]}"),
        (not traffic.unacknowledged, f"never answered 1000: {traffic.unacknowledged[:5]}"),
        (not receiver.errors, f"deliveries the receiver could not verify: {receiver.errors[:3]}"),
        (not lost, f"{len(lost)} acknowledged requests never reached the receiver: {lost[:5]}"),
        (not twice_stored, f"requests with more than one event: {twice_stored[:5]}"),
        (not unasked, f"events of requests never acknowledged: {unasked[:5]}"),
        (rows == len(events), f"{rows} rows stored but {len(events)} events"),
        (not strangers, f"deliveries of events not in the outbox: {strangers[:5]}"),
        (not mismatched, f"deliveries whose sequence or data differ from the outbox: {mismatched[:5]}"),
        (not other_ids, f"requests delivered under two webhook-ids: {other_ids[:5]}"),
        (not unexplained, f"delivered again though its 2xx was answered in time: {unexplained[:5]}"),
        (violations == 0, f"{violations} MessageIDs whose events were first delivered out of sequence order"),
        (not not_delivered, f"events not delivered: {dict(not_delivered)}"),
        (SECRET.removeprefix("whsec_") not in service_log(service), "the webhook secret is in gunicorn's log"),
    ]
    problems.extend(message for passed, message in checks if not passed)
    return figures


def group_ids(log: list[Delivery]) -> dict[Key, set[str]]:
    ids: dict[Key, set[str]] = defaultdict(set)
    for delivery in log:
        ids[delivery.key].add(delivery.webhook_id)
    return ids


def order_violations(events: list[StoredEvent], taken: dict[str, list[Delivery]]) -> tuple[int, int]:
    """How many MessageIDs had their events first delivered out of sequence order, and how many
    MessageIDs with more than one event there were."""
    by_order_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        if event.order_key is not None and event.event_id in taken:
            by_order_key[event.order_key].append((taken[event.event_id][0].position, event.sequence))
    several = [firsts for firsts in by_order_key.values() if len(firsts) > 1]
    violations = sum(1 for firsts in several if [seq for _, seq in sorted(firsts)] != sorted(seq for _, seq in firsts))
    return violations, len(several)


def service_log(service: Service) -> str:
    return service.log_path.read_text(errors="replace") if service.log_path and service.log_path.exists() else ""


def report_and_assert(figures: Figures) -> None:
    print(f"\n{figures.line()}")
    assert not figures.problems, "\n".join(figures.problems)


# --- Scenarios --------------------------------------------------------------------------------


def test_receiver_down_under_load_then_back(tmp_path: Path) -> None:
    """The receiver is down for DOWN_SECONDS in the middle of steady traffic, then back: the
    events wait in the outbox, retried with backoff, and all arrive once it is back."""
    lead, tail = 3.0, 4.0
    traffic = Traffic(plan("down", REPORTS, 1), REPORTS / (lead + DOWN_SECONDS + tail))
    with handoff(tmp_path) as (receiver, service):
        with sending(traffic, service.port, lead + DOWN_SECONDS + tail + 60):
            time.sleep(lead)
            receiver.down()
            went_down = time.monotonic()
            taken_before_down = len(receiver.taken())
            time.sleep(max(0.0, went_down + DOWN_SECONDS - time.monotonic()))
            backlog = stored_events(service.database)
            waiting = sum(e.state == "pending" for e in backlog)
            receiver.start()
            back = time.monotonic()
        drain_s = drain(service, receiver, DRAIN_BUDGET)
        figures = prove(
            "receiver down",
            traffic,
            receiver,
            service,
            kills=[],
            down_s=back - went_down,
            delivered_before_down=taken_before_down,
            pending_when_back=waiting,
            backlog_delivered_s=backlog_delivered(backlog, receiver) - back,
            back_to_drained_s=time.monotonic() - back,
            drain_s=drain_s,
        )
    figures.problems.extend(
        message
        for passed, message in [
            (taken_before_down > 0, "nothing was delivered before the receiver went down"),
            (waiting > 0, "no event waited while the receiver was down: the test tested nothing"),
        ]
        if not passed
    )
    report_and_assert(figures)


def backlog_delivered(backlog: list[StoredEvent], receiver: Receiver) -> float:
    """When the receiver had first taken every event that waited for it (time.monotonic())."""
    first: dict[str, float] = {}
    for delivery in receiver.log():
        first.setdefault(delivery.webhook_id, delivery.at)
    return max((first.get(event.event_id, float("inf")) for event in backlog), default=0.0)


def test_receiver_failing_and_slow(tmp_path: Path) -> None:
    """30% of deliveries answered 500 at random, and some answered only after the forwarder's
    timeout: every event arrives; a repeat only of a delivery whose 2xx came too late."""
    traffic = Traffic(plan("flaky", REPORTS, 2), RATE)
    receiver = Receiver(SECRET)
    receiver.fail_fraction, receiver.slow_fraction = 0.3, 0.04
    with handoff(tmp_path, receiver) as (receiver, service):
        with sending(traffic, service.port, REPORTS / RATE + 60):
            pass
        drain_s = drain(service, receiver, DRAIN_BUDGET)
        forwarder = forwarders(service)
        figures = prove("receiver failing 30% and slow", traffic, receiver, service, kills=[], drain_s=drain_s)
        # A clean stop takes the forwarder down with the master.
        service.stop()
        gone = not any(alive(pid) for pid in forwarder)
    late = sum(d.answer == "late" for d in receiver.log())
    figures.values["late_answers"] = late
    figures.values["forwarder_stopped_with_master"] = gone
    figures.problems.extend(
        message
        for passed, message in [
            (receiver.refused > 0, "no delivery was refused: the test tested nothing"),
            (late > 0, "no delivery was answered late: the test tested nothing"),
            (forwarder and gone, f"the forwarder {forwarder} outlived the master's SIGTERM"),
        ]
        if not passed
    )
    report_and_assert(figures)


def kill_forwarder_mid_delivery(service: Service, receiver: Receiver, traffic: Traffic) -> tuple[int, int]:
    """SIGKILL to the forwarder while the receiver holds deliveries; its pid and how many."""
    third = traffic.requests // 3
    wait_until(lambda: traffic.slots >= third, "a third of the requests", 60, service.log_tail)
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        found = forwarders(service)
        with receiver.lock:
            if found and receiver.busy > 0:
                os.kill(found[0], signal.SIGKILL)
                return found[0], receiver.busy
        time.sleep(0.001)
    raise AssertionError(f"no delivery in flight to kill the forwarder under; log:\n{service.log_tail()}")


def test_forwarder_killed_mid_delivery(tmp_path: Path) -> None:
    """The forwarder SIGKILLed while deliveries are in flight: gunicorn's master starts another,
    new events flow at once, the killed one's claimed events after their lease; none lost,
    a repeat only across the kill, and each MessageID's events in order."""
    traffic = Traffic(plan("fwdkill", REPORTS, 3), RATE)
    receiver = Receiver(SECRET)
    receiver.delay = 0.02  # deliveries are in flight most of the time
    with handoff(tmp_path, receiver) as (receiver, service):
        with sending(traffic, service.port, REPORTS / RATE + 60):
            killed, in_flight = kill_forwarder_mid_delivery(service, receiver, traffic)
            kill = time.monotonic()
            wait_until(
                lambda: any(pid != killed for pid in forwarders(service)),
                "a new forwarder",
                30,
                lambda: service.log_tail(requests=False),
            )
            restart_s = time.monotonic() - kill
        drain_s = drain(service, receiver, LEASE_SECONDS + DRAIN_BUDGET)
        after_kill = [d for d in receiver.log() if d.at > kill]
        figures = prove(
            "forwarder killed",
            traffic,
            receiver,
            service,
            kills=[kill],
            in_flight_at_kill=in_flight,
            forwarder_restart_s=restart_s,
            delivered_within_lease=sum(d.at < kill + LEASE_SECONDS - 1 for d in after_kill),
            delivered_after_lease=sum(d.at >= kill + LEASE_SECONDS - 1 for d in after_kill),
            kill_to_drained_s=time.monotonic() - kill,
            drain_s=drain_s,
        )
    if not any(d.at < kill + LEASE_SECONDS - 1 for d in after_kill):
        figures.problems.append("nothing was delivered after the kill until the lease ended")
    report_and_assert(figures)


def kill_service_mid_traffic(service: Service, receiver: Receiver, traffic: Traffic) -> tuple[int, int]:
    """SIGKILL to the master, its workers and the forwarder while an MMSC request and a delivery
    are both in flight (the locks hold them there); how many of each."""
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        with traffic.lock, receiver.lock:
            if traffic.in_flight > 0 and receiver.busy > 0:
                service.kill_all()
                return traffic.in_flight, receiver.busy
        time.sleep(0.0005)
    raise AssertionError(f"no request and delivery in flight together; log:\n{service.log_tail()}")


def test_service_killed_and_restarted(tmp_path: Path) -> None:
    """The master, its workers and the forwarder SIGKILLed together under load, then started
    again on the same database while the MMSC retries: everything acknowledged, before or
    after, is delivered, in order for each MessageID."""
    traffic = Traffic(plan("svckill", REPORTS, 4), RATE)
    receiver = Receiver(SECRET)
    receiver.delay = 0.02
    with handoff(tmp_path, receiver) as (receiver, service):
        with sending(traffic, service.port, REPORTS / RATE + 90):
            third = traffic.requests // 3
            wait_until(lambda: traffic.slots >= third, "a third of the requests", 60, service.log_tail)
            old = forwarders(service)
            requests_in_flight, deliveries_in_flight = kill_service_mid_traffic(service, receiver, traffic)
            kill = time.monotonic()
            wait_until(lambda: not any(alive(pid) for pid in old), "the forwarder to die", 5, service.log_tail)
            survivors = [pid for pid in old if alive(pid)]
            service.start()
            restart_s = time.monotonic() - kill
            wait_until(lambda: bool(forwarders(service)), "the new forwarder", 10, service.log_tail)
        drain_s = drain(service, receiver, LEASE_SECONDS + DRAIN_BUDGET)
        figures = prove(
            "service killed",
            traffic,
            receiver,
            service,
            kills=[kill],
            requests_in_flight_at_kill=requests_in_flight,
            deliveries_in_flight_at_kill=deliveries_in_flight,
            restart_s=restart_s,
            kill_to_drained_s=time.monotonic() - kill,
            drain_s=drain_s,
            integrity=service.integrity(),
        )
    figures.problems.extend(
        message
        for passed, message in [
            (old and not survivors, f"forwarders {survivors} outlived the SIGKILL of the process group"),
            (traffic.retried > 0, "the kill interrupted no request"),
            (figures.values["integrity"] == "ok", "the database is damaged"),
        ]
        if not passed
    )
    report_and_assert(figures)


def forwarders_of(database: Path) -> list[int]:
    """Every process on the machine forwarding this database's events, whoever its parent."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            with suppress(OSError):
                forwarding = b"mm7soap.forwarder" in (entry / "cmdline").read_bytes()
                if forwarding and f"MM7SOAP_DATABASE={database}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def test_forwarder_does_not_outlive_a_killed_master(tmp_path: Path) -> None:
    """The master alone SIGKILLed (the OOM killer, a `kill -9` of its pid) while deliveries are
    in flight: its workers exit, and the forwarder with them; the restarted service runs one
    forwarder, not a second beside an orphan, and everything acknowledged is delivered."""
    traffic = Traffic(plan("master", 300, 6), RATE)
    receiver = Receiver(SECRET)
    receiver.delay = 0.02
    with handoff(tmp_path, receiver) as (receiver, service):
        with sending(traffic, service.port, 90):
            third = traffic.requests // 3
            wait_until(lambda: traffic.slots >= third, "a third of the requests", 60, service.log_tail)
            old = sorted({*forwarders(service), *service.workers()})
            wait_until(lambda: receiver.busy > 0, "a delivery in flight", KILL_WAIT, service.log_tail)
            assert service.process is not None
            os.kill(service.master, signal.SIGKILL)
            service.process.wait()
            kill = time.monotonic()
            wait_until(
                lambda: not any(alive(pid) for pid in old),
                "the forwarder and workers to exit",
                15,
                lambda: f"still running: {[pid for pid in old if alive(pid)]} of {old}\n{service.log_tail()}",
            )
            exited_s = time.monotonic() - kill
            service.start()
            wait_until(lambda: bool(forwarders(service)), "the new forwarder", 10, service.log_tail)
        running = forwarders_of(service.database)
        drain_s = drain(service, receiver, LEASE_SECONDS + DRAIN_BUDGET)
        figures = prove(
            "master killed alone",
            traffic,
            receiver,
            service,
            kills=[kill],
            forwarder_exited_s=exited_s,
            forwarders_after_restart=len(running),
            drain_s=drain_s,
        )
    if len(running) != 1:
        figures.problems.append(f"{len(running)} forwarders on one database after the restart: {running}")
    report_and_assert(figures)


def test_an_attempt_longer_than_the_lease_is_not_delivered_twice(tmp_path: Path) -> None:
    """The first delivery is answered 200 a byte at a time, for longer than the lease, every
    byte within the forwarder's timeout: the forwarder gets its 2xx, so the event must not be
    delivered again meanwhile."""
    traffic = Traffic(plan("lease", 30, 8), RATE)
    receiver = Receiver(SECRET)
    receiver.trickle = 1
    with handoff(tmp_path, receiver) as (receiver, service):
        with sending(traffic, service.port, 60):
            pass
        drain_s = drain(service, receiver, LEASE_SECONDS + DRAIN_BUDGET)
        first = receiver.log()[0]
        figures = prove(
            "attempt longer than the lease",
            traffic,
            receiver,
            service,
            kills=[],
            trickled_s=TRICKLE_BYTES * TRICKLE_PAUSE,
            lease_s=LEASE_SECONDS,
            attempts_of_the_trickled=next(
                e.attempts for e in stored_events(service.database) if e.event_id == first.webhook_id
            ),
            drain_s=drain_s,
        )
    report_and_assert(figures)


URL_PASSWORD = "pw-8c1e7d"  # basic auth to the application, in the URL


def test_webhook_url_credentials_stay_out_of_the_log(tmp_path: Path) -> None:
    """A webhook URL with credentials in it (basic auth to the application): deliveries carry
    them, and gunicorn's log never shows the password, neither at start nor per delivery."""
    receiver = Receiver(SECRET)
    url = receiver.url.replace("http://", f"http://mm7soap:{URL_PASSWORD}@")
    traffic = Traffic(plan("credentials", 40, 7), RATE)
    receiver.start()
    service = Service(tmp_path / "handoff.db", {**webhook_env(url)})
    try:
        service.start()
        with sending(traffic, service.port, 60):
            pass
        drain_s = drain(service, receiver, DRAIN_BUDGET)
        figures = prove("credentials in the URL", traffic, receiver, service, kills=[], drain_s=drain_s)
        logged = service_log(service)
    finally:
        if service.process is not None:
            service.kill_all()
        receiver.down()
    shown = [line for line in logged.splitlines() if URL_PASSWORD in line]
    figures.values["log_lines_with_the_password"] = len(shown)
    if shown:
        figures.problems.append(f"{len(shown)} lines of gunicorn's log show the URL's password, e.g. {shown[0]!r}")
    report_and_assert(figures)


# --- Configuration ----------------------------------------------------------------------------

BAD_SECRET = "whsec_Sup3r-S3cret!"  # not base64: refused, and never printed
COMMANDS = {
    "serve": [str(BIN / "mm7soap"), "serve"],
    "gunicorn": [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"],
}
BAD_SETTINGS = {
    "not http": ({"MM7SOAP_WEBHOOK_URL": "ftp://x", "MM7SOAP_WEBHOOK_SECRET": SECRET}, "webhook_url"),
    "no secret": ({"MM7SOAP_WEBHOOK_URL": "http://127.0.0.1:9/hook"}, "webhook_secret"),
    "secret not base64": (
        {"MM7SOAP_WEBHOOK_URL": "http://127.0.0.1:9/hook", "MM7SOAP_WEBHOOK_SECRET": BAD_SECRET},
        "webhook_secret",
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_webhook_settings_stop_the_start_with_one_line(tmp_path: Path, command: str, case: str) -> None:
    settings, named = BAD_SETTINGS[case]
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("MM7SOAP_")},
        "MM7SOAP_DATABASE": str(tmp_path / "bad.db"),
        "MM7SOAP_HOST": "127.0.0.1",
        "MM7SOAP_PORT": str(free_port()),
        "XDG_RUNTIME_DIR": str(tmp_path),
        **settings,
    }
    started = time.monotonic()
    done = subprocess.run(
        COMMANDS[command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    output = (done.stdout + done.stderr).strip()
    print(
        f"\nRELIABILITY handoff bad settings ({command}, {case}): exit={done.returncode}"
        f" seconds={time.monotonic() - started:.2f} said={output!r}"
    )
    assert done.returncode != 0
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output
    assert named in output.lower()
    for secret in (SECRET, BAD_SECRET):
        assert secret.removeprefix("whsec_") not in output
    assert not (tmp_path / "bad.db").exists(), "it got as far as opening the database"


def first_of_their_message_ids(events: list[StoredEvent]) -> list[StoredEvent]:
    """The events the forwarder may try now: a later event of a MessageID waits for the first."""
    seen: set[str] = set()
    first = []
    for event in events:
        if event.order_key is None or event.order_key not in seen:
            first.append(event)
        if event.order_key is not None:
            seen.add(event.order_key)
    return first


def test_unreachable_receiver_is_said_and_its_events_are_kept(tmp_path: Path) -> None:
    """A URL where nothing listens: the service starts and answers 1000, the forwarder says
    clearly that the receiver cannot be reached, and the events wait; a receiver started there
    later gets them all."""
    receiver = Receiver(SECRET)  # not started yet: its port is closed
    service = Service(tmp_path / "handoff.db", webhook_env(receiver.url))
    traffic = Traffic(plan("unreachable", 40, 5), RATE)
    try:
        service.start()
        with sending(traffic, service.port, 60):
            pass
        said: list[str] = []

        def complained() -> bool:
            said[:] = [line for line in service_log(service).splitlines() if "cannot be reached" in line]
            return bool(said)

        wait_until(complained, "the forwarder to say the receiver cannot be reached", 15, service.log_tail)
        wait_until(
            lambda: all(e.attempts > 0 for e in first_of_their_message_ids(stored_events(service.database))),
            "every event not waiting behind an earlier one of its MessageID to be tried",
            15,
            service.log_tail,
        )
        kept = stored_events(service.database)
        health = service.health()
        receiver.start()
        back = time.monotonic()
        drain_s = drain(service, receiver, DRAIN_BUDGET)
        figures = prove(
            "receiver unreachable",
            traffic,
            receiver,
            service,
            kills=[],
            health=health,
            kept_pending=sum(e.state == "pending" for e in kept),
            started_to_drained_s=time.monotonic() - back,
            drain_s=drain_s,
        )
    finally:
        if service.process is not None:
            service.kill_all()
        receiver.down()
    errors = {e.last_error for e in kept if e.attempts}
    figures.values["said"] = json.dumps(said[0][said[0].find("the webhook receiver") :] if said else "")
    figures.problems.extend(
        message
        for passed, message in [
            (health == 200, f"/health answered {health}"),
            (all(e.state == "pending" for e in kept), f"events not kept pending: {Counter(e.state for e in kept)}"),
            (all(e and "ConnectError" in e for e in errors), f"unexpected errors: {errors}"),
            (receiver.url in said[0] if said else False, f"the complaint does not name the URL: {said}"),
        ]
        if not passed
    )
    report_and_assert(figures)

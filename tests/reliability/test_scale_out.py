"""Scale-out (issue 20): two `mm7soap` instances on one PostgreSQL database, one SIGKILLed mid-run.

Both instances run under gunicorn with the production config, each with its own forwarder
POSTing to one webhook receiver (tests.reliability.test_handoff's, which checks every
signature).  MMSC-like senders spread the requests over both: delivery reports (some
Forwarded-then-Retrieved pairs of one MessageID, and read replies after them, each step sent
to the other instance than the one before), MO messages with a picture, and resends sent to
BOTH instances at the same moment (two threads released by a barrier), new requests and
earlier ones alike.  Once MM7SOAP_SCALE_OUT_KILL_AT of the requests are sent, instance A is
SIGKILLed whole (master, workers and forwarder) with requests and deliveries in flight; from
then on every request that has not had a 1000 from anyone is re-sent to B until it gets one.

Then the database and the receiver's log are held to the issue: every request acknowledged;
each stored exactly once, a resend reaching both instances at once too; each MO's picture
stored byte-exact; one outbox event per row, every one delivered, none under two
webhook-ids, each MessageID's events first delivered in sequence order; and the events A's
forwarder had leased when it died left pending until their lease ran out, then delivered
by B's.  Faults (3000) are allowed, as the MMSC re-sends; the figures line counts them.

Size: MM7SOAP_SCALE_OUT_REQUESTS (default 1500; CI runs 10,000).  Run with `pytest -s` to
see the figures line (`RELIABILITY scale-out: …`).
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from mm7soap.times import parse_stored, utc_timestamp
from tests.reliability.service import Client, Service
from tests.reliability.soak_mix import PNG
from tests.reliability.test_handoff import (
    EVENTS_SQL,
    LEASE_SECONDS,
    SECRET,
    WEBHOOK_TIMEOUT,
    Delivery,
    Key,
    Receiver,
    Request,
    StoredEvent,
    explanation,
    forwarders,
    group_ids,
    mobile_originated,
    order_violations,
    read_reply,
    report,
    wait_until,
    webhook_env,
)

REQUESTS = int(os.environ.get("MM7SOAP_SCALE_OUT_REQUESTS", "1500"))
KILL_AT = float(os.environ.get("MM7SOAP_SCALE_OUT_KILL_AT", "0.4"))
SENDERS = 8  # an MMSC's sending threads, each with a keep-alive connection to each instance
SEED = 20
# Every wait is bounded: a hung instance fails the test instead of hanging CI.  10,000
# requests took 145 s to send on two cores that other test suites kept busy (load 10).
SEND_BUDGET = 90.0 + REQUESTS * 0.03
DRAIN_BUDGET = LEASE_SECONDS + 60.0  # the killed forwarder's events wait for their lease
KILL_WAIT = 20.0
REQUEST_TIMEOUT = 10.0  # Sinch gives up on an answer after 10 s
FIRST_PAUSE = 0.02  # an unacknowledged request is tried again after this, doubling
LONGEST_PAUSE = 0.3


# --- What the MMSC sends ----------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """Requests one sender sends in order, each once the one before is acknowledged, each to
    the other instance than the one before; `both`: to both instances at once."""

    requests: tuple[Request, ...]
    both: bool = False

    @property
    def posts(self) -> int:
        return len(self.requests) * (2 if self.both else 1)


def plan(total: int, seed: int) -> list[Unit]:
    """The run's requests, seeded: about `total` POSTs (a resend to both counts two)."""
    rng = random.Random(seed)
    units: list[Unit] = []
    count = 0
    while count < total:
        n = len(units)
        tid, mid = f"scale-{n:05d}", f"mid-scale-{n:05d}"
        roll = rng.random()
        if roll < 0.3:  # Forwarded, then Retrieved, of one MessageID, on different instances
            steps: tuple[Request, ...] = (report(f"{tid}-f", mid, "Forwarded"), report(tid, mid, "Retrieved"))
            if rng.random() < 0.3:
                steps = (*steps, read_reply(f"{tid}-rr", mid))
            unit = Unit(steps)
        elif roll < 0.72:
            unit = Unit((report(tid, mid, "Retrieved"),))
        elif roll < 0.84:
            unit = Unit((mobile_originated(tid),))
        elif roll < 0.94 or not units:  # a new request, reaching both instances at the same moment
            unit = Unit((rng.choice([report(tid, mid, "Retrieved"), mobile_originated(tid)]),), both=True)
        else:  # an earlier request, sent again to both at once
            unit = Unit((rng.choice(rng.choice(units).requests),), both=True)
        units.append(unit)
        count += unit.posts
    return units


@dataclass
class Traffic:
    """What the senders did, shared between their threads and the test that kills."""

    units: list[Unit]
    ports: dict[str, int]  # instance name (A, B) → port
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_unit: int = 0
    posts: int = 0  # units' POSTs begun (the planned count, not the retries)
    tries: int = 0  # every HTTP request, retries included
    in_flight: Counter[str] = field(default_factory=Counter)  # by instance
    acknowledged: dict[Key, Request] = field(default_factory=dict)
    acknowledged_by: Counter[str] = field(default_factory=Counter)
    unacknowledged: list[Key] = field(default_factory=list)
    failed_after_kill: int = 0
    # Tries without a 1000, by instance and what came back (an MM7 StatusCode, HTTP status, or none).
    refused: Counter[str] = field(default_factory=Counter)
    resent_to_b: int = 0  # tried at A without a 1000, then acknowledged by B
    killed: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def take(self) -> tuple[int, Unit] | None:
        with self.lock:
            if self.next_unit >= len(self.units) or self.stop.is_set():
                return None
            self.next_unit += 1
            unit = self.units[self.next_unit - 1]
            self.posts += unit.posts
            return self.next_unit - 1, unit


def until_acknowledged(
    traffic: Traffic, clients: dict[str, Client], request: Request, first: str, deadline: float
) -> bool:
    """Posts `request` to instance `first` until it is answered 1000, as an MMSC retries;
    once A is killed, to B.  False past the deadline."""
    pause, target, failed_at_a = FIRST_PAUSE, first, False
    while time.monotonic() < deadline and not traffic.stop.is_set():
        if traffic.killed.is_set():
            target = "B"
        with traffic.lock:
            traffic.in_flight[target] += 1
            traffic.tries += 1
        try:
            answer = clients[target].post(request.body, content_type=request.content_type)
            acknowledged, got = answer.acknowledged, answer.status_code or f"HTTP {answer.http_status}"
        except (OSError, http.client.HTTPException) as exc:
            acknowledged, got = False, type(exc).__name__
        with traffic.lock:
            traffic.in_flight[target] -= 1
            if acknowledged:
                traffic.acknowledged[request.key] = request
                traffic.acknowledged_by[target] += 1
                traffic.resent_to_b += failed_at_a and target == "B"
                return True
            traffic.failed_after_kill += traffic.killed.is_set()
            traffic.refused[f"{target}:{got}"] += 1
            failed_at_a = failed_at_a or target == "A"
        time.sleep(pause)
        pause = min(2 * pause, LONGEST_PAUSE)
    with traffic.lock:
        traffic.unacknowledged.append(request.key)
    return False


def to_both(traffic: Traffic, clients: list[dict[str, Client]], request: Request, deadline: float) -> None:
    """The same request posted to A and B at the same moment, from two threads (each with
    connections of its own: once A is killed, both post to B)."""
    barrier = threading.Barrier(2, timeout=REQUEST_TIMEOUT)

    def post(target: str, mine: dict[str, Client]) -> None:
        try:
            with suppress(threading.BrokenBarrierError):  # the other thread failed to start: send anyway
                barrier.wait()
            until_acknowledged(traffic, mine, request, target, deadline)
        except BaseException as exc:  # reported by the test: an exception in a thread is lost
            traffic.errors.append(repr(exc))

    other = threading.Thread(target=post, args=("B", clients[1]), name="mmsc-twin")
    other.start()
    post("A", clients[0])
    other.join()


def sender(traffic: Traffic, deadline: float) -> None:
    clients = [{name: Client(port, timeout=REQUEST_TIMEOUT) for name, port in traffic.ports.items()} for _ in "12"]
    try:
        while (taken := traffic.take()) is not None:
            index, unit = taken
            if unit.both:
                to_both(traffic, clients, unit.requests[0], deadline)
                continue
            for step, request in enumerate(unit.requests):  # each step to the other instance
                if not until_acknowledged(traffic, clients[0], request, "AB"[(index + step) % 2], deadline):
                    break
    except BaseException as exc:  # reported by the test: an exception in a thread is lost
        traffic.errors.append(repr(exc))
    finally:
        for client in (client for pair in clients for client in pair.values()):
            client.close()


@contextmanager
def sending(traffic: Traffic, budget: float) -> Iterator[None]:
    deadline = time.monotonic() + budget
    threads = [threading.Thread(target=sender, args=(traffic, deadline), name=f"mmsc-{n}") for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    try:
        yield
    except BaseException:
        traffic.stop.set()
        raise
    finally:
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "senders still running past the budget"


# --- The two instances ------------------------------------------------------------------------


@contextmanager
def instances(tmp_path: Path, database: str, receiver: Receiver) -> Iterator[dict[str, Service]]:
    """Instances A and B on `database`, each forwarding to `receiver`; killed after, whatever failed."""
    env = {**webhook_env(receiver.url), "MM7SOAP_DATABASE": database}
    services: dict[str, Service] = {}
    receiver.start()
    try:
        for name in "AB":
            folder = tmp_path / name
            folder.mkdir()
            # Service's database names only the folder of its log here: the URL in env wins.
            services[name] = Service(folder / "unused.db", dict(env))
            services[name].start()
        yield services
    finally:
        for service in services.values():
            if service.process is not None and service.process.poll() is None:
                service.kill_all()
        receiver.down()


@dataclass
class Kill:
    at: float = 0.0  # time.monotonic()
    wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    requests_in_flight: int = 0
    deliveries_in_flight: int = 0  # from A's forwarder
    leased: dict[int, str] = field(default_factory=dict)  # sequence → lease_until, just after
    orphans: dict[int, str] = field(default_factory=dict)  # of those, the ones A's forwarder held
    ports_of_a: set[int] = field(default_factory=set)  # its forwarder's, to tell its deliveries apart


def kill_a(services: dict[str, Service], traffic: Traffic, receiver: Receiver, database: str) -> Kill:
    """SIGKILL to A's whole process group once KILL_AT of the requests are sent, while it has
    requests in flight and the receiver holds a delivery from A's forwarder; what was leased then."""
    total = sum(unit.posts for unit in traffic.units)
    wait_until(lambda: traffic.posts >= KILL_AT * total, f"{KILL_AT:.0%} of the requests to be sent", SEND_BUDGET)
    deadline = time.monotonic() + KILL_WAIT
    kill = Kill()
    while not kill.at:
        if time.monotonic() > deadline:
            raise AssertionError(f"no request to A with a delivery of A's in flight:\n{services['A'].log_tail()}")
        ports = {port for pid in forwarders(services["A"]) for port in local_ports(pid)}
        with traffic.lock, receiver.lock:
            of_a = sum(h.current is not None and h.client_address[1] in ports for h in receiver.handlers)
            if traffic.in_flight["A"] > 0 and of_a > 0:
                services["A"].kill_all()
                traffic.killed.set()
                kill = Kill(time.monotonic(), datetime.now(timezone.utc), traffic.in_flight["A"], of_a)
                kill.ports_of_a = ports
        time.sleep(0.005)
    with closing(psycopg.connect(database)) as conn:
        kill.leased = dict(
            conn.execute(
                "SELECT sequence, lease_until FROM outbox WHERE state = 'pending' AND lease_until > %s",
                [utc_timestamp(kill.wall)],
            ).fetchall()
        )
    return kill


def local_ports(pid: int) -> set[int]:
    """The local ports of process `pid`'s TCP sockets, from /proc: the receiver sees a
    delivery's peer port, and so knows which forwarder it came from."""
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):  # closed while listed
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def find_orphans(kill: Kill, database: str) -> None:
    """The leased events still pending, with the same lease, once B's forwarder has settled or
    renewed all of its own (each attempt ends within its timeout): those A's forwarder held."""
    time.sleep(max(0.0, kill.at + 2 * WEBHOOK_TIMEOUT + 2 - time.monotonic()))
    with closing(psycopg.connect(database)) as conn:
        now = dict(conn.execute("SELECT sequence, lease_until FROM outbox WHERE state = 'pending'").fetchall())
    kill.orphans = {seq: lease for seq, lease in kill.leased.items() if now.get(seq) == lease}


# --- The proof --------------------------------------------------------------------------------


@dataclass
class Stored:
    rows: Counter[Key]
    events: list[StoredEvent]
    pictures: dict[tuple[int, str], list[bytes]]  # each MO's (id, TransactionID) → its parts' bytes


def stored(database: str) -> Stored:
    with closing(psycopg.connect(database)) as conn:
        rows: Counter[Key] = Counter()
        for table, type in (("delivery_reports", "delivery_report"), ("read_replies", "read_reply")):
            for tid, status in conn.execute(f"SELECT transaction_id, mm_status FROM {table}"):
                rows[(type, tid, status)] += 1
        for (tid,) in conn.execute("SELECT transaction_id FROM messages"):
            rows[("message", tid, None)] += 1
        pictures: dict[tuple[int, str], list[bytes]] = defaultdict(list)
        for message, tid, data in conn.execute(
            "SELECT m.id, m.transaction_id, p.data FROM messages AS m"
            " LEFT JOIN message_parts AS p ON p.message = m.id ORDER BY m.id, p.position"
        ):
            pictures[(message, tid)] += [bytes(data)] if data is not None else []
        events = [StoredEvent(*row) for row in conn.execute(EVENTS_SQL)]
    return Stored(rows, events, pictures)


def drain(database: str, receiver: Receiver, budget: float) -> float:
    """Waits until every event is delivered and the receiver took each; the seconds it took."""
    started = time.monotonic()
    with closing(psycopg.connect(database, autocommit=True)) as conn:
        while True:
            found = conn.execute("SELECT event_id, state FROM outbox").fetchall()
            if all(state == "delivered" for _, state in found) and {e for e, _ in found} <= receiver.taken():
                return time.monotonic() - started
            if time.monotonic() - started > budget:
                states = Counter(state for _, state in found)
                raise AssertionError(f"not drained in {budget:.0f} s: {dict(states)}, taken {len(receiver.taken())}")
            time.sleep(0.25)


def problems(traffic: Traffic, kept: Stored, receiver: Receiver, kill: Kill) -> Iterator[str]:
    """Every way the run fell short of the issue: what the senders got, what was stored, and
    what the receiver took."""
    sent = {request.key for unit in traffic.units for request in unit.requests}
    twice = sorted(key for key, count in kept.rows.items() if count > 1)
    altered = [tid for (_, tid), parts in kept.pictures.items() if parts != [PNG]]
    per_key = Counter(event.key for event in kept.events)
    checks = [
        (not traffic.errors, f"a sender failed: {traffic.errors[:3]}"),
        (not traffic.unacknowledged, f"never answered 1000: {traffic.unacknowledged[:5]}"),
        (set(traffic.acknowledged) == sent, "not every request was acknowledged"),
        (not sent - set(kept.rows), f"requests not stored: {sorted(sent - set(kept.rows))[:5]}"),
        (not twice, f"{len(twice)} requests stored more than once: {twice[:5]}"),
        (not set(kept.rows) - sent, f"rows of requests never sent: {sorted(set(kept.rows) - sent)[:5]}"),
        (not altered, f"MOs whose parts are not the picture sent: {altered[:5]}"),
        (all(per_key[key] == count for key, count in kept.rows.items()), "a row without exactly one event"),
        (len(kept.events) == kept.rows.total(), f"{len(kept.events)} events for {kept.rows.total()} rows"),
        (kill.requests_in_flight > 0 and traffic.failed_after_kill > 0, "the kill interrupted no request"),
        (traffic.resent_to_b > 0, "no request was re-sent to B after failing at A"),
    ]
    yield from (message for passed, message in checks if not passed)
    yield from delivery_problems(kept.events, receiver, kill)


def delivery_problems(events: list[StoredEvent], receiver: Receiver, kill: Kill) -> Iterator[str]:
    """The outbox joined with the receiver's log by webhook-id."""
    log = receiver.log()
    taken: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in log:
        taken[delivery.webhook_id].append(delivery)
    by_id = {event.event_id: event for event in events}
    undelivered = [e.event_id for e in events if e.state != "delivered" or e.event_id not in taken]
    strangers = [d.webhook_id for d in log if d.webhook_id not in by_id]
    mismatched = [
        d.webhook_id
        for d in log
        if d.webhook_id in by_id and (d.sequence, d.key) != (by_id[d.webhook_id].sequence, by_id[d.webhook_id].key)
    ]
    violations, _ = order_violations(events, taken)

    # A repeat (same webhook-id) only of a delivery cut by the kill: each event is claimed by
    # one forwarder at a time, and one that was answered is never delivered again.
    # A delivery A's forwarder sent just before the SIGKILL may be read by the receiver just
    # after it: by the forwarder's port, it was sent before the kill, whatever its time says.
    def sent_at(delivery: Delivery) -> float:
        return min(delivery.at, kill.at) if delivery.peer in kill.ports_of_a else delivery.at

    unexplained = [
        webhook_id
        for webhook_id, deliveries in taken.items()
        for earlier, later in pairwise(deliveries)
        if explanation(replace(earlier, at=sent_at(earlier)), later, [kill.at]) is None
    ]
    # A's leased events, after the kill, only once their lease ran out (then by B's forwarder).
    by_sequence = {event.sequence: event.event_id for event in events}
    early = [
        seq
        for seq, lease in kill.orphans.items()
        if min((d.at for d in taken[by_sequence[seq]] if sent_at(d) > kill.at), default=float("inf"))
        < kill.at + seconds_after(kill.wall, lease) - 1
    ]

    def story(webhook_ids: list[str]) -> str:
        """Each delivery of these events: when (s after the kill), by whom, how answered."""
        return "".join(
            f"\n  {w}: "
            + ", ".join(
                f"{d.at - kill.at:+.2f}s by {'A' if d.peer in kill.ports_of_a else 'B'} {d.answer}" for d in taken[w]
            )
            for w in webhook_ids[:5]
        )

    early_ids = [by_sequence[seq] for seq in early]
    checks = [
        (not undelivered, f"{len(undelivered)} events not delivered: {undelivered[:5]}"),
        (not strangers, f"deliveries of events not in the outbox: {strangers[:5]}"),
        (not mismatched, f"deliveries whose sequence or data differ from the outbox: {mismatched[:5]}"),
        (all(len(ids) == 1 for ids in group_ids(log).values()), "a request delivered under two webhook-ids"),
        (violations == 0, f"{violations} MessageIDs whose events were first delivered out of order"),
        (not unexplained, f"delivered again though answered in time (two claims): {story(unexplained)}"),
        (not receiver.errors, f"deliveries the receiver could not verify: {receiver.errors[:3]}"),
        (bool(kill.orphans), "A's forwarder held no event when it was killed: the takeover was not tested"),
        (
            not early,
            f"events taken from A's forwarder before their lease ran out: {early[:5]}"
            f" (leases {[kill.orphans[s] for s in early[:5]]}, killed at {utc_timestamp(kill.wall)}){story(early_ids)}",
        ),
    ]
    return (message for passed, message in checks if not passed)


def secrets_logged(logs: str, database: str) -> Iterator[str]:
    password = urlsplit(database).password
    if password and password in logs:
        yield "the database password is in gunicorn's log"
    if SECRET.removeprefix("whsec_") in logs:
        yield "the webhook secret is in gunicorn's log"


def seconds_after(moment: datetime, stamp: str) -> float:
    """Seconds from `moment` to the stored UTC time `stamp`."""
    return (parse_stored(stamp) - moment).total_seconds()


def test_two_instances_one_killed_lose_nothing_and_store_nothing_twice(tmp_path: Path, postgresql_url: str) -> None:
    started = time.monotonic()
    receiver = Receiver(SECRET)
    receiver.delay = 0.02  # deliveries are in flight most of the time: the kill catches some
    with instances(tmp_path, postgresql_url, receiver) as services:
        traffic = Traffic(plan(REQUESTS, SEED), {name: service.port for name, service in services.items()})
        with sending(traffic, SEND_BUDGET):
            kill = kill_a(services, traffic, receiver, postgresql_url)
            find_orphans(kill, postgresql_url)
        sent_s = time.monotonic() - started
        drain_s = drain(postgresql_url, receiver, DRAIN_BUDGET)
        health_b = services["B"].health()
        kept = stored(postgresql_url)
        logs = "".join(s.log_path.read_text(errors="replace") for s in services.values() if s.log_path)
    found = [*problems(traffic, kept, receiver, kill), *secrets_logged(logs, postgresql_url)]
    if health_b != 200:
        found.append(f"B's /health answered {health_b}")
    deliveries = receiver.log()
    print(
        f"\nRELIABILITY scale-out: requests={sum(u.posts for u in traffic.units)} distinct={len(traffic.acknowledged)}"
        f" to_both={sum(u.both for u in traffic.units)} tries={traffic.tries}"
        f" acknowledged_by_a={traffic.acknowledged_by['A']} acknowledged_by_b={traffic.acknowledged_by['B']}"
        f" requests_in_flight_at_kill={kill.requests_in_flight} failed_after_kill={traffic.failed_after_kill}"
        f" resent_to_b={traffic.resent_to_b} rows={kept.rows.total()}"
        f" stored_twice={sum(c > 1 for c in kept.rows.values())}"
        f" events={len(kept.events)} deliveries={len(deliveries)} repeated={len(deliveries) - len(receiver.taken())}"
        f" deliveries_in_flight_at_kill={kill.deliveries_in_flight} leased_at_kill={len(kill.leased)}"
        f" orphans_of_a={len(kill.orphans)} sent_s={sent_s:.1f} drain_s={drain_s:.1f}"
        f" duration_s={time.monotonic() - started:.1f} not_acknowledged={dict(traffic.refused)}"
    )
    assert not found, "\n".join(found)

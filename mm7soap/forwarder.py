"""The forwarder: delivers the outbox's events to the operator's webhook (issue 18).

One loop claims due events (`mm7soap.outbox.claim`, leased so that another forwarder, or
this one after a crash, does not deliver them at the same time), hands them to a pool of
threads that POST them over keep-alive connections (httpx), and writes their outcomes, and
claims the next ones, in one transaction.  Nothing on the request path waits for any of
this: the MMSC was answered when the event was committed.

Any 2xx is delivered.  Anything else, a timeout or a refused connection is retried with
exponential backoff and jitter, until the event is older than `webhook_max_age`; then it is
`failed`, kept, and shown by `mm7soap outbox`.  A delivery whose 2xx is lost (the receiver
answered, then the forwarder died) is delivered again with the same `webhook-id`: the
guarantee is at least once, and receivers dedupe on that id.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import httpx

from mm7soap import metrics, outbox, webhooks
from mm7soap.metrics import DeliveryMetrics
from mm7soap.outbox import Backoff, Event, Outcome
from mm7soap.settings import Settings, check_webhook, webhook_key
from mm7soap.store import Store
from mm7soap.supervisor import die_with_the_master

log = logging.getLogger(__name__)

# With many attempts in flight, the loop waits this long after the first ends, so that one
# transaction settles several (each costs ~10 fcntl locks, a WAL write, and GIL hand-offs).
GATHER_FROM = 8
GATHER_SECONDS = 0.002
BESIDE_GUNICORN_NICENESS = 10
USER_AGENT = {"user-agent": "mm7soap-forwarder"}

# How long the loop waits for a delivery to finish, or between looks for new events when
# there are none: a look is `PRAGMA data_version` (no lock), so a new event waits ~10 ms, not
# a claim's write transaction every 10 ms.
POLL_SECONDS = 0.05
WAKE_SECONDS = 0.01
# Events also become due with time (a retry's backoff, a dead forwarder's lease): claimed at
# least this often even when nothing was committed.
IDLE_SECONDS = 0.2
# An attempt still unanswered after this many timeouts is given up and retried (httpx's timeout
# bounds each read, not the whole answer); its lease is renewed meanwhile.
ATTEMPT_DEADLINE_FACTOR = 12


class Attempts:
    """The deliveries in flight: threads that each take an event from one queue, deliver it on
    their own connection, and put its outcome on another.  Plain queues rather than futures:
    `concurrent.futures.wait` locks every future in flight on each call, and with the GIL
    passed back and forth that cost more CPU than the deliveries (strace: ~100 futex calls
    an event; a backlog drained at ~1,100 events/s on two cores)."""

    def __init__(self, threads: int, deliver: Callable[[Event], Outcome]) -> None:
        self.todo: queue.SimpleQueue[tuple[int, Event] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        # Each attempt under a token of its own: an event given up as overdue and claimed
        # again is a new attempt, and the first one's late outcome is dropped.
        self.in_flight: dict[int, tuple[Event, float]] = {}  # and when each began
        self.tokens = itertools.count()
        self.threads = [
            threading.Thread(target=self.work, args=(deliver,), name=f"deliver-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def work(self, deliver: Callable[[Event], Outcome]) -> None:
        while (item := self.todo.get()) is not None:
            token, event = item
            self.done.put((token, deliver(event)))

    def start(self, event: Event) -> None:
        token = next(self.tokens)
        self.in_flight[token] = (event, time.monotonic())
        self.todo.put((token, event))

    def sequences(self) -> tuple[int, ...]:
        return tuple(event.sequence for event, _ in self.in_flight.values())

    def finished(self, timeout: float) -> list[tuple[Event, Outcome]]:
        """The attempts that ended: waits up to `timeout` for the first, then takes what is there."""
        ended: list[tuple[Event, Outcome]] = []
        try:
            token, outcome = self.done.get(timeout=timeout)
            if len(self.in_flight) >= GATHER_FROM and self.done.qsize() < len(self.in_flight) // 4:
                time.sleep(GATHER_SECONDS)  # more end meanwhile: one transaction settles them all
            while True:
                began = self.in_flight.pop(token, None)
                if began is not None:  # None: given up as overdue, and already settled
                    ended.append((began[0], outcome))
                token, outcome = self.done.get_nowait()
        except queue.Empty:
            return ended

    def overdue(self, deadline: float) -> list[tuple[Event, Outcome]]:
        """Attempts past `deadline` (ATTEMPT_DEADLINE_FACTOR timeouts, or two leases: an answer
        trickling in, each read within the timeout) count as failed and are retried; their
        threads are left to end."""
        now = time.monotonic()
        late = [token for token, (_, began) in self.in_flight.items() if now - began > deadline]
        error = f"no whole answer within {deadline:g} s"
        return [(event, Outcome(event.sequence, False, None, error)) for event, _ in map(self.in_flight.pop, late)]

    def close(self) -> None:
        """Let the threads end; one still stuck in an overdue attempt is a daemon, left behind."""
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join(timeout=1.0)


class Forwarder:
    """Delivers a database's outbox to `settings.webhook_url` until stopped."""

    def __init__(
        self, settings: Settings, store: Store | None = None, deliveries: DeliveryMetrics | None = None
    ) -> None:
        if not settings.webhook_url:
            raise ValueError("no webhook_url: set MM7SOAP_WEBHOOK_URL to forward events")
        # Settings made in code skip `Settings.checked`: an ftp:// URL would otherwise fail
        # every attempt quietly until max age, rather than at start.
        check_webhook(settings)
        self.settings = settings
        self.key = webhook_key(settings.webhook_secret)
        # The forwarder's own writes (leases, outcomes) need not wait for the disk: one lost to
        # a power cut means an event delivered again with the same webhook-id, which the
        # guarantee (at least once) allows.  The reports' own commits keep `synchronous`.
        self.store = store or Store(replace(settings, synchronous=forwarder_synchronous(settings.synchronous)))
        self.url = httpx.URL(settings.webhook_url)
        self.timeout = httpx.Timeout(settings.webhook_timeout).as_dict()
        self.transports = threading.local()
        self.opened: list[httpx.HTTPTransport] = []
        self.opened_lock = threading.Lock()
        self.backoff = Backoff(settings.webhook_retry_first, settings.webhook_retry_cap, settings.webhook_max_age)
        # Past the lease another forwarder may take an event over: well past any one attempt.
        self.lease_seconds = 2 * settings.webhook_timeout + 30
        self.stopping = threading.Event()
        self.delivered = 0
        self.deliveries = deliveries  # counted for /metrics (mm7soap.metrics), when anything serves them
        self.looked: tuple[int, float, bool] = (-1, 0.0, True)  # see worth_claiming

    def stop(self) -> None:
        self.stopping.set()

    def check_receiver(self) -> str | None:
        """Why the receiver cannot be reached now, or None: said at start, so that a wrong
        URL is seen at once; events wait in the outbox meanwhile and nothing is lost."""
        try:
            with httpx.Client(timeout=min(self.settings.webhook_timeout, 3), headers=USER_AGENT) as client:
                client.request("HEAD", self.url)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def deliver(self, event: Event) -> Outcome:
        """One attempt to deliver `event` (in a pool thread, on that thread's connection)."""
        try:
            data = outbox.payload(self.store.db, event, bool(self.settings.webhook_include_raw))
            body = outbox.body(data)
            status = self.post(body, webhooks.headers(self.key, event.event_id, int(time.time()), body))
        except httpx.HTTPError as exc:
            return Outcome(event.sequence, False, None, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # the event could not even be read: kept, retried, visible
            log.exception("event %s could not be prepared", event.event_id)
            return Outcome(event.sequence, False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Outcome(event.sequence, True, status)
        return Outcome(event.sequence, False, status, f"HTTP {status}")

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        """POST on this thread's own keep-alive connection; the answer's status (its body is
        read, so the connection can be used again, and dropped).

        httpx's transport, not its Client: the Client's cookies, redirects, auth and URL merging
        cost more CPU than the delivery itself (a backlog drained at ~1,000 events/s on two
        cores, against ~2,000 without), and none of them applies to a webhook.  A transport of
        its own per thread also keeps a request from waiting in a shared pool for a connection
        being closed (httpcore #1110: a 2xx lost, the event delivered twice)."""
        request = httpx.Request(
            "POST", self.url, content=body, headers={**USER_AGENT, **headers}, extensions={"timeout": self.timeout}
        )
        response = self.transport().handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response.status_code

    def transport(self) -> httpx.HTTPTransport:
        found: httpx.HTTPTransport | None = getattr(self.transports, "transport", None)
        if found is None:
            found = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
            self.transports.transport = found
            with self.opened_lock:
                self.opened.append(found)
        return found

    def run(self, *, until_drained: bool = False) -> None:
        """Deliver until `stop()` (or, with `until_drained`, until no event is pending)."""
        capacity = 2 * self.settings.webhook_concurrency  # claimed ahead, so no thread idles
        deadline = max(ATTEMPT_DEADLINE_FACTOR * self.settings.webhook_timeout, 2 * self.lease_seconds)
        attempts = Attempts(self.settings.webhook_concurrency, self.deliver)
        finished: list[tuple[Event, Outcome]] = []
        renewed = time.monotonic()
        self.looked = (-1, 0.0, True)  # data_version at the last claim, when, and whether it filled up
        try:
            while not self.stopping.is_set() or attempts.in_flight or finished:
                room = 0 if self.stopping.is_set() else capacity - len(attempts.in_flight)
                renew: tuple[int, ...] = ()
                if attempts.in_flight and time.monotonic() - renewed > self.lease_seconds / 3:
                    renew, renewed = attempts.sequences(), time.monotonic()
                claimed = self.exchange(finished, room, renew) if finished or renew or self.worth_claiming(room) else []
                for event in claimed:
                    attempts.start(event)
                if attempts.in_flight:
                    finished = attempts.finished(POLL_SECONDS) + attempts.overdue(deadline)
                else:
                    finished = []
                    if until_drained and not outbox.pending_count(self.store.db):
                        break
                    if not self.stopping.is_set():
                        self.stopping.wait(WAKE_SECONDS)
        finally:
            attempts.close()

    def worth_claiming(self, room: int) -> bool:
        """Whether a claim may find anything: the last one filled up, another connection has
        committed since, or IDLE_SECONDS have passed (retries and leases fall due with time)."""
        if room <= 0:
            return False
        version, when, more = self.looked
        return more or outbox.data_version(self.store.db) != version or time.monotonic() - when >= IDLE_SECONDS

    def exchange(self, finished: list[tuple[Event, Outcome]], room: int, renew: tuple[int, ...] = ()) -> list[Event]:
        """Write what finished and claim up to `room` more, renewing the leases of `renew`, in
        one transaction; a database failure is logged and tried again (nothing is lost:
        unsettled events are delivered again after their lease)."""
        try:
            version = outbox.data_version(self.store.db)  # before: a commit meanwhile is looked at again
            now = datetime.now(timezone.utc)  # the outcomes' time, as written and as counted
            claimed = outbox.exchange(
                self.store.db, finished, self.backoff, random.random, max(room, 0), self.lease_seconds, renew, now
            )
        except Exception:
            log.exception("the outbox could not be read or written; trying again")
            self.store.connections.discard()
            self.stopping.wait(1.0)
            return []
        self.note(finished, now)
        self.looked = (version, time.monotonic(), room > 0 and len(claimed) == room)
        return claimed

    def note(self, finished: list[tuple[Event, Outcome]], now: datetime) -> None:
        for event, outcome in finished:
            if outcome.delivered:
                self.delivered += 1
            elif event.attempts == 0:  # its first failure; later ones are in `mm7soap outbox`
                log.warning("event %s (%s) not delivered: %s", event.event_id, event.type, outcome.error)
            if self.deliveries is not None:
                self.deliveries.attempted(delivery_outcome(outcome, event, self.backoff, now))

    def close(self) -> None:
        with self.opened_lock:
            opened, self.opened = self.opened, []
        for transport in opened:
            transport.close()
        self.store.close()


def delivery_outcome(outcome: Outcome, event: Event, backoff: Backoff, now: datetime) -> str:
    """How an attempt is counted: as `outbox.write_outcomes` has just written it."""
    if outcome.delivered:
        return metrics.DELIVERED
    return metrics.GIVEN_UP if backoff.gives_up(event.created_at, now) else metrics.FAILED_ATTEMPT


def run_forever(settings: Settings) -> None:
    """`mm7soap forward`: forward until SIGTERM or SIGINT, then finish what is in flight."""
    forwarder = Forwarder(settings, deliveries=metrics.for_forwarder(settings))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: forwarder.stop())
    problem = forwarder.check_receiver()
    if problem is not None:
        log.error(
            "the webhook receiver %s cannot be reached now (%s); events are kept and retried",
            safe_url(settings.webhook_url),
            problem,
        )
    log.info("forwarding events to %s", safe_url(settings.webhook_url))
    try:
        forwarder.run()
    finally:
        forwarder.close()


def forwarder_synchronous(synchronous: str) -> str:
    """NORMAL for the forwarder's connection, unless the operator chose OFF for all."""
    return "OFF" if synchronous.upper() == "OFF" else "NORMAL"


def safe_url(url: str) -> str:
    """A URL without any password in it, for logs."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(password="***")) if parsed.password else url


def main(argv: Any = None) -> None:
    """`python -m mm7soap.forwarder`: what `mm7soap serve` runs beside gunicorn."""
    die_with_the_master()
    # On the workers' cores the MMSC's answers come first: at saturation a forwarder of equal
    # priority took a fifth of the intake (0.89 of the reference's req/s against 1.15 without
    # it); niced, it takes what is left and events wait, durably, in the outbox until the
    # burst ends (benchmarks/README.md, "Hand-off").  `mm7soap forward` on a host of its own
    # keeps its priority.
    os.nice(BESIDE_GUNICORN_NICENESS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [forwarder] %(levelname)s %(message)s")
    # httpx logs every request's URL at INFO: one line per event, with any password in it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_forever(Settings.from_env())


if __name__ == "__main__":
    main()

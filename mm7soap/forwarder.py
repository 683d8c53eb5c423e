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

import logging
import random
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from mm7soap import outbox, webhooks
from mm7soap.outbox import Backoff, Event, Outcome
from mm7soap.settings import Settings, check_webhook, webhook_key
from mm7soap.store import Store

log = logging.getLogger(__name__)

# How long the loop waits for a delivery to finish, or for new events when there are none.
POLL_SECONDS = 0.05
IDLE_SECONDS = 0.2
# An attempt still unanswered after this many timeouts is given up and retried (httpx's timeout
# bounds each read, not the whole answer); its lease is renewed meanwhile.
ATTEMPT_DEADLINE_FACTOR = 12


class Forwarder:
    """Delivers a database's outbox to `settings.webhook_url` until stopped."""

    def __init__(self, settings: Settings, store: Store | None = None, client: httpx.Client | None = None) -> None:
        if not settings.webhook_url:
            raise ValueError("no webhook_url: set MM7SOAP_WEBHOOK_URL to forward events")
        # Settings made in code skip `Settings.checked`: an ftp:// URL would otherwise fail
        # every attempt quietly until max age, rather than at start.
        check_webhook(settings)
        self.settings = settings
        self.key = webhook_key(settings.webhook_secret)
        self.store = store or Store(settings)
        concurrency = settings.webhook_concurrency
        self.client = client or httpx.Client(
            timeout=settings.webhook_timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": "mm7soap-forwarder"},
        )
        self.backoff = Backoff(settings.webhook_retry_first, settings.webhook_retry_cap, settings.webhook_max_age)
        # Past the lease another forwarder may take an event over: well past any one attempt.
        self.lease_seconds = 2 * settings.webhook_timeout + 30
        self.stopping = threading.Event()
        self.delivered = 0

    def stop(self) -> None:
        self.stopping.set()

    def check_receiver(self) -> str | None:
        """Why the receiver cannot be reached now, or None: said at start, so that a wrong
        URL is seen at once; events wait in the outbox meanwhile and nothing is lost."""
        try:
            self.client.request("HEAD", self.settings.webhook_url, timeout=min(self.settings.webhook_timeout, 3))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def deliver(self, event: Event) -> Outcome:
        """One attempt to deliver `event` (in a pool thread, on that thread's connection)."""
        try:
            data = outbox.payload(self.store.db, event, bool(self.settings.webhook_include_raw))
            body = outbox.body(data)
            headers = webhooks.headers(self.key, event.event_id, int(time.time()), body)
            answer = self.client.post(self.settings.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(event.sequence, False, None, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # the event could not even be read: kept, retried, visible
            log.exception("event %s could not be prepared", event.event_id)
            return Outcome(event.sequence, False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= answer.status_code < 300:
            return Outcome(event.sequence, True, answer.status_code)
        return Outcome(event.sequence, False, answer.status_code, f"HTTP {answer.status_code}")

    def run(self, *, until_drained: bool = False) -> None:
        """Deliver until `stop()` (or, with `until_drained`, until no event is pending)."""
        capacity = 2 * self.settings.webhook_concurrency  # claimed ahead, so no thread idles
        in_flight: dict[Future[Outcome], tuple[Event, float]] = {}  # and when each began
        finished: list[tuple[Event, Outcome]] = []
        renewed = time.monotonic()
        # As many threads as connections: a request queued in httpx's pool for a connection can be
        # handed one the pool is closing (httpcore #1110: "Bad file descriptor" after the receiver
        # got it, so a 2xx lost and the event delivered twice, about 1 in 30,000).
        with ThreadPoolExecutor(self.settings.webhook_concurrency, thread_name_prefix="deliver") as pool:
            while not self.stopping.is_set() or in_flight or finished:
                room = 0 if self.stopping.is_set() else capacity - len(in_flight)
                renew: tuple[int, ...] = ()
                if in_flight and time.monotonic() - renewed > self.lease_seconds / 3:
                    renew, renewed = tuple(event.sequence for event, _ in in_flight.values()), time.monotonic()
                claimed = self.exchange(finished, room, renew)
                finished = []
                for event in claimed:
                    in_flight[pool.submit(self.deliver, event)] = (event, time.monotonic())
                if in_flight:
                    done, _ = wait(in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                    finished = [(in_flight.pop(future)[0], future.result()) for future in done]
                    finished += self.overdue(in_flight)
                elif until_drained and not self.pending():
                    break
                elif not self.stopping.is_set():
                    self.stopping.wait(IDLE_SECONDS)

    def overdue(self, in_flight: dict[Future[Outcome], tuple[Event, float]]) -> list[tuple[Event, Outcome]]:
        """Attempts past ATTEMPT_DEADLINE_FACTOR timeouts, and past two leases (an answer
        trickling in, each read within the timeout), count as failed and are retried; their
        threads are left to end."""
        deadline = max(ATTEMPT_DEADLINE_FACTOR * self.settings.webhook_timeout, 2 * self.lease_seconds)
        late = [f for f, (_, began) in in_flight.items() if time.monotonic() - began > deadline]
        error = f"no whole answer within {deadline:g} s"
        return [(event, Outcome(event.sequence, False, None, error)) for event, _ in map(in_flight.pop, late)]

    def exchange(self, finished: list[tuple[Event, Outcome]], room: int, renew: tuple[int, ...] = ()) -> list[Event]:
        """Write what finished and claim up to `room` more, renewing the leases of `renew`; a
        database failure is logged and tried again (nothing is lost: unsettled events are
        delivered again after their lease)."""
        try:
            if finished:
                outbox.settle(self.store.db, finished, self.backoff, random.random)
                self.note(finished)
            return outbox.claim(self.store.db, room, self.lease_seconds, renew) if room > 0 or renew else []
        except Exception:
            log.exception("the outbox could not be read or written; trying again")
            self.store.connections.discard()
            self.stopping.wait(1.0)
            return []

    def note(self, finished: list[tuple[Event, Outcome]]) -> None:
        for event, outcome in finished:
            if outcome.delivered:
                self.delivered += 1
            elif event.attempts == 0:  # its first failure; later ones are in `mm7soap outbox`
                log.warning("event %s (%s) not delivered: %s", event.event_id, event.type, outcome.error)

    def pending(self) -> int:
        found = self.store.db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
        return int(found[0])

    def close(self) -> None:
        self.client.close()
        self.store.close()


def run_forever(settings: Settings) -> None:
    """`mm7soap forward`: forward until SIGTERM or SIGINT, then finish what is in flight."""
    forwarder = Forwarder(settings)
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


def safe_url(url: str) -> str:
    """A URL without any password in it, for logs."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(password="***")) if parsed.password else url


def main(argv: Any = None) -> None:
    """`python -m mm7soap.forwarder`: what `mm7soap serve` runs beside gunicorn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [forwarder] %(levelname)s %(message)s")
    # httpx logs every request's URL at INFO: one line per event, with any password in it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_forever(Settings.from_env())


if __name__ == "__main__":
    main()

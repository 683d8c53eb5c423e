"""Soak: minutes of a fixed rate of mixed valid and invalid requests against the service
under gunicorn (the issue's "Soak" requirement: "5 minutes at a fixed rate with mixed
valid and invalid requests: RSS growth under 10%, open file descriptors stable, latency
p99 stable").  Every answer must be the right one and every acknowledged report stored.

Valid requests (answered 1000): new DeliveryReportReqs, ReadReplyReqs, DeliverReqs with an
attachment, and resends of acknowledged reports.  Invalid ones (a SOAP Fault, 4xxx): XML
not well-formed, a missing MessageID, SubmitReq, a foreign namespace, a binary body, GET
instead of POST, bytes that are not HTTP.

MM7SOAP_SOAK_SECONDS (default 300, the issue's 5 minutes; 20-30 for a quick local run) and
MM7SOAP_SOAK_RATE (requests/s, default 50).  Run with `pytest -s` to see the figures line
(`RELIABILITY soak: …`).
"""

from __future__ import annotations

import http.client
import math
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import NamedTuple

from mm7soap.settings import Settings
from tests.helpers import data
from tests.reliability.service import Client, Service, delivery_report, open_fds, rss_kib, serving
from tests.reliability.soak_mix import (
    KIND,
    REQUEST_TIMEOUT,
    SEED,
    SWA,
    Kind,
    Request,
    deliver,
    mix,
    read_reply,
    send,
    wrong_answer,
)

SECONDS = float(os.environ.get("MM7SOAP_SOAK_SECONDS", "300"))
RATE = float(os.environ.get("MM7SOAP_SOAK_RATE", "50"))
# Few client threads: the machine has 2 cores, shared with the server's 2 workers.
SENDERS = 4
WORKERS = 2
# Warm-up, not measured for growth: imports, caches and each thread's SQLite connection
# are made on first use.
WARM_UP = min(0.1 * SECONDS, 15.0)
# "p99 stable": the p99 of each window of the measured period; the late third's windows
# against the early third's, by their medians, so that a burst of a noisy neighbour in one
# window does not count but a service slowing down for good does.
WINDOW_SECONDS = 5.0
SLOWEST = 2.0  # seconds any one request may take, from sending to the answer
RSS_GROWTH = 1.10
# A descriptor or two may be open at one sample and not the other: a raw-socket request
# or a GET's connection in flight.
FD_SLACK = 2
# Each thread of a worker opens its own SQLite connection (the database and its WAL: 2
# descriptors) the first time it leads a group commit, which may be long after the warm-up
# (a thread that only ever followed has none): bounded by the threads, not by the
# requests, so the database's descriptors are held to that bound and not to the warm-up's
# count; plus the shared memory file, one per process.
DATABASE_FDS_PER_THREAD = 2
# A worker's threads: its pool (MM7SOAP_THREADS, the default here), its main thread and one
# to spare; more is a leak of threads, each perhaps with its connection.
WORKER_THREADS = Settings().threads + 2
# What such a connection may add to RSS: SQLite's default page cache (cache_size -2000) and
# the connection's own structures.
CONNECTION_KIB = 2500
# Every wait is bounded: requests still unsent this long after their schedule ends are
# counted as unsent rather than sent, so a hung service fails the test, it does not hang CI.
GIVE_UP = 30.0


class Timing(NamedTuple):
    index: int
    kind: str
    # Seconds the sender was behind the schedule when it sent, and from sending to the
    # answer.  Latency is measured from sending: a late sender on this shared machine is
    # mostly the client's own scheduling; a service too slow for the rate shows as growing
    # lateness, which is bounded separately.
    late: float
    service: float


@dataclass
class Traffic:
    """What the senders did, shared by their threads."""

    start: float
    total: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: int = 0
    timings: list[Timing] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)  # new delivery reports acknowledged
    others: Counter[str] = field(default_factory=Counter)  # other valid requests acknowledged, by kind
    wrong: list[str] = field(default_factory=list)  # wrong answers, or none
    unsent: int = 0
    crashed: list[str] = field(default_factory=list)  # a sender's own exception

    def take(self) -> int | None:
        """The next request's index in the schedule, or None when all were taken."""
        with self.lock:
            if self.taken >= self.total:
                return None
            self.taken += 1
            return self.taken - 1

    def due(self, index: int) -> float:
        return self.start + index / RATE


def resend(index: int, traffic: Traffic, rng: random.Random) -> Request:
    """An acknowledged report again: as it was, or under a new TransactionID (an MMSC that
    renumbers); either way a 1000 and no new row.  A new report while none was acknowledged."""
    with traffic.lock:
        earlier = rng.choice(traffic.reports) if traffic.reports else None
    if earlier is None:
        return Request(KIND["report"], delivery_report(f"soak-{index}"), report=f"soak-{index}")
    if index % 2:
        return Request(KIND["resend"], delivery_report(earlier))
    return Request(KIND["resend"], delivery_report(f"soak-{index}-again", message_id=f"mid-{earlier}"))


def build(kind: Kind, index: int, traffic: Traffic, rng: random.Random) -> Request:
    if kind.name == "report":
        return Request(kind, delivery_report(f"soak-{index}"), report=f"soak-{index}")
    if kind.name == "read_reply":
        return Request(kind, read_reply(index))
    if kind.name == "deliver":
        return Request(kind, deliver(index), SWA)
    if kind.name == "resend":
        return resend(index, traffic, rng)
    files = {
        "not_well_formed": "not_well_formed.xml",
        "missing_element": "missing_message_id.xml",
        "submit_req": "submit_req.xml",
        "foreign_namespace": "foreign_namespace.xml",
    }
    if kind.name in files:
        return Request(kind, data(files[kind.name]))
    if kind.name == "garbage_body":
        return Request(kind, rng.randbytes(200), "application/octet-stream")
    return Request(kind)  # wrong_method, garbage_http: sent by `send`


def record(
    traffic: Traffic, index: int, request: Request, outcome: tuple[int, bytes], times: tuple[float, float]
) -> None:
    sent, answered = times
    wrong = wrong_answer(request, *outcome)
    with traffic.lock:
        traffic.timings.append(Timing(index, request.kind.name, sent - traffic.due(index), answered - sent))
        if wrong is not None:
            traffic.wrong.append(wrong)
        elif request.report is not None:
            traffic.reports.append(request.report)
        elif request.kind.valid:
            traffic.others[request.kind.name] += 1


def sender(port: int, traffic: Traffic, kinds: list[Kind], seed: int) -> None:
    """Open-loop: request i is sent at start + i/RATE, or at once when behind (never
    skipped), so a slow service makes requests wait here rather than lowering the rate."""
    rng = random.Random(seed)
    client = Client(port, timeout=REQUEST_TIMEOUT)
    try:
        while (index := traffic.take()) is not None:
            pause = traffic.due(index) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif -pause > GIVE_UP:
                with traffic.lock:
                    traffic.unsent += 1
                continue
            request = build(kinds[index], index, traffic, rng)
            sent = time.monotonic()
            try:
                outcome = send(client, request)
            except (OSError, http.client.HTTPException) as exc:
                outcome = (0, f"no answer: {exc!r}".encode())
            record(traffic, index, request, outcome, (sent, time.monotonic()))
    except BaseException as exc:
        with traffic.lock:
            traffic.crashed.append(repr(exc))
        raise
    finally:
        client.close()


@dataclass(frozen=True)
class Sample:
    """The master's and each worker's memory, descriptors and threads at one moment."""

    workers: tuple[int, ...]
    rss: dict[int, int]  # KiB, by pid
    fds: dict[int, Counter[str]]  # by kind (tests.reliability.service.open_fds)
    threads: dict[int, int]


def sample(service: Service) -> Sample:
    pids = [service.master, *service.workers()]
    return Sample(
        workers=tuple(pids[1:]),
        rss={pid: rss_kib(pid) for pid in pids},
        fds={pid: open_fds(pid, service.database) for pid in pids},
        threads={pid: len(os.listdir(f"/proc/{pid}/task")) for pid in pids},
    )


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Latency:
    """p99s of the measured period, in seconds from sending to the answer."""

    windows: list[float]  # of each WINDOW_SECONDS, in order
    thirds: list[float]  # of each third, pooled
    early: float  # median of the first third's window p99s
    late: float  # median of the last third's

    def __str__(self) -> str:
        thirds = " / ".join(f"{p * 1000:.1f}" for p in self.thirds)
        return (
            f"p99 by third {thirds} ms, window p99 median early {self.early * 1000:.1f} late {self.late * 1000:.1f} ms"
        )


def split(traffic: Traffic, count: int) -> list[list[float]]:
    """Service times of the measured period (after the warm-up) in `count` equal windows of
    the schedule."""
    measured = SECONDS - WARM_UP
    windows: list[list[float]] = [[] for _ in range(count)]
    for timing in traffic.timings:
        offset = timing.index / RATE - WARM_UP
        if offset >= 0:
            windows[min(count - 1, int(offset / measured * count))].append(timing.service)
    return windows


def latency(traffic: Traffic) -> Latency:
    count = max(3, round((SECONDS - WARM_UP) / WINDOW_SECONDS))
    windows = [p99(window) for window in split(traffic, count) if window]
    third = max(1, len(windows) // 3)
    thirds = [p99(window) for window in split(traffic, 3) if window]
    return Latency(windows, thirds, median(windows[:third]), median(windows[-third:]))


@dataclass(frozen=True)
class Stored:
    reports: set[str]  # TransactionIDs of the delivery_reports rows
    read_replies: int
    messages: int


def stored(service: Service) -> Stored:
    with closing(sqlite3.connect(service.database, timeout=10)) as conn:
        read_replies, messages = (
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("read_replies", "messages")
        )
    return Stored({tx for tx, _ in service.rows()}, read_replies, messages)


def fill_thread_pools(service: Service, connections: int = 96, rounds: int = 3) -> None:
    """Bursts of simultaneous /health checks (each a real write) until every worker has
    started all its threads: a thread started later, with its stack and SQLite connection,
    would count as growth in RSS, though the pool's size bounds it."""

    def check(barrier: threading.Barrier) -> None:
        barrier.wait(timeout=REQUEST_TIMEOUT)
        assert Client(service.port).get("/health")[0] == 200

    for _ in range(rounds):
        barrier = threading.Barrier(connections)
        burst = [threading.Thread(target=check, args=(barrier,)) for _ in range(connections)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join(timeout=REQUEST_TIMEOUT * 2)


def run_traffic(service: Service) -> tuple[Traffic, Sample, Sample]:
    """The whole schedule; samples after the warm-up and just before the schedule ends,
    both while the senders' keep-alive connections are open."""
    fill_thread_pools(service)
    total = round(SECONDS * RATE)
    kinds = mix(total)
    traffic = Traffic(start=time.monotonic() + 0.2, total=total)
    threads = [
        threading.Thread(target=sender, args=(service.port, traffic, kinds, SEED + n), name=f"soak-sender-{n}")
        for n in range(SENDERS)
    ]
    for thread in threads:
        thread.start()
    try:
        sleep_until(traffic.start + WARM_UP)
        first = sample(service)
        sleep_until(traffic.start + SECONDS - 0.5)
        last = sample(service)
    finally:
        deadline = traffic.start + SECONDS + GIVE_UP + REQUEST_TIMEOUT + 5
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a sender did not finish"
    return traffic, first, last


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def descriptors(first: Counter[str], last: Counter[str]) -> str:
    """ "39→49 (database 14→24, socket 6→6, other 19→19)"."""
    kinds = ", ".join(f"{kind} {first[kind]}→{last[kind]}" for kind in ("database", "socket", "other"))
    return f"{first.total()}→{last.total()} ({kinds})"


def processes(first: Sample, last: Sample) -> str:
    """Each process's RSS, descriptors and threads, after the warm-up → at the end."""
    shown = []
    for number, pid in enumerate(first.rss):
        name = "master" if number == 0 else f"worker {pid}"
        growth = (last.rss.get(pid, 0) / first.rss[pid] - 1) * 100
        shown.append(
            f"{name} RSS {mib(first.rss[pid])}→{mib(last.rss.get(pid, 0))} MiB ({growth:+.1f}%)"
            f" fds {descriptors(first.fds[pid], last.fds.get(pid, Counter()))}"
            f" threads {first.threads[pid]}→{last.threads.get(pid, 0)}"
        )
    return "; ".join(shown)


def figures(traffic: Traffic, first: Sample, last: Sample, kept: Stored, measured: Latency) -> str:
    sent = Counter(timing.kind for timing in traffic.timings)
    valid = sum(count for name, count in sent.items() if KIND[name].valid)
    acknowledged = len(traffic.reports) + sum(traffic.others.values())
    lost = len(set(traffic.reports) - kept.reports)
    slowest = max((timing.service for timing in traffic.timings), default=0.0)
    behind = max((timing.late for timing in traffic.timings), default=0.0)
    return (
        f"RELIABILITY soak: {SECONDS:.0f} s at {RATE:g}/s (warm-up {WARM_UP:.0f} s), sent {len(traffic.timings)}"
        f" (valid {valid}, invalid {len(traffic.timings) - valid}), unsent {traffic.unsent},"
        f" wrong answers {len(traffic.wrong)}; acknowledged {acknowledged} (distinct reports {len(traffic.reports)},"
        f" resends {traffic.others['resend']}, read replies {traffic.others['read_reply']},"
        f" MOs {traffic.others['deliver']}); rows {len(kept.reports)} reports, {kept.read_replies} read replies,"
        f" {kept.messages} MOs; lost {lost}; {processes(first, last)};"
        f" {measured}, slowest {slowest * 1000:.0f} ms, senders at most {behind * 1000:.0f} ms behind"
    )


def assert_resources(first: Sample, last: Sample) -> None:
    """No worker replaced; RSS and descriptors of every process stable (master included)."""
    assert last.workers == first.workers, (
        f"workers changed (one crashed or timed out): {first.workers} → {last.workers}"
    )
    for pid, start in first.rss.items():
        # A connection opened since (a thread's first group commit) brings its page cache,
        # bounded by SQLite's default cache_size, and the threads are bounded by the pool.
        opened = max(0, last.fds[pid]["database"] - first.fds[pid]["database"]) // DATABASE_FDS_PER_THREAD
        allowed = RSS_GROWTH * start + CONNECTION_KIB * opened
        threads = f"threads {first.threads[pid]} → {last.threads[pid]}, {opened} connections opened"
        assert last.rss[pid] <= allowed, f"{pid}: RSS grew {start} → {last.rss[pid]} KiB, {threads}"
    for pid in last.workers:
        assert last.threads[pid] <= WORKER_THREADS, f"{pid}: {last.threads[pid]} threads"
    for pid, start in first.fds.items():
        end, shown = last.fds[pid], f"{pid}: descriptors {descriptors(start, last.fds[pid])}"
        # Connections to the database: at most each thread's, however many requests.
        assert end["database"] <= DATABASE_FDS_PER_THREAD * WORKER_THREADS + 1, shown
        # Sockets: the listener and the senders' keep-alive connections, which may move
        # from one worker to the other when an answer closes one; a leak is one a request.
        assert end["socket"] <= start["socket"] + SENDERS + FD_SLACK, shown
        assert end["other"] <= start["other"] + FD_SLACK, shown


def assert_latency(traffic: Traffic, measured: Latency) -> None:
    # Loose enough for a shared, noisy 2-core machine, tight enough for a tail that grows
    # with the table or a leak: late within 3× early, or early + 50 ms.
    early, late = measured.early, measured.late
    assert late <= max(3 * early, early + 0.050), f"the tail grew: {measured}; window p99s {measured.windows}"
    slow = [timing for timing in traffic.timings if timing.service > SLOWEST]
    assert not slow, f"requests slower than {SLOWEST} s: {slow[:10]}"
    # Open loop: a service slower than the rate leaves the senders ever further behind.
    behind = max(timing.late for timing in traffic.timings)
    assert behind <= SLOWEST, f"the senders fell {behind:.1f} s behind the schedule"


def assert_traffic(traffic: Traffic, kept: Stored) -> None:
    assert not traffic.crashed, traffic.crashed
    assert traffic.unsent == 0, f"{traffic.unsent} requests not sent within {GIVE_UP} s of their time"
    assert len(traffic.timings) == traffic.total
    assert not traffic.wrong, f"{len(traffic.wrong)} wrong answers, e.g. {traffic.wrong[:5]}"
    acknowledged = set(traffic.reports)
    assert len(acknowledged) == len(traffic.reports)
    assert acknowledged - kept.reports == set(), "acknowledged reports lost"
    assert kept.reports - acknowledged == set(), "rows of reports never acknowledged (or resends stored twice)"
    assert (kept.read_replies, kept.messages) == (traffic.others["read_reply"], traffic.others["deliver"])


def serving_log_problems(service: Service) -> Iterator[str]:
    """Lines of the gunicorn log that no mix of valid and invalid requests should cause."""
    assert service.log_path is not None
    for line in service.log_path.read_text(errors="replace").splitlines():
        if "Traceback" in line or "WORKER TIMEOUT" in line or "[CRITICAL]" in line:
            yield line


def test_soak_fixed_rate_mixed_requests_keep_memory_descriptors_and_latency_stable(tmp_path: Path) -> None:
    with serving(tmp_path / "soak.db", MM7SOAP_WORKERS=str(WORKERS)) as service:
        started = tuple(service.workers())
        traffic, first, last = run_traffic(service)
        ended = tuple(service.workers())
        kept = stored(service)
        problems = list(serving_log_problems(service))
    measured = latency(traffic)
    print("\n" + figures(traffic, first, last, kept, measured))
    assert started == first.workers == ended, f"workers changed: {started} → {first.workers} → {ended}"
    assert_traffic(traffic, kept)
    assert_resources(first, last)
    assert_latency(traffic, measured)
    assert not problems, problems[:10]

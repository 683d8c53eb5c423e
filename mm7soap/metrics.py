"""Prometheus metrics (issue 19): every metric mm7soap exports, and the small functions that count.

The request path calls `Metrics.answered` once per request with what it came to (the record
the request log writes too, `mm7soap.requestlog.Answered`), and the group commit calls
`Metrics.committed` once per commit; the forwarder counts its deliveries in `DeliveryMetrics`.
The outbox's backlog is not counted at all: it is read from the database when scraped.

Under gunicorn each worker is a process of its own and a scrape reaches one of them, so the
counts live in files, prometheus_client's multiprocess mode: each process writes its own
(`counter_<pid>.db`, `histogram_<pid>.db`) in one directory, and the worker that is scraped
adds them all up.  The master makes a fresh, private directory at each start, before it forks
(`start_multiprocess`), and the forwarder it starts writes there too.  prometheus_client keeps
a dead process's files for ever (`mark_process_dead` only removes live gauges' files, and we
have none): its counts must still be counted, but every scrape reads every file, so a service
whose workers were replaced a thousand times would scrape slowly.  So when a process exits
the master folds its files into one `<kind>_exited.db` per kind (`process_exited`), under
a lock that scrapes share, so that no scrape sees a count twice or not at all.

Without gunicorn (tests, an embedded WSGI app) there is no directory: the metrics live in a
registry of the application's own.  With `metrics_access = off` nothing here is made at all.

prometheus_client is imported when metrics are made, not with this module: it picks its mode
(files or memory) from PROMETHEUS_MULTIPROC_DIR when first imported, and gunicorn's master
imports this module (serving → wsgi → transport) before its on_starting hook sets that.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import sqlite_utils

from mm7soap import errors, outbox, postgres
from mm7soap.connections import MEMORY
from mm7soap.settings import Settings
from mm7soap.times import parse_stored

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from mm7soap.requestlog import Answered

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The kinds of file our processes write (we have no gauges: the outbox's are read at scrape).
FILE_KINDS = ("counter", "histogram")
EXITED = "exited"  # <kind>_exited.db: the counts of every process that has exited
SCRAPE_LOCK = "scrape.lock"  # not *.db: prometheus_client reads every *.db file

# Seconds: an answer is a few milliseconds when the disk is quick, up to the busy timeout
# (5 s) when the database is locked; Sinch gives up at 10 s.
ANSWER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Why a report could not be stored (a 3000), from the StoreError's message (SQLite's own
# words, or connections.py's); the first that matches.  A label has a few values only.
STORAGE_CAUSES = (
    ("locked", ("locked", "busy")),
    ("disk_full", ("disk is full",)),
    ("read_only", ("readonly", "read-only")),
    ("io_error", ("i/o error",)),
    ("corrupt", ("malformed", "not a database")),
    ("file_replaced", ("replaced or deleted",)),
    ("file_missing", ("is missing", "unable to open")),
)
OTHER_CAUSE = "other"
UNREAD = "unread"  # the operation or namespace of a request refused before its envelope was read

DELIVERED, FAILED_ATTEMPT, GIVEN_UP = "delivered", "failed_attempt", "given_up"

# The outbox is read at scrape with its own connection, and given up past this many seconds
# (a scrape must not hang on a database in trouble; the gauges are then left out).
OUTBOX_READ_SECONDS = 0.5


def storage_cause(error: errors.StoreError) -> str:
    text = error.details.lower()
    return next((cause for cause, words in STORAGE_CAUSES if any(word in text for word in words)), OTHER_CAUSE)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The metrics of the MM7 service, in one process; `None` instead when metrics are off."""

    def __init__(self, database: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # no `_created` series beside each counter: files have none either
        count_by_kept_pid()
        self.directory = multiprocess_dir()
        # Without a directory, a registry of this application's own (two apps in one test
        # process do not share counts); with one, every scrape merges the files afresh.
        self.registry: CollectorRegistry | None = None if self.directory else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "mm7soap_requests",
            "MM7 requests answered, by operation, MM7 namespace and the answer's StatusCode",
            ("operation", "namespace", "status_code"),
            registry=registry,
        )
        self.http = Counter(
            "mm7soap_http_responses", "HTTP answers, by route and status", ("route", "status"), registry=registry
        )
        self.answer_time = Histogram(
            "mm7soap_request_duration_seconds",
            "Seconds from an MM7 request's arrival at the application to its answer",
            buckets=ANSWER_BUCKETS,
            registry=registry,
        )
        self.resends = Counter(
            "mm7soap_resends",
            "Requests recognised as resends of one stored (answered 1000, not stored again)",
            ("operation",),
            registry=registry,
        )
        self.storage_failures = Counter(
            "mm7soap_storage_failures",
            "Requests answered 3000 because they could not be stored, by cause",
            ("cause",),
            registry=registry,
        )
        for cause, _ in (*STORAGE_CAUSES, (OTHER_CAUSE, ())):
            self.storage_failures.labels(cause)  # each at 0: a rate from the first failure on
        self.batch_size = Histogram(
            "mm7soap_commit_batch_size",
            "Requests committed together by one group commit",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_time = Histogram(
            "mm7soap_commit_duration_seconds",
            "Seconds of one group commit, from taking the write lock to the commit on disk",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.outbox = OutboxCollector(database)
        if registry is not None:
            registry.register(self.outbox)
        self.children: dict[tuple[Any, tuple[str, ...]], Any] = {}  # see `child`

    def answered(self, answered: Answered) -> None:
        """Counts one MM7 request (a POST to the MM7 path) by what it came to."""
        operation = answered.operation or UNREAD
        self.child(self.requests, operation, answered.namespace or UNREAD, str(answered.status_code)).inc()
        self.child(self.http, "mm7", str(answered.http_status)).inc()
        self.answer_time.observe(answered.seconds)
        if answered.resent:
            self.resends.labels(operation).inc()
        if isinstance(answered.error, errors.StoreError):
            self.storage_failures.labels(storage_cause(answered.error)).inc()

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: labels() checks its values, makes them
        strings and takes a lock at every call, twice a request.  There are no more of them
        than the metric has label values."""
        key = (metric, values)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*values)
        return found

    def http_answered(self, route: str, status: int) -> None:
        """Counts an answer that is not an MM7 request's (/health, /events, /metrics, the WSDL, …)."""
        self.http.labels(route, str(status)).inc()

    def committed(self, size: int, seconds: float) -> None:
        """Counts one group commit of `size` writes that took `seconds` (mm7soap.commit)."""
        self.batch_size.observe(size)
        self.commit_time.observe(seconds)

    def page(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scrape, in the format its Accept header asks for, and its type."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        if self.directory is None:
            assert self.registry is not None
            return encode(self.registry), content_type
        registry = CollectorRegistry()
        registry.register(ProcessFiles(self.directory))
        registry.register(self.outbox)
        return encode(registry), content_type


def for_service(settings: Settings) -> Metrics | None:
    """The service's metrics, or None when `metrics_access` is off (nothing is counted then)."""
    return None if settings.metrics_access == "off" else Metrics(settings.database)


class ProcessFiles:
    """Every process's counts, from the directory's files: prometheus_client's
    MultiProcessCollector, but for a file just created by a process starting (a worker that
    replaces one, the forwarder), which is empty until it is sized: read, it failed the scrape."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with scrape_lock(self.directory, exclusive=False):  # read whole: merge returns a list
            files = [str(path) for path in Path(self.directory).glob("*.db") if sized(path)]
            return list(MultiProcessCollector.merge(files))


def sized(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


class OutboxCollector:
    """The hand-off's backlog, read from the database by the process that is scraped."""

    def __init__(self, database: str) -> None:
        self.database = database

    def describe(self) -> Iterable[Any]:
        return ()  # registering must not read the database

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.database == MEMORY:
            return
        try:
            pending, oldest_age = outbox_backlog(self.database)
        except (sqlite3.Error, psycopg.Error, errors.StoreError) as exc:
            log.warning("the outbox could not be read for /metrics: %s", exc)
            return
        yield GaugeMetricFamily("mm7soap_outbox_pending", "Events waiting to be delivered to the webhook", pending)
        yield GaugeMetricFamily(
            "mm7soap_outbox_oldest_pending_age_seconds",
            "Seconds since the oldest pending event was committed (0 when none is pending)",
            oldest_age,
        )


@contextmanager
def read_only(database: str) -> Iterator[Any]:
    """A read-only connection of its own to either engine, giving up after OUTBOX_READ_SECONDS."""
    if postgres.is_postgresql(database):
        with postgres.read_only(database, OUTBOX_READ_SECONDS) as db:
            yield db
        return
    uri = Path(database).absolute().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=OUTBOX_READ_SECONDS)) as conn:
        deadline = time.monotonic() + OUTBOX_READ_SECONDS
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # nonzero: interrupt
        yield sqlite_utils.Database(conn)


def outbox_backlog(database: str) -> tuple[int, float]:
    """The pending events and the oldest one's age, in seconds: two reads of the pending
    index, on a read-only connection of its own that gives up after OUTBOX_READ_SECONDS."""
    with read_only(database) as db:
        pending = outbox.pending_count(db)
        oldest = outbox.oldest_pending(db) if pending else None
    if oldest is None:
        return pending, 0.0
    return pending, max(0.0, (datetime.now(timezone.utc) - parse_stored(oldest)).total_seconds())


class DeliveryMetrics:
    """The forwarder's deliveries: each attempt counted once, as delivered (a 2xx), a failed
    attempt (retried later), or given up (failed past `webhook_max_age`, kept as `failed`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, disable_created_metrics

        disable_created_metrics()
        self.deliveries = Counter(
            "mm7soap_deliveries", "Webhook delivery attempts, by outcome", ("outcome",), registry=registry
        )
        for outcome in (DELIVERED, FAILED_ATTEMPT, GIVEN_UP):
            self.deliveries.labels(outcome)

    def attempted(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()


def for_forwarder(settings: Settings) -> DeliveryMetrics | None:
    """Beside gunicorn (the master's directory in the environment) the forwarder's counts
    join the workers'.  Run on its own there is nothing that would serve them: none."""
    if settings.metrics_access == "off" or multiprocess_dir() is None:
        return None
    return DeliveryMetrics()


# --- The master's side: the directory, and the files of processes that exited ---------------


def start_multiprocess(settings: Settings) -> str | None:
    """A fresh private directory for this start's counts, in the environment of the processes
    the master starts from now on (workers, forwarder); None when metrics are off.  Any
    PROMETHEUS_MULTIPROC_DIR given is replaced: old files there would add old counts."""
    if settings.metrics_access == "off":
        os.environ.pop(MULTIPROC_ENV, None)
        return None
    directory = tempfile.mkdtemp(prefix="mm7soap-metrics-")  # mode 0700
    os.environ[MULTIPROC_ENV] = directory
    return directory


def stop_multiprocess() -> None:
    """At the master's exit: the counts go with the service (a restart starts from 0, which
    Prometheus's rate() takes as a counter reset)."""
    directory = os.environ.pop(MULTIPROC_ENV, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


def process_exited(pid: int) -> None:
    """A worker or the forwarder has exited (called in the master once it is reaped, before
    another process is started, so no new process has its pid yet): its counts are folded
    into the `exited` files and its own files removed."""
    directory = multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)
    try:
        with scrape_lock(directory, exclusive=True):
            for kind in FILE_KINDS:
                fold(directory, kind, pid)
    except (OSError, RuntimeError) as exc:  # RuntimeError: prometheus_client's for a torn file
        log.error("the metrics of process %s could not be folded (its file is kept): %s", pid, exc)


def fold(directory: str, kind: str, pid: int) -> None:
    """Adds `<kind>_<pid>.db` into `<kind>_exited.db`, then removes it.  Every value of a
    counter or histogram file is a sum (a count, a bucket's count, a histogram's _sum), so
    sums of sums are the totals.  The new file replaces the old by rename: a master killed
    midway leaves the old totals and the dead process's file, never half of either."""
    from prometheus_client.mmap_dict import MmapedDict

    dead = os.path.join(directory, f"{kind}_{pid}.db")
    if not os.path.exists(dead):
        return
    kept = os.path.join(directory, f"{kind}_{EXITED}.db")
    totals: dict[str, float] = {}
    for path in (kept, dead):
        if os.path.exists(path):
            for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(path):
                totals[key] = totals.get(key, 0.0) + value
    folding = kept + ".folding"
    with suppress(FileNotFoundError):
        os.remove(folding)  # left by a master killed while folding
    merged = MmapedDict(folding)
    try:
        for key, value in totals.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    os.replace(folding, kept)
    os.remove(dead)


@contextmanager
def scrape_lock(directory: str, exclusive: bool) -> Iterator[None]:
    """Scrapes share it; folding takes it alone.  flock: released by the kernel when its
    holder dies, so a worker killed mid-scrape never leaves the master waiting."""
    fd = os.open(os.path.join(directory, SCRAPE_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    held.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        held.discard(fd)
        os.close(fd)  # releases the lock


# The lock's descriptors open in this process.  gunicorn forks a new worker from the master's
# main thread while the forwarder's watch thread may be folding: the worker's copy of the
# descriptor held the lock for the worker's whole life, and every scrape waited for ever.
held: set[int] = set()


def forget_held() -> None:
    for fd in list(held):
        with suppress(OSError):
            os.close(fd)  # the parent's copy still holds the lock, until the parent closes it
    held.clear()


os.register_at_fork(after_in_child=forget_held)


# prometheus_client's values in files call os.getpid() at every increment, to notice a fork:
# a system call, and under load most of the CPU that counting a request takes (py-spy on a
# served worker, benchmarks/observability.py).  Ours ask `kept_pid`, which a forked child
# renews before any of its Python code runs.
process_id = os.getpid()


def kept_pid() -> int:
    return process_id


def renew_pid() -> None:
    global process_id
    process_id = os.getpid()


os.register_at_fork(after_in_child=renew_pid)


def count_by_kept_pid() -> None:
    """Before the process makes its first metric: prometheus_client's class of values in files,
    asking `kept_pid` for the pid.  Not when it counts in memory, nor when something made
    metrics in files here before (its files open beside ours would clash)."""
    from prometheus_client import values

    value_class = values.ValueClass
    if not getattr(value_class, "_multiprocess", False) or getattr(value_class, "by_kept_pid", False):
        return
    directory = multiprocess_dir()
    if directory is None or any(Path(directory).glob(f"*_{os.getpid()}.db")):
        return
    kept = values.MultiProcessValue(process_identifier=kept_pid)
    kept.by_kept_pid = True
    values.ValueClass = kept

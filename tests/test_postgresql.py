"""The promises of several instances on one PostgreSQL database (issue 20), against a real cluster.

Each test here fails when the mechanism it proves is taken away: the advisory lock that makes
outbox sequences commit in order (`/events` never skips), the unique indexes behind
`ON CONFLICT` (a resend reaching two instances at once is stored once), `FOR UPDATE SKIP LOCKED`
in the claim (two forwarders never lease one event), the connections that are dropped and
reopened after a fault (3000 while the database is down, 1000 again once it is back, without
a restart), and `mm7soap.postgres.redacted` wherever a URL is shown (no password anywhere).
The database faults use a cluster of this module's own, stopped and started under load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer, make_server

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from mm7soap import outbox, requestlog
from mm7soap.cli import cli
from mm7soap.connections import transaction
from mm7soap.outbox import Backoff, Event, Outcome
from mm7soap.postgres import PgDatabase
from mm7soap.schema import MESSAGES, OUTBOX, PARTS, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.times import utc_timestamp
from mm7soap.transport import MM7WsgiApp
from tests import postgresql_cluster
from tests.conftest import QuietHandler
from tests.helpers import Response, call
from tests.test_deliver import BASE, envelope, post, with_picture
from tests.test_stored_right import report


def settings_on(url: str, **changes: Any) -> Settings:
    return Settings(database=url, busy_timeout_ms=changes.pop("busy_timeout_ms", 5000), **changes)


@pytest.fixture
def instances(postgresql_url: str) -> Iterator[Callable[..., MM7WsgiApp]]:
    """Makes "instances": apps of their own on the test's one database; closes them after."""
    made: list[MM7WsgiApp] = []

    def make(**changes: Any) -> MM7WsgiApp:
        made.append(MM7WsgiApp(settings_on(postgresql_url, **changes)))
        return made[-1]

    yield make
    for app in made:
        app.store.close()


def status_code(response: Response, rsp: str = "DeliveryReportRsp") -> str | None:
    """The MM7 StatusCode of an answer, a Fault's too."""
    return response.text(f"Body/{rsp}/Status/StatusCode") or response.text("Body/Fault/detail/*/Status/StatusCode")


def numbered_report(n: int, prefix: str = "msg") -> bytes:
    return report(tx=f"tx-{n}", MessageID=f"<MessageID>{prefix}-{n}</MessageID>")


def scalar(app: MM7WsgiApp, sql: str) -> Any:
    return app.store.db.execute(sql).fetchone()[0]


# --- /events never skips an event another instance commits late ------------------------------


def holding_the_commit(app: MM7WsgiApp, drawn: threading.Event, release: threading.Event) -> None:
    """Makes `app`'s next writes wait, their rows and outbox event written (sequence drawn),
    before their COMMIT until `release`: an instance whose commit is slow."""
    writes = app.store.writes
    run = writes.run

    def held(work: Callable[[Any], Any]) -> Any:
        def work_then_wait(db: Any) -> Any:
            result = work(db)
            drawn.set()
            assert release.wait(30), "never released"
            return result

        return run(work_then_wait)

    writes.run = held  # type: ignore[method-assign]


class Reader:
    """An application pulling events: `GET /events?after=` on an instance, and the same query
    (`outbox.events_after`) on a connection of its own, each cursor advancing as it reads."""

    def __init__(self, app: MM7WsgiApp) -> None:
        self.app = app
        self.after_http = 0
        self.after_query = 0
        self.seen_http: list[str] = []
        self.seen_query: list[str] = []

    def poll(self) -> None:
        response = call(self.app, method="GET", path="/events", query=f"after={self.after_http}")
        page = json.loads(response.body)
        self.seen_http += [event["data"]["message_id"] for event in page["events"]]
        self.after_http = page["next_after"]
        found = outbox.events_after(self.app.store.db, self.after_query, 100)
        self.seen_query += [event["data"]["message_id"] for event in found]
        self.after_query = found[-1]["sequence"] if found else self.after_query


def test_events_never_skips_an_event_another_instance_commits_late(instances):
    slow, quick, reading = instances(), instances(), instances()
    drawn, release = threading.Event(), threading.Event()
    holding_the_commit(slow, drawn, release)
    reader = Reader(reading)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, slow, numbered_report(1, "slow"))
        assert drawn.wait(10)  # the slow instance's event has its sequence, not yet committed
        second = pool.submit(call, quick, numbered_report(2, "quick"))
        # Meanwhile the reader polls, as an application does, for long enough that the quick
        # instance would have committed (milliseconds) had nothing made it wait.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            reader.poll()
            time.sleep(0.05)
        release.set()
        answers = [first.result(30), second.result(30)]
    assert [status_code(answer) for answer in answers] == ["1000", "1000"]
    reader.poll()
    sequences = [row[0] for row in reading.store.db.execute(f"SELECT sequence FROM {OUTBOX} ORDER BY 1")]
    assert len(sequences) == 2
    # Every event, each once, in sequence order: the slow one was drawn first.
    assert reader.seen_query == ["slow-1", "quick-2"]
    assert reader.seen_http == ["slow-1", "quick-2"]


# --- A resend reaching two instances at the same moment is stored once --------------------------


def at_once(
    apps: list[MM7WsgiApp], request_of: Callable[[int], Callable[[MM7WsgiApp], Response]], rounds: int
) -> list[list[Response]]:
    """Round after round, every app gets round n's request at the same moment; the answers."""
    start = threading.Barrier(len(apps))

    def each(app: MM7WsgiApp, send: Callable[[MM7WsgiApp], Response]) -> Response:
        start.wait(10)
        return send(app)

    with ThreadPoolExecutor(len(apps)) as pool:
        return [list(pool.map(each, apps, [request_of(n)] * len(apps))) for n in range(rounds)]


def test_a_delivery_report_reaching_two_instances_at_once_is_stored_once(instances):
    apps = [instances(), instances()]
    rounds = 40
    answers = at_once(apps, lambda n: lambda app: call(app, numbered_report(n)), rounds)
    assert all(status_code(answer) == "1000" for pair in answers for answer in pair)
    assert scalar(apps[0], f"SELECT count(*) FROM {REPORTS}") == rounds
    assert scalar(apps[0], f"SELECT count(DISTINCT message_id) FROM {REPORTS}") == rounds
    assert scalar(apps[0], f"SELECT count(*) FROM {OUTBOX} WHERE type = 'delivery_report'") == rounds


def test_an_mo_with_parts_reaching_two_instances_at_once_is_stored_once(instances):
    apps = [instances(), instances()]
    rounds = 20

    def mo(n: int) -> Callable[[MM7WsgiApp], Response]:
        body = with_picture(envelope(BASE.replace("mo-1", f"mo-{n}"), tx=f"mo-tx-{n}"))
        return lambda app: post(app, body)

    answers = at_once(apps, mo, rounds)
    assert all(status_code(answer, "DeliverRsp") == "1000" for pair in answers for answer in pair)
    assert scalar(apps[0], f"SELECT count(*) FROM {MESSAGES}") == rounds
    assert scalar(apps[0], f"SELECT count(*) FROM {PARTS}") == rounds  # the picture; the SOAP root is the row
    assert scalar(apps[0], f"SELECT count(*) FROM {OUTBOX} WHERE type = 'message'") == rounds


# --- Two forwarders claim at once: each event leased by one of them at a time -------------------


def record_events(store: Store, keys: int, per_key: int) -> dict[int, str]:
    """`keys * per_key` pending events, interleaved by MessageID; their order keys by sequence."""
    db = store.connections.for_writing()
    created = utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=1))
    order: dict[int, str] = {}
    with transaction(db):
        for n in range(keys * per_key):
            key = f"msg-{n % keys}"
            order[outbox.record(db, "delivery_report", n + 1, key, created)] = key
    return order


@dataclass
class Ledger:
    """What the forwarders did, checked as they do it: an event leased by two at once, or
    delivered while an earlier one of its MessageID was not, is written down as a violation."""

    order: dict[int, str]  # each event's MessageID, by sequence
    lock: threading.Lock = field(default_factory=threading.Lock)
    leased: dict[int, str] = field(default_factory=dict)
    delivered: dict[int, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.of_key: dict[str, list[int]] = {}
        for sequence, key in sorted(self.order.items()):
            self.of_key.setdefault(key, []).append(sequence)

    def claimed(self, by: str, events: list[Event]) -> None:
        with self.lock:
            for event in events:
                if event.sequence in self.leased:
                    self.violations.append(f"{event.sequence} leased by {self.leased[event.sequence]} and {by}")
                if event.sequence in self.delivered:
                    self.violations.append(f"{event.sequence} claimed by {by} after its delivery")
                key = self.order[event.sequence]
                earlier = self.of_key[key][: self.of_key[key].index(event.sequence)]
                if any(s not in self.delivered for s in earlier):
                    self.violations.append(f"{event.sequence} claimed before an earlier event of {key}")
                self.leased[event.sequence] = by

    def deliver(self, by: str, events: list[Event]) -> list[tuple[Event, Outcome]]:
        with self.lock:
            for event in events:
                self.leased.pop(event.sequence, None)  # another's claim of it is a violation already
                self.delivered[event.sequence] = by
        return [(event, Outcome(event.sequence, True, 200)) for event in events]


BACKOFF = Backoff(first=1.0, cap=1.0, max_age=3600.0)


def forward_until_drained(store: Store, name: str, ledger: Ledger, limit: int) -> None:
    """A forwarder's rounds (`outbox.exchange`: settle what was delivered, claim more) on this
    thread's connection, until nothing is left to claim and nothing is pending."""
    db = store.db
    finished: list[tuple[Event, Outcome]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        claimed = outbox.exchange(db, finished, BACKOFF, lambda: 0.5, limit, lease_seconds=60)
        ledger.claimed(name, claimed)
        time.sleep(0.001)  # a delivery takes a moment: the other forwarder claims meanwhile
        finished = ledger.deliver(name, claimed)
        if not claimed and not finished and outbox.pending_count(db) == 0:
            return
    raise AssertionError(f"{name} did not drain the outbox in time")


def test_two_forwarders_claiming_at_once_never_lease_one_event_and_keep_each_message_ids_order(postgresql_url):
    with Store(settings_on(postgresql_url)) as store:
        store.migrate()
        ledger = Ledger(record_events(store, keys=200, per_key=10))
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(forward_until_drained, store, f"forwarder-{n}", ledger, 25) for n in range(4)]
            for run in runs:
                run.result(90)
        assert ledger.violations == []
        assert sorted(ledger.delivered) == sorted(ledger.order)
        assert len(set(ledger.delivered.values())) == 4  # each took part
        states = store.db.execute(f"SELECT state, count(*) FROM {OUTBOX} GROUP BY state").fetchall()
        assert states == [("delivered", 2000)]


def test_a_forwarder_that_dies_mid_claim_releases_its_events_when_its_session_ends(postgresql_url, request):
    with Store(settings_on(postgresql_url)) as store:
        store.migrate()
        record_events(store, keys=10, per_key=1)
        dying = psycopg.connect(postgresql_url, autocommit=True)
        request.addfinalizer(dying.close)  # closed below; here too should an assertion fail first
        dead = PgDatabase(dying)
        dead.execute("BEGIN")  # the claim's transaction, never committed: its rows stay locked
        taken = outbox.take_due(dead, datetime.now(timezone.utc), 4, 60, ())
        assert len(taken) == 4
        # The other forwarder skips what the dying one holds, and takes the rest.
        others = outbox.claim(store.db, 100, 60)
        assert {e.sequence for e in others}.isdisjoint(e.sequence for e in taken)
        assert len(others) == 6
        dying.close()  # the process died: PostgreSQL rolls its transaction back
        # …once its server process has noticed, a moment later: the rows were never leased.
        again: list[Event] = []
        deadline = time.monotonic() + 10
        while not again and time.monotonic() < deadline:
            again = outbox.claim(store.db, 100, 60)
            time.sleep(0.02)
        assert sorted(e.sequence for e in again) == sorted(e.sequence for e in taken)


def test_a_forwarder_that_dies_after_its_claim_releases_its_events_when_the_lease_ends(postgresql_url):
    with Store(settings_on(postgresql_url)) as store, Store(settings_on(postgresql_url)) as other:
        store.migrate()
        record_events(store, keys=3, per_key=1)
        taken = outbox.claim(store.db, 100, lease_seconds=1.0)  # then it dies, never settling
        assert len(taken) == 3
        assert outbox.claim(other.db, 100, 60) == []  # leased: not another's to deliver yet
        time.sleep(1.1)
        again = outbox.claim(other.db, 100, 60)
        assert sorted(e.sequence for e in again) == sorted(e.sequence for e in taken)


# --- Database faults: PostgreSQL stopped under load, then started again -------------------------


@dataclass
class OwnCluster:
    """A cluster of this module's own, which its tests stop and start (never the shared one)."""

    directory: Path
    url: str

    def stop(self) -> None:
        postgresql_cluster.stop(self.directory)

    def start(self) -> None:
        postgresql_cluster.start(self.directory)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[OwnCluster]:
    try:
        postgresql_cluster.find_tool("initdb")
        postgresql_cluster.cluster_user()
    except postgresql_cluster.ClusterError as error:
        if os.environ.get("MM7SOAP_REQUIRE_POSTGRESQL") == "1":
            pytest.fail(f"MM7SOAP_REQUIRE_POSTGRESQL=1 but {error}")
        pytest.skip(str(error))
    # Under /tmp: as root the cluster runs as `postgres`, which cannot reach pytest's tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="mm7soap-pg-faults-"))
    try:
        yield OwnCluster(directory, postgresql_cluster.start(directory))
    finally:
        postgresql_cluster.stop(directory)
        subprocess.run(["rm", "-rf", str(directory)], check=False)


class PooledServer(WSGIServer):
    """Requests handled by a few long-lived threads, as gunicorn's: each thread keeps its
    database connection from one request to the next, the broken one too unless it is dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = ThreadPoolExecutor(8)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self.handle_on_thread, request, client_address)

    def handle_on_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=True)


@pytest.fixture
def served(own_cluster: OwnCluster) -> Iterator[tuple[MM7WsgiApp, str]]:
    """An instance on the module's cluster, over HTTP; its app and base URL."""
    own_cluster.start()
    app = MM7WsgiApp(settings_on(own_cluster.url, busy_timeout_ms=1000, health_timeout=1.0))
    server = make_server("127.0.0.1", 0, app, server_class=PooledServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        app.store.close()
        own_cluster.start()  # for the next test, whatever this one left


@dataclass(frozen=True)
class Posted:
    message_id: str
    code: str | None
    seconds: float
    body: bytes


def post_xml(client: httpx.Client, base: str, body: bytes) -> httpx.Response:
    return client.post(f"{base}/mm7", content=body, headers={"Content-Type": "text/xml"})


def post_reports(base: str, prefix: str, stop: threading.Event, results: list[Posted], most: int = 10_000) -> None:
    """Delivery reports, one after another, until `stop` (or `most` of them)."""
    with httpx.Client(timeout=60) as client:
        for n in range(most):
            if stop.is_set():
                return
            started = time.monotonic()
            answer = post_xml(client, base, numbered_report(n, prefix))
            response = Response(answer.status_code, dict(answer.headers), answer.content)
            results.append(Posted(f"{prefix}-{n}", status_code(response), time.monotonic() - started, answer.content))


def health(base: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    answer = httpx.get(f"{base}/health", timeout=30)
    return answer.status_code, answer.content, time.monotonic() - started


def stored_message_ids(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        return {row[0] for row in connection.execute(f"SELECT message_id FROM {REPORTS}")}


@pytest.mark.postgresql  # a cluster of its own, but a PostgreSQL test: `-m postgresql` runs it
def test_postgresql_restarted_under_load_gets_3000s_then_1000s_again_without_a_restart(own_cluster, served):
    app, base = served
    stop, results = threading.Event(), []
    posters = [threading.Thread(target=post_reports, args=(base, f"load{n}", stop, results)) for n in range(4)]
    for poster in posters:
        poster.start()
    try:
        time.sleep(0.5)
        own_cluster.stop()  # fast: sessions ended, transactions in flight rolled back
        stopped_at = len(results)
        status, body, seconds = health(base)
        assert status == 503, body
        assert seconds < app.settings.health_timeout + 0.5
        time.sleep(1.0)
        down = results[stopped_at:]
        own_cluster.start()
        started_at = len(results)
        deadline = time.monotonic() + 30
        while not any(p.code == "1000" for p in results[started_at:]) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for poster in posters:
            poster.join(90)
    assert {p.code for p in results} <= {"1000", "3000"}
    assert [p for p in down if p.code == "3000"], "no request was answered 3000 while the database was down"
    assert any(p.code == "1000" for p in results[started_at:]), "the same app never stored again"
    acknowledged = {p.message_id for p in results if p.code == "1000"}
    assert acknowledged - stored_message_ids(own_cluster.url) == set()  # every 1000 has its row
    assert max(p.seconds for p in results) < 15  # each answered, none left hanging
    assert health(base)[0] == 200


@pytest.mark.postgresql
def test_postgresql_unreachable_gets_3000_within_a_bounded_time_never_a_hang(own_cluster, served):
    app, base = served
    own_cluster.stop()
    results: list[Posted] = []
    stop = threading.Event()
    posters = [threading.Thread(target=post_reports, args=(base, f"down{n}", stop, results, 5)) for n in range(3)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join(60)
    assert [p.code for p in results] == ["3000"] * 15
    assert max(p.seconds for p in results) < 10
    status, _, seconds = health(base)
    assert status == 503 and seconds < app.settings.health_timeout + 0.5
    own_cluster.start()
    assert stored_message_ids(own_cluster.url) & {p.message_id for p in results} == set()


# --- No password anywhere: logs, /health, faults, the CLI -------------------------------------


@pytest.fixture
def request_log(served: tuple[MM7WsgiApp, str]) -> Iterator[io.StringIO]:
    """The `mm7soap` loggers' lines (the request log at INFO), as `mm7soap serve` writes them."""
    text = io.StringIO()
    handler = requestlog.configure(served[0].settings, text)
    yield text
    package = logging.getLogger(requestlog.PACKAGE_LOG)
    package.removeHandler(handler)
    package.setLevel(logging.NOTSET)
    package.propagate = True


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password and len(password) >= 16  # distinctive: found only if it leaked
    return password


@pytest.mark.postgresql
def test_no_password_in_the_request_log_health_or_the_3000_while_the_database_is_down(own_cluster, served, request_log):
    _, base = served
    seen: list[bytes] = []
    with httpx.Client(timeout=30) as client:
        up = post_xml(client, base, numbered_report(0, "secret"))
        seen += [up.content, client.get(f"{base}/health").content]
        own_cluster.stop()
        # Several: a thread's first failure is its broken connection's, the next one's the
        # connect's, whose message names the database.
        for n in range(1, 12):
            seen.append(post_xml(client, base, numbered_report(n, "secret")).content)
        seen.append(client.get(f"{base}/health").content)
    log = request_log.getvalue()
    assert "status_code=1000" in log and "status_code=3000" in log  # both lines were written
    assert "postgresql://mm7soap:***@" in log  # the 3000's cause names the database, redacted
    assert b"<StatusCode>1000<" in seen[0] and b"<StatusCode>3000<" in seen[-2]
    assert b'"ok"' in seen[1] and b"postgresql://mm7soap:***@" in seen[-1]  # /health's 503 says why
    password = password_of(own_cluster.url)
    assert password not in log
    assert all(password.encode() not in text for text in seen)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}").geturl()


WRONG_PASSWORD = "Wr0ng-Zebra-Passw0rd-4711"


def test_no_password_in_serve_help_or_the_clis_errors(postgresql_url):
    runner = CliRunner()
    helped = runner.invoke(cli, ["serve", "--help"], env={"MM7SOAP_DATABASE": postgresql_url})
    assert helped.exit_code == 0 and "MM7SOAP_DATABASE" in helped.output
    assert password_of(postgresql_url) not in helped.output

    wrong = with_password(postgresql_url, WRONG_PASSWORD)
    read = runner.invoke(cli, ["reports", "-d", wrong])
    assert read.exit_code != 0
    assert "password authentication failed" in read.output
    assert WRONG_PASSWORD not in read.output

    command = Path(sys.executable).parent / "mm7soap"
    served = subprocess.run(
        [str(command), "serve", "-d", wrong, "--port", str(postgresql_cluster.free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MM7SOAP_DATABASE": ""},
    )
    assert served.returncode != 0
    lines = [line for line in served.stderr.splitlines() if line.startswith("mm7soap:")]
    assert len(lines) == 1 and "password authentication failed" in lines[0], served.stderr
    assert "Traceback" not in served.stderr
    assert WRONG_PASSWORD not in served.stdout + served.stderr

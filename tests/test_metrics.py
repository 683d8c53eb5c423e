"""GET /metrics (issue 19), in-process: each metric moves as the requests it counts, who may
scrape, the text parses with prometheus_client's own parser, every PromQL expression of the
Grafana dashboard names a metric a live /metrics exports, and the files of exited processes
are folded without losing a count.  Under gunicorn: tests/reliability/test_metrics_gunicorn.py."""

from __future__ import annotations

import base64
import configparser
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from mm7soap import errors, metrics
from mm7soap.commit import GroupCommit
from mm7soap.forwarder import Forwarder
from mm7soap.store import Store
from tests.helpers import call, data
from tests.test_forwarder import Receiver, answer, forwarding
from tests.test_stored_right import report

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "mm7soap" / "dashboards" / "grafana.json"
REL6 = "REL-6-MM7-1-4"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app: Any, **headers: str) -> Samples:
    response = call(app, method="GET", path="/metrics", content_type="", headers=headers)
    assert response.status == 200, response.body
    return parsed(response.body.decode())


def parsed(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def open_app(make_app: Any) -> Any:
    return make_app(metrics_access="open")


# --- Each metric moves as it should -------------------------------------------------------------


def test_a_stored_report_counts_a_1000_its_http_status_answer_time_and_commit(open_app):
    assert call(open_app, report("tx-a")).status == 200
    found = scrape(open_app)
    labels = {"operation": "DeliveryReport", "namespace": REL6}
    assert value(found, "mm7soap_requests_total", **labels, status_code="1000") == 1
    assert value(found, "mm7soap_http_responses_total", route="mm7", status="200") == 1
    assert value(found, "mm7soap_request_duration_seconds_count") == 1
    assert value(found, "mm7soap_request_duration_seconds_sum") > 0
    assert value(found, "mm7soap_commit_batch_size_count") == 1
    assert value(found, "mm7soap_commit_batch_size_sum") == 1
    assert value(found, "mm7soap_commit_duration_seconds_count") == 1
    assert value(found, "mm7soap_resends_total", operation="DeliveryReport") == 0
    assert value(found, "mm7soap_outbox_pending") == 1


def test_a_resend_is_counted_as_one(open_app):
    call(open_app, report("tx-a"))
    call(open_app, report("tx-b"))  # the same report under another TransactionID: a resend
    found = scrape(open_app)
    assert value(found, "mm7soap_resends_total", operation="DeliveryReport") == 1
    assert value(found, "mm7soap_requests_total", operation="DeliveryReport", namespace=REL6, status_code="1000") == 2
    assert value(found, "mm7soap_outbox_pending") == 1  # a resend makes no event


def test_a_4004_is_counted_with_what_was_read_of_the_request(open_app):
    call(open_app, report("tx-a", MessageID=""))
    call(open_app, data("not_well_formed.xml"))
    found = scrape(open_app)
    assert value(found, "mm7soap_requests_total", operation="DeliveryReport", namespace=REL6, status_code="4004") == 1
    assert value(found, "mm7soap_requests_total", operation="unread", namespace="unread", status_code="4004") == 1
    assert value(found, "mm7soap_http_responses_total", route="mm7", status="500") == 2
    assert value(found, "mm7soap_commit_batch_size_count") == 0  # nothing was written


def test_each_outcome_is_counted_under_its_own_labels_however_they_interleave(make_app):
    """Metrics.answered looks each counter up once by all its label values (Metrics.child): a
    1000 after a 4004 of the same operation, a 413 after an unreadable 500 (both `unread`),
    is still counted under its own."""
    app = make_app(metrics_access="open", max_body_bytes=4096)
    call(app, report("tx-a"))
    call(app, report("tx-b", MessageID=""))  # DeliveryReport, 4004, HTTP 500
    call(app, data("not_well_formed.xml"))  # unread, 4004, HTTP 500
    call(app, b"<x>" + b" " * 5000 + b"</x>")  # unread, 2004, HTTP 413 (not read)
    call(app, report("tx-c", MessageID="<MessageID>msg-c</MessageID>"))
    found = scrape(app)
    assert value(found, "mm7soap_requests_total", operation="DeliveryReport", namespace=REL6, status_code="1000") == 2
    assert value(found, "mm7soap_requests_total", operation="DeliveryReport", namespace=REL6, status_code="4004") == 1
    assert value(found, "mm7soap_requests_total", operation="unread", namespace="unread", status_code="4004") == 1
    assert value(found, "mm7soap_requests_total", operation="unread", namespace="unread", status_code="2004") == 1
    responses = {
        status: value(found, "mm7soap_http_responses_total", route="mm7", status=status)
        for status in ["200", "500", "413"]
    }
    assert responses == {"200": 2, "500": 2, "413": 1}


def test_a_3000_with_the_database_locked_is_a_storage_failure_caused_by_the_lock(open_app, settings):
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        call(open_app, report("tx-a"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    found = scrape(open_app)
    assert value(found, "mm7soap_requests_total", operation="DeliveryReport", namespace=REL6, status_code="3000") == 1
    assert value(found, "mm7soap_storage_failures_total", cause="locked") == 1
    assert value(found, "mm7soap_storage_failures_total", cause="other") == 0
    assert value(found, "mm7soap_commit_duration_seconds_count") == 0  # a failed commit is not timed


def test_a_full_disk_is_a_storage_failure_of_its_own_cause(open_app):
    db = open_app.store.db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    big = report("tx-a", StatusText="<StatusText>" + "x" * 200_000 + "</StatusText>")
    call(open_app, big)
    assert value(scrape(open_app), "mm7soap_storage_failures_total", cause="disk_full") == 1


@pytest.mark.parametrize(
    ("details", "cause"),
    [
        ("not stored: database is locked", "locked"),
        ("not stored: database or disk is full", "disk_full"),
        ("not stored: attempt to write a readonly database", "read_only"),
        ("not stored: disk I/O error", "io_error"),
        ("not stored: database disk image is malformed", "corrupt"),
        ("not stored: file is not a database", "corrupt"),
        ("the database file /x/mm7soap.db was replaced or deleted during the commit", "file_replaced"),
        ("the database file /x/mm7soap.db is missing", "file_missing"),
        ("not stored: unable to open database file", "file_missing"),
        ("the delivery_reports row was neither stored nor found", "other"),
    ],
)
def test_storage_causes_are_named_from_the_store_errors_message(details, cause):
    assert metrics.storage_cause(errors.StoreError(details)) == cause


def test_other_routes_are_counted_by_route_and_status(open_app):
    call(open_app, method="GET", path="/health", content_type="")
    call(open_app, method="GET", path="/nowhere", content_type="")
    call(open_app, method="GET", path="/mm7", query="wsdl", content_type="")
    call(open_app, method="GET", path="/metrics", content_type="")
    found = scrape(open_app)
    assert value(found, "mm7soap_http_responses_total", route="health", status="200") == 1
    assert value(found, "mm7soap_http_responses_total", route="other", status="404") == 1
    assert value(found, "mm7soap_http_responses_total", route="wsdl", status="200") == 1
    assert value(found, "mm7soap_http_responses_total", route="metrics", status="200") == 1
    assert not any(name == "mm7soap_requests_total" for name, _ in found)  # none was an MM7 request


def test_a_group_commit_counts_the_writes_it_held(settings):
    """The first write holds the lock while three more queue: they are committed as one."""
    seen: list[tuple[int, float]] = []
    release = threading.Event()
    with Store(settings) as store:
        store.migrate()
        writes = GroupCommit(store.connections, 1000, lambda size, seconds: seen.append((size, seconds)))
        first = threading.Thread(target=writes.run, args=(lambda db: release.wait(5),))
        first.start()
        others = [threading.Thread(target=writes.run, args=(lambda db: None,)) for _ in range(3)]
        for thread in others:
            thread.start()
        deadline = time.monotonic() + 5
        while len(writes.pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        for thread in (first, *others):
            thread.join(5)
    assert [size for size, _ in seen] == [1, 3]
    assert all(seconds > 0 for _, seconds in seen)


def test_the_oldest_pending_event_age_is_read_at_scrape(open_app, settings):
    call(open_app, report("tx-a"))
    with closing(sqlite3.connect(settings.database, isolation_level=None)) as conn:  # committed long ago
        conn.execute("UPDATE outbox SET created_at = '2000-01-01T00:00:00.000000Z'")
    age = value(scrape(open_app), "mm7soap_outbox_oldest_pending_age_seconds")
    assert age > 25 * 365 * 24 * 3600
    with closing(sqlite3.connect(settings.database, isolation_level=None)) as conn:
        conn.execute("UPDATE outbox SET state = 'delivered'")
    found = scrape(open_app)
    assert value(found, "mm7soap_outbox_pending") == 0
    assert value(found, "mm7soap_outbox_oldest_pending_age_seconds") == 0


def test_an_unreadable_outbox_leaves_its_gauges_out_not_the_scrape(open_app, settings, caplog):
    collector = metrics.OutboxCollector(str(Path(settings.database).parent / "missing" / "x.db"))
    open_app.metrics.registry.register(collector)
    open_app.metrics.registry.unregister(open_app.metrics.outbox)
    with caplog.at_level("WARNING", logger="mm7soap.metrics"):
        found = scrape(open_app)
    assert not any(name.startswith("mm7soap_outbox") for name, _ in found)
    assert value(found, "mm7soap_storage_failures_total", cause="locked") == 0  # the rest is there
    assert "the outbox could not be read" in caplog.text


# --- The forwarder's deliveries -----------------------------------------------------------------


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(status: int = 200) -> Receiver:
        made.append(Receiver(answer(status)))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def forward_until_drained(app: Any, url: str, within: float = 10.0, **changes: Any) -> None:
    """The forwarder delivering `app`'s outbox, counting into `app`'s own registry."""
    settings = forwarding(app.settings, url, **changes)
    forwarder = Forwarder(settings, deliveries=metrics.DeliveryMetrics(app.metrics.registry))
    thread = threading.Thread(target=forwarder.run, kwargs={"until_drained": True})
    thread.start()
    thread.join(within)
    forwarder.stop()
    thread.join(10)
    forwarder.close()


def test_deliveries_are_counted_by_outcome(open_app, receivers):
    call(open_app, report("tx-a"))
    forward_until_drained(open_app, receivers(204).url)
    found = scrape(open_app)
    assert value(found, "mm7soap_deliveries_total", outcome="delivered") == 1
    assert value(found, "mm7soap_deliveries_total", outcome="failed_attempt") == 0
    assert value(found, "mm7soap_deliveries_total", outcome="given_up") == 0


def test_failed_attempts_then_the_one_given_up_are_counted_apart(open_app, receivers):
    call(open_app, report("tx-a"))
    forward_until_drained(open_app, receivers(503).url, webhook_max_age=0.4, webhook_timeout=0.2)
    found = scrape(open_app)
    assert value(found, "mm7soap_deliveries_total", outcome="delivered") == 0
    assert value(found, "mm7soap_deliveries_total", outcome="failed_attempt") >= 1
    assert value(found, "mm7soap_deliveries_total", outcome="given_up") == 1


def test_a_forwarder_on_its_own_counts_nothing(settings, monkeypatch):
    """No gunicorn beside it (no multiprocess directory): nothing would serve its counts."""
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    assert metrics.for_forwarder(settings) is None
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "/nonexistent")
    assert metrics.for_forwarder(replace(settings, metrics_access="off")) is None


# --- Who may scrape ----------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_off_is_404_and_nothing_is_counted(make_app):
    app = make_app(metrics_access="off")
    assert call(app, report("tx-a")).status == 200
    response = call(app, method="GET", path="/metrics", content_type="")
    assert response.status == 404
    assert app.metrics is None
    assert app.store.observe_commit is None  # not even the commits are timed


def test_mm7_takes_the_mm7_paths_credentials(make_app):
    app = make_app(auth_user="mmsc", auth_password="s3cret")
    refused = call(app, method="GET", path="/metrics", content_type="")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert refused.headers["Content-Type"].startswith("text/plain")
    assert call(app, method="GET", path="/metrics", content_type="", headers=basic("mmsc", "wrong")).status == 401
    assert scrape(app, **basic("mmsc", "s3cret"))


def test_mm7_takes_the_mm7_paths_allow_list(make_app):
    app = make_app(allow_ips=("10.0.0.0/8",))  # the test client is 192.0.2.10
    assert call(app, method="GET", path="/metrics", content_type="").status == 403


def test_metrics_allow_ips_replaces_the_allow_list_but_not_the_credentials(make_app):
    app = make_app(allow_ips=("10.0.0.0/8",), metrics_allow_ips=("192.0.2.0/24",))
    assert call(app, report("tx-a")).status == 403  # it may not post
    assert scrape(app)  # but it may scrape
    elsewhere = make_app(metrics_allow_ips=("10.0.0.0/8",))
    assert call(elsewhere, method="GET", path="/metrics", content_type="").status == 403
    with_credentials = make_app(metrics_allow_ips=("192.0.2.0/24",), auth_user="mmsc", auth_password="s3cret")
    assert call(with_credentials, method="GET", path="/metrics", content_type="").status == 401
    assert scrape(with_credentials, **basic("mmsc", "s3cret"))


def test_open_lets_anyone_scrape(make_app):
    app = make_app(metrics_access="open", auth_user="mmsc", auth_password="s3cret", allow_ips=("10.0.0.0/8",))
    assert scrape(app)


# --- The format ----------------------------------------------------------------------------------


def test_the_text_format_parses_and_openmetrics_is_offered(open_app):
    call(open_app, report("tx-a"))
    response = call(open_app, method="GET", path="/metrics", content_type="")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.body.decode())}
    assert families["mm7soap_requests"].type == "counter"
    assert families["mm7soap_request_duration_seconds"].type == "histogram"
    assert families["mm7soap_outbox_pending"].type == "gauge"
    assert not any(name.endswith("_created") for name in families)
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    openmetrics = call(open_app, method="GET", path="/metrics", content_type="", headers=accept)
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.body.endswith(b"# EOF\n")


# --- The dashboard -------------------------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "topk", "bottomk",
    "clamp_min", "clamp_max", "abs", "delta", "deriv", "absent", "time", "vector", "scalar", "le",
}  # fmt: skip


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers, once label matchers
    ({…}), ranges ([…]), groupings (by/without (…)), strings and functions are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()", text):
        name = match.group(0)
        if name not in PROMQL_WORDS and not re.fullmatch(r"\d[\w.]*", name):
            names.add(name)
    return names


def test_the_parser_finds_the_metric_names_of_an_expression():
    expression = 'histogram_quantile(0.99, sum by (le) (rate(mm7soap_x_bucket{route="a b"}[5m]))) / max(y_total)'
    assert metric_names(expression) == {"mm7soap_x_bucket", "y_total"}


def test_every_metric_of_the_dashboard_is_exported(open_app, settings, receivers):
    call(open_app, report("tx-a"))
    call(open_app, report("tx-b"))  # a resend
    call(open_app, report("tx-c", MessageID=""))  # a 4004
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        call(open_app, report("tx-d", MessageID="<MessageID>msg-2</MessageID>"))  # a 3000
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    forward_until_drained(open_app, receivers(204).url)
    exported = {name for name, _ in scrape(open_app)}
    expressions = dashboard_expressions()
    assert len(expressions) >= 10
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= exported, (expression, names - exported)


def test_the_dashboard_is_package_data():
    assert resources.files("mm7soap").joinpath("dashboards/grafana.json").is_file()
    # configparser, not setuptools: a Python 3.12 virtualenv has no setuptools.
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    package_data = config["options.package_data"]["mm7soap"].split()
    assert any(fnmatch("dashboards/grafana.json", pattern) for pattern in package_data)


# --- Files of exited processes -------------------------------------------------------------------


def write_counts(directory: Path, kind: str, pid: int, counts: dict[str, float]) -> None:
    """A file as prometheus_client's multiprocess mode writes it for process `pid`."""
    written = MmapedDict(str(directory / f"{kind}_{pid}.db"))
    for label, count in counts.items():
        key = mmap_key("mm7soap_requests", "mm7soap_requests_total", ["status_code"], [label], "MM7 requests")
        written.write_value(key, count, 0.0)
    written.close()


def totals(directory: Path) -> dict[tuple[str, str], float]:
    return {
        (sample.name, json.dumps(sample.labels, sort_keys=True)): sample.value
        for family in MultiProcessCollector(None, path=str(directory)).collect()
        for sample in family.samples
    }


def test_an_exited_process_counts_are_kept_in_one_file(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    write_counts(tmp_path, "counter", 101, {"1000": 5, "3000": 1})
    write_counts(tmp_path, "counter", 102, {"1000": 7})
    write_counts(tmp_path, "counter", 103, {"1000": 11})
    before = totals(tmp_path)
    metrics.process_exited(101)
    metrics.process_exited(102)
    assert totals(tmp_path) == before
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["counter_103.db", "counter_exited.db"]
    metrics.process_exited(103)
    assert totals(tmp_path) == before
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["counter_exited.db"]
    metrics.process_exited(104)  # no file of its own: nothing changes
    assert totals(tmp_path) == before


def test_the_multiprocess_directory_is_fresh_private_and_removed(settings, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "/somebody/elses")
    directory = metrics.start_multiprocess(settings)
    assert directory is not None and directory != "/somebody/elses"
    assert Path(directory).is_dir() and (Path(directory).stat().st_mode & 0o077) == 0
    assert metrics.multiprocess_dir() == directory
    metrics.stop_multiprocess()
    assert not Path(directory).exists()
    assert metrics.multiprocess_dir() is None
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "/somebody/elses")
    assert metrics.start_multiprocess(replace(settings, metrics_access="off")) is None
    assert metrics.multiprocess_dir() is None


FORK_WHILE_FOLDING = """
import fcntl, os, sys, time
from mm7soap import metrics

directory = sys.argv[1]
started, running = os.pipe()
with metrics.scrape_lock(directory, exclusive=True):
    child = os.fork()  # as gunicorn forks a worker while another thread of the master folds
    if child == 0:
        os.write(running, b"1")  # once the child runs (its fork hooks have run)
        time.sleep(3)
        os._exit(0)
os.read(started, 1)
fd = os.open(os.path.join(directory, metrics.SCRAPE_LOCK), os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a scrape, while the child lives
    print("free")
except BlockingIOError:
    print("held by the child")
os.kill(child, 9)
os.waitpid(child, 0)
"""


def test_a_process_forked_while_the_lock_is_held_does_not_keep_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_FOLDING, str(tmp_path)], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.stdout.strip() == "free", done.stderr


COUNT_ACROSS_A_FORK = """
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client.mmap_dict import MmapedDict
from mm7soap import metrics
from mm7soap.requestlog import Answered

counted = metrics.Metrics(":memory:")
answered = Answered("DeliveryReport", "REL-6-MM7-1-4", "tx", "m", None, None, 1000, 200, 0.002)
counted.answered(answered)
child = os.fork()  # as gunicorn forks a worker
if child == 0:
    counted.answered(answered)
    counted.answered(answered)
    os._exit(0)
os.waitpid(child, 0)
counted.answered(answered)
metrics.process_id = 4242  # what kept_pid says is the pid is where the counts go
counted.answered(answered)
found = {}
for name in sorted(os.listdir(sys.argv[1])):
    for key, value, _, _ in MmapedDict.read_all_values_from_file(os.path.join(sys.argv[1], name)):
        if name.startswith("counter_") and '"mm7soap_requests_total"' in key:
            pid = name[len("counter_"):-len(".db")]
            found[{str(os.getpid()): "parent", str(child): "child"}.get(pid, pid)] = value
print(json.dumps(found))
"""


def test_counts_in_files_go_by_the_pid_kept_and_renewed_at_fork(tmp_path):
    """prometheus_client's values in files ask metrics.kept_pid, not os.getpid() at every
    increment: a forked child, whose kept pid is renewed, counts in its own file."""
    done = subprocess.run(
        [sys.executable, "-c", COUNT_ACROSS_A_FORK, str(tmp_path)], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert json.loads(done.stdout) == {"parent": 2, "child": 2, "4242": 1}, done.stderr


METRICS_MADE_BEFORE = """
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter, values
from prometheus_client.mmap_dict import MmapedDict
from mm7soap import metrics
from mm7soap.requestlog import Answered

theirs = Counter("theirs", "an embedding application's", ["kind"])
theirs.labels("a").inc()
counted = metrics.Metrics(":memory:")
counted.answered(Answered("DeliveryReport", "REL-6-MM7-1-4", "tx", "m", None, None, 1000, 200, 0.002))
theirs.labels("b").inc(2)  # a key added to the file after ours
path = os.path.join(sys.argv[1], f"counter_{os.getpid()}.db")
found = {}
for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
    found[json.loads(key)[0]] = found.get(json.loads(key)[0], 0) + value
print(json.dumps([getattr(values.ValueClass, "by_kept_pid", False), found]))
"""


def test_metrics_made_in_files_before_ours_keep_prometheus_clients_own_values(tmp_path):
    """Something made metrics in files in this process before mm7soap: its files are open, so
    mm7soap's metrics use prometheus_client's own values too, and no count overwrites another."""
    done = subprocess.run(
        [sys.executable, "-c", METRICS_MADE_BEFORE, str(tmp_path)], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    kept, found = json.loads(done.stdout)
    assert kept is False, done.stderr
    assert (found["theirs"], found["mm7soap_requests"]) == (3.0, 1.0)

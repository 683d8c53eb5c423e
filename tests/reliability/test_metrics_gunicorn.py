"""/metrics under gunicorn (issue 19): the counts of every worker and of the forwarder add up,
and a process SIGKILLed and replaced takes none of its counts with it.

The service runs with its production config, two workers and a webhook to a receiver run
here; N reports are posted on fresh connections, so that both workers take some; /metrics
must count N 1000s and N deliveries, whichever worker answers the scrape.  Then one worker and
the forwarder are SIGKILLed; once gunicorn and the master have replaced them, the counts are
still N (their files were folded into the `exited` ones, and theirs are gone), and after M
more reports N+M.  The request log, JSON here, has one line per report, from both workers.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.service import Client, Service, children, delivery_report

N, M = 60, 40  # N at least: more are sent until both workers have taken some
SENDERS = 6
SECRET = "whsec_" + base64.b64encode(b"mm7soap metrics reliability key!").decode("ascii")
WAIT = 20.0  # seconds any one step may take on a busy 2-core machine


class Hooks(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks"
    finally:
        server.shutdown()
        server.server_close()


def post_all(port: int, transaction_ids: list[str]) -> None:
    """Each report on a connection of its own, from SENDERS threads at once: the kernel hands
    new connections to either worker."""
    pending = list(transaction_ids)
    lock = threading.Lock()
    failures: list[str] = []

    def send() -> None:
        while True:
            with lock:
                if not pending:
                    return
                transaction_id = pending.pop()
            client = Client(port)
            try:
                answer = client.post(delivery_report(transaction_id))
            finally:
                client.close()
            if not answer.acknowledged:
                failures.append(f"{transaction_id}: {answer.http_status} {answer.status_code}")

    threads = [threading.Thread(target=send) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not failures and not pending, failures


def post_until_both_workers_took_some(service: Service) -> int:
    """N reports, then more, N at a time, until each worker has answered some (the kernel
    hands connections to whichever worker accepts first); how many were sent."""
    sent = 0
    while sent < 10 * N:
        post_all(service.port, [f"m-{index:03d}" for index in range(sent, sent + N)])
        sent += N
        if len({entry["pid"] for entry in request_lines(service)}) == 2:
            return sent
    raise AssertionError(f"one worker took all {sent} reports")


def scrape(service: Service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = Client(service.port).get("/metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(value for (sample, have), value in found.items() if sample == name and set(labels.items()) <= have)


def acknowledged(service: Service) -> float:
    return total(scrape(service), "mm7soap_requests_total", status_code="1000")


def delivered(service: Service) -> float:
    return total(scrape(service), "mm7soap_deliveries_total", outcome="delivered")


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s"
        time.sleep(0.05)
    return found


def is_forwarder(pid: int) -> bool:
    try:
        return b"mm7soap.forwarder" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def workers(service: Service) -> list[int]:
    return [pid for pid in children(service.master) if not is_forwarder(pid)]


def forwarders(service: Service) -> list[int]:
    return [pid for pid in children(service.master) if is_forwarder(pid)]


def metrics_directory(service: Service) -> Path:
    """The master's directory, as the forwarder it started got it (the master's own
    /proc/…/environ is the environment it was started with, not what it set since)."""
    variables = Path(f"/proc/{forwarders(service)[0]}/environ").read_bytes().split(b"\0")
    found = next(v for v in variables if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(found.split(b"=", 1)[1].decode())


def request_lines(service: Service) -> list[dict[str, Any]]:
    assert service.log_path is not None
    lines = [line for line in service.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [entry for entry in map(json.loads, lines) if entry.get("logger") == "mm7soap.requests"]


def test_counts_add_up_across_workers_and_survive_a_killed_worker_and_forwarder(tmp_path):
    env = {"MM7SOAP_WORKERS": "2", "MM7SOAP_WEBHOOK_SECRET": SECRET, "MM7SOAP_LOG_FORMAT": "json"}
    with receiver() as url:
        service = Service(tmp_path / "mm7soap.db", {**env, "MM7SOAP_WEBHOOK_URL": url})
        service.start()
        try:
            eventually(lambda: len(workers(service)) == 2 and forwarders(service), "two workers and a forwarder")
            directory = metrics_directory(service)
            run(service, directory)
        finally:
            service.stop()
    assert not directory.exists(), "the master left its metrics directory behind"


def run(service: Service, directory: Path) -> None:
    n = post_until_both_workers_took_some(service)
    # A request is counted and logged once its answer is sent (mm7soap.transport.AnswerBody):
    # a moment after the client has it.
    eventually(lambda: acknowledged(service) == n, f"{n} requests counted")
    eventually(lambda: delivered(service) == n, f"{n} deliveries counted")
    eventually(lambda: len(request_lines(service)) == n, f"{n} request lines")
    first = request_lines(service)
    assert {entry["status_code"] for entry in first} == {1000}

    [killed_forwarder] = forwarders(service)
    killed_worker = first[0]["pid"]
    os.kill(killed_worker, signal.SIGKILL)
    os.kill(killed_forwarder, signal.SIGKILL)
    eventually(lambda: len(workers(service)) == 2 and killed_worker not in workers(service), "a new worker")
    eventually(lambda: forwarders(service) and killed_forwarder not in forwarders(service), "a new forwarder")
    found = scrape(service)
    assert total(found, "mm7soap_requests_total", status_code="1000") == n
    assert total(found, "mm7soap_deliveries_total", outcome="delivered") == n
    assert total(found, "mm7soap_request_duration_seconds_count") == n
    files = {path.name for path in directory.glob("*.db")}
    assert f"counter_{killed_worker}.db" not in files and f"counter_{killed_forwarder}.db" not in files
    assert {"counter_exited.db", "histogram_exited.db"} <= files

    post_all(service.port, [f"m-{index:03d}" for index in range(n, n + M)])
    eventually(lambda: delivered(service) == n + M, f"{n + M} deliveries counted")
    eventually(lambda: acknowledged(service) == n + M, f"{n + M} requests counted")
    eventually(lambda: len(request_lines(service)) == n + M, f"{n + M} request lines")
    found = scrape(service)
    assert total(found, "mm7soap_requests_total", status_code="1000") == n + M
    assert total(found, "mm7soap_http_responses_total", route="mm7", status="200") == n + M
    assert total(found, "mm7soap_commit_batch_size_sum") >= n + M  # every report, in however many commits
    assert total(found, "mm7soap_outbox_pending") == 0
    assert len(request_lines(service)) == n + M

"""The two targets, and gunicorn serving one of them: start, probe, stop, workers' memory."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mm7soap.settings import Settings

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
REFERENCE_CONF = BENCHMARKS / "reference.conf.py"
START_TIMEOUT = 30.0  # seconds for a server to answer its first request
STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL


# The readiness probe of the reference: one report, as post_report.lua sends it.
PROBE_ENVELOPE = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" \
xmlns="http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4">
  <soap-env:Header><TransactionID soap-env:mustUnderstand="1">probe-{n}</TransactionID></soap-env:Header>
  <soap-env:Body><DeliveryReportReq><MM7Version>6.8.0</MM7Version><MessageID>probe-{n}</MessageID>
    <Recipient><Number>15551230001</Number></Recipient><Sender><Number>24680</Number></Sender>
    <Date>2026-11-27T09:15:02.417Z</Date><MMStatus>Retrieved</MMStatus><StatusText>Success</StatusText>
  </DeliveryReportReq></soap-env:Body>
</soap-env:Envelope>"""
PROBE_HEADERS = {"Content-Type": 'multipart/related; type="text/xml";', "X-Mblox-Carrier-Id": "0001890"}


class BenchmarkError(Exception):
    """A target could not be measured at all (did not start, wrk failed)."""


# --- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    database_file: str
    app: str  # gunicorn's APP_MODULE
    config: Path
    database_variable: str  # the environment variable naming its database
    health_path: str | None  # a GET answering 200 when ready; None: POST one report instead
    webhook: bool = False  # forwards its events to a receiver (receiver.py) started beside it
    # Variables set last, over the common ones (run.py --observability: the log level, metrics).
    settings: tuple[tuple[str, str], ...] = ()
    # A PostgreSQL cluster's URL (run.py --database): each start gets a database of its own made
    # in it (databases.py), rather than a SQLite file in its directory.
    cluster: str | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", str(self.config), self.app]

    def environment(
        self, port: int, workdir: Path, extra: Mapping[str, str] | None = None, database: str | None = None
    ) -> dict[str, str]:
        env = dict(os.environ)
        if not self.webhook:
            env.pop("MM7SOAP_WEBHOOK_URL", None)  # whatever the caller's environment says
        env.update(extra or {})
        env.update(
            MM7SOAP_HOST="127.0.0.1",  # loopback only, whatever the caller's environment says
            MM7SOAP_PORT=str(port),
            MM7SOAP_LOG_LEVEL="warning",
            # gunicorn ≥ 25 opens a control socket, by default in $HOME: keep each run's apart.
            XDG_RUNTIME_DIR=str(workdir),
        )
        env.update(self.settings)
        env[self.database_variable] = database or str(workdir / self.database_file)
        return env


MM7SOAP = Target(
    "mm7soap", "mm7soap.db", "mm7soap.wsgi:application", REPO / "gunicorn.conf.py", "MM7SOAP_DATABASE", "/health"
)
# mm7soap with a webhook URL set: gunicorn's master runs the forwarder beside the workers.
MM7SOAP_WEBHOOK = Target(
    "mm7soap+webhook",
    "mm7soap.db",
    "mm7soap.wsgi:application",
    REPO / "gunicorn.conf.py",
    "MM7SOAP_DATABASE",
    "/health",
    webhook=True,
)
# run.py --database: the same service on a fresh PostgreSQL database of that cluster.
MM7SOAP_POSTGRESQL = replace(MM7SOAP, name="mm7soap-postgresql", database_file="")
REFERENCE = Target("reference", "reference.db", "reference_app:application", REFERENCE_CONF, "REFERENCE_DATABASE", None)
TARGETS = (MM7SOAP, REFERENCE)
WEBHOOK_TARGETS = (MM7SOAP, MM7SOAP_WEBHOOK, REFERENCE)  # run.py --webhook

# run.py --observability: mm7soap as deployed (a request line per report at INFO, /metrics
# counting), against the same with nothing logged per request and nothing counted.
LOGGING = (("MM7SOAP_LOG_LEVEL", "info"),)
MM7SOAP_QUIET = replace(
    MM7SOAP, name="mm7soap-quiet", settings=(("MM7SOAP_METRICS_ACCESS", "off"), ("MM7SOAP_LOG_LEVEL", "warning"))
)


def observed(targets: tuple[Target, ...]) -> tuple[Target, ...]:
    """`targets` with mm7soap-quiet after mm7soap, and mm7soap's targets logging at INFO, as
    deployed (every target logs at WARNING otherwise, which writes no request line)."""
    done: list[Target] = []
    for target in targets:
        done.append(replace(target, settings=LOGGING) if target.app == MM7SOAP.app else target)
        if target == MM7SOAP:
            done.append(MM7SOAP_QUIET)
    return tuple(done)


# A fixed Standard Webhooks secret: the receiver checks no signature, but the forwarder signs.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"mm7soap-benchmark-secret-32bytes").decode()


def webhook_environment(url: str, concurrency: int | None = None) -> dict[str, str]:
    """The variables that turn the forwarder on, delivering to `url`."""
    env = {"MM7SOAP_WEBHOOK_URL": url, "MM7SOAP_WEBHOOK_SECRET": WEBHOOK_SECRET}
    if concurrency is not None:
        env["MM7SOAP_WEBHOOK_CONCURRENCY"] = str(concurrency)
    return env


def endpoint_path() -> str:
    """Where the MMSC posts (MM7SOAP_PATH); the reference answers on any path."""
    return Settings.from_env().path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(target: Target, base_url: str, attempt: int) -> bool:
    """Whether the server answers: mm7soap's /health (a real write), or one report to the reference."""
    if target.health_path is not None:
        request = urllib.request.Request(base_url + target.health_path)
    else:
        body = PROBE_ENVELOPE.format(n=attempt).encode()
        request = urllib.request.Request(base_url + endpoint_path(), body, PROBE_HEADERS, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- one server ---------------------------------------------------------------------------


@dataclass
class Server:
    target: Target
    workdir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str | None = None  # its PostgreSQL database; None: a SQLite file in `workdir`

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path | str:
        return self.database_url or self.workdir / self.target.database_file

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_server(
    target: Target, workdir: Path, extra_env: Mapping[str, str] | None = None, database: str | None = None
) -> Server:
    """gunicorn in its own session (so it can be killed whole), logging to a file: the
    production config writes an access-log line per request, which a pipe would block on.
    `extra_env`: variables set for it besides the target's own (a webhook URL); `database`: a
    PostgreSQL URL instead of the target's SQLite file."""
    port = free_port()
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            target.command(),
            cwd=REPO,
            env=target.environment(port, workdir, extra_env, database),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(target, workdir, port, process, log_path, database)
    try:
        wait_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    attempt = 0
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchmarkError(f"{server.target.name} exited at start ({server.log_path}):\n{server.log_tail()}")
        attempt += 1
        if probe(server.target, server.base_url, attempt):
            return
        time.sleep(0.2)
    raise BenchmarkError(
        f"{server.target.name} did not answer within {START_TIMEOUT:.0f} s ({server.log_path}):\n{server.log_tail()}"
    )


def stop_server(server: Server) -> None:
    """SIGTERM to the master (a graceful stop); SIGKILL to its whole process group if it
    has not exited in time (the group is still ours then: the master is not yet reaped)."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  {server.target.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it", flush=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- memory -------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The children of `pid`: gunicorn's workers are the master's."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name, which is in parentheses and may contain anything.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the most resident memory the process ever had, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def booted_workers(server: Server) -> list[int]:
    """The worker pids, once gunicorn has forked them all: one answering is not all booted."""
    wanted = Settings.from_env().workers
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        workers = child_pids(server.process.pid)
        if len(workers) >= wanted or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time a process has used so far (all its threads), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from the state, field 3 of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forwarder_pid(server: Server, timeout: float = START_TIMEOUT) -> int | None:
    """The forwarder gunicorn's master started beside its workers (`python -m mm7soap.forwarder`)."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in child_pids(server.process.pid):
            try:
                if b"mm7soap.forwarder" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def worker_peaks(server: Server) -> dict[int, int]:
    peaks = {pid: peak_rss_kib(pid) for pid in child_pids(server.process.pid)}
    return {pid: kib for pid, kib in peaks.items() if kib is not None}

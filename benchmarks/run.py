"""Benchmark mm7soap against the reference app: `python benchmarks/run.py`.

Both are served by gunicorn with mm7soap's production settings and loaded in turn (A B A B …)
by wrk, posting Sinch delivery reports over loopback keep-alive connections.  Only the ratio
within one run means much: the machine is shared, so absolute figures drift between runs.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gunicorn
import lxml.etree

from mm7soap.settings import Settings

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
LUA_SCRIPT = BENCHMARKS / "post_report.lua"
REFERENCE_CONF = BENCHMARKS / "reference.conf.py"
TABLE = "delivery_reports"
START_TIMEOUT = 30.0  # seconds for a server to answer its first request
STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL
SETTLE_TIMEOUT = 10.0  # seconds for requests abandoned by wrk to finish on the server
WRK_SLACK = 30.0  # seconds wrk may overrun its -d before it is killed

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

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", str(self.config), self.app]

    def environment(self, port: int, workdir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MM7SOAP_HOST="127.0.0.1",  # loopback only, whatever the caller's environment says
            MM7SOAP_PORT=str(port),
            MM7SOAP_LOG_LEVEL="warning",
            # gunicorn ≥ 25 opens a control socket, by default in $HOME: keep each run's apart.
            XDG_RUNTIME_DIR=str(workdir),
        )
        env[self.database_variable] = str(workdir / self.database_file)
        return env


MM7SOAP = Target(
    "mm7soap", "mm7soap.db", "mm7soap.wsgi:application", REPO / "gunicorn.conf.py", "MM7SOAP_DATABASE", "/health"
)
REFERENCE = Target("reference", "reference.db", "reference_app:application", REFERENCE_CONF, "REFERENCE_DATABASE", None)
TARGETS = (MM7SOAP, REFERENCE)


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.workdir / self.target.database_file

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_server(target: Target, workdir: Path) -> Server:
    """gunicorn in its own session (so it can be killed whole), logging to a file: the
    production config writes an access-log line per request, which a pipe would block on."""
    port = free_port()
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            target.command(),
            cwd=REPO,
            env=target.environment(port, workdir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(target, workdir, port, process, log_path)
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


def worker_peaks(server: Server) -> dict[int, int]:
    peaks = {pid: peak_rss_kib(pid) for pid in child_pids(server.process.pid)}
    return {pid: kib for pid, kib in peaks.items() if kib is not None}


# --- the database -------------------------------------------------------------------------


def read_only(database: Path) -> sqlite3.Connection:
    # Autocommit, so that BEGIN below is ours: one read transaction is one snapshot of a WAL database.
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0, isolation_level=None)


def snapshot(database: Path, transaction_ids: Sequence[str] = ()) -> tuple[int, int]:
    """(rows, how many of `transaction_ids` have a row), both read from one snapshot, so
    that a straggler committed in between cannot count in one and not the other."""
    conn = read_only(database)
    try:
        conn.execute("BEGIN")
        rows = int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
        found = 0
        for start in range(0, len(transaction_ids), 500):  # under SQLite's bound-variable limit
            chunk = list(transaction_ids[start : start + 500])
            query = f"SELECT count(*) FROM {TABLE} WHERE transaction_id IN ({', '.join('?' * len(chunk))})"
            found += int(conn.execute(query, chunk).fetchone()[0])
        conn.execute("COMMIT")
        return rows, found
    finally:
        conn.close()


# Columns that differ between any two reports of a run, whoever stores them.
PER_REQUEST_COLUMNS = {"id", "received_at", "transaction_id", "message_id", "raw_envelope"}


def sample_row(database: Path) -> dict[str, str]:
    """The last report's non-NULL columns but the per-request ones: what both targets should agree on."""
    conn = read_only(database)
    try:
        cursor = conn.execute(f"SELECT * FROM {TABLE} ORDER BY id DESC LIMIT 1")
        names = [column[0] for column in cursor.description]
        values = cursor.fetchone() or ()
    finally:
        conn.close()
    return {n: str(v) for n, v in zip(names, values, strict=False) if v is not None and n not in PER_REQUEST_COLUMNS}


def settle(database: Path) -> None:
    """Wait until the row count stops growing: requests wrk abandoned at its deadline may
    still be committing, and should not land in the next measured run."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = snapshot(database)[0]
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = snapshot(database)[0]
        if now == last:
            return
        last = now


# --- wrk ----------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, seconds: int, threads: int, timeout: int, tag: str) -> dict[str, Any]:
    """One wrk run; the RESULT line post_report.lua prints, as a dict."""
    command = [
        "wrk",
        f"-t{min(threads, connections)}",  # wrk wants at least one connection per thread
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        tag,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout + WRK_SLACK)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"wrk did not finish: {' '.join(command)}") from exc
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise BenchmarkError(f"wrk printed no RESULT (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    """One measured wrk run against one target at one connection count."""

    round: int
    target: str
    connections: int
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    ok_1000: int
    not_1000: int
    errors: int
    rows_added: int
    # Requests wrk abandoned in flight at its deadline, and how many of them were stored anyway.
    abandoned: int
    abandoned_stored: int
    wrk: dict[str, Any]

    @property
    def rows_answered(self) -> int:
        """Rows of the requests that were answered: those wrk abandoned are not compared."""
        return self.rows_added - self.abandoned_stored

    def problems(self) -> list[str]:
        found = []
        where = f"round {self.round} {self.target} c={self.connections}"
        if self.not_1000:
            found.append(f"{where}: {self.not_1000} answers other than 1000")
        if self.errors:
            found.append(f"{where}: wrk errors {self.wrk['errors']}")
        if self.rows_answered != self.ok_1000:
            found.append(f"{where}: {self.rows_answered} rows stored but {self.ok_1000} answers 1000 (MISMATCH)")
        return found


@dataclass
class TargetRun:
    """One target's turn in one round: a server started, warmed up, measured, stopped."""

    round: int
    target: str
    runs: list[Run]
    peak_rss_kib: dict[int, int]  # worker pid → VmHWM, read just before the server stopped
    workers_at_start: list[int]
    workdir: str
    sample: dict[str, str]  # the last row stored, see sample_row

    def problems(self) -> list[str]:
        found = [problem for run in self.runs for problem in run.problems()]
        if sorted(self.peak_rss_kib) != self.workers_at_start:
            # gunicorn replaced a worker (its timeout, or a crash): that is a failure, and
            # the replaced worker's peak memory is lost.
            found.append(
                f"round {self.round} {self.target}: workers {self.workers_at_start} became {sorted(self.peak_rss_kib)}"
            )
        return found


def measure(server: Server, connections: int, args: argparse.Namespace, round_number: int) -> Run:
    tag = f"{server.target.name}-r{round_number}-c{connections}"
    settle(server.database)
    before = snapshot(server.database)[0]
    result = run_wrk(server.base_url + endpoint_path(), connections, args.duration, args.threads, args.timeout, tag)
    settle(server.database)
    # Includes the request wrk builds only to check the script and never sends: it has no row.
    abandoned = [str(tid) for tid in result.pop("unanswered")]
    after, abandoned_stored = snapshot(server.database, abandoned)
    return Run(
        round=round_number,
        target=server.target.name,
        connections=connections,
        requests_per_sec=float(result["requests_per_sec"]),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        ok_1000=int(result["ok_1000"]),
        not_1000=int(result["not_1000"]),
        errors=sum(int(n) for n in result["errors"].values()),
        rows_added=after - before,
        abandoned=len(abandoned),
        abandoned_stored=abandoned_stored,
        wrk=result,
    )


def run_target(target: Target, round_number: int, args: argparse.Namespace) -> TargetRun:
    """Start `target` on a fresh database, warm it up, measure each connection count, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mm7soap-bench-{target.name}-"))
    server = start_server(target, workdir)
    try:
        workers_at_start = booted_workers(server)
        if args.warmup > 0:
            url = server.base_url + endpoint_path()
            run_wrk(url, max(args.connections), args.warmup, args.threads, args.timeout, f"warmup-r{round_number}")
        runs = [measure(server, connections, args, round_number) for connections in args.connections]
        peaks = worker_peaks(server)
    finally:
        stop_server(server)
    sample = sample_row(server.database)
    done = TargetRun(round_number, target.name, runs, peaks, workers_at_start, str(workdir), sample)
    if done.problems():
        print(f"  {target.name}: kept {workdir} (database, server.log) for inspection", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return done


def progress_line(rounds: int, done: TargetRun) -> str:
    parts = [f"c={r.connections}: {r.requests_per_sec:,.0f} req/s, p99 {r.p99_ms:.1f} ms" for r in done.runs]
    status = "ok" if not done.problems() else "PROBLEMS"
    return f"round {done.round}/{rounds}  {done.target:<9}  " + " | ".join(parts) + f"  [{status}]"


# --- reporting ----------------------------------------------------------------------------


@dataclass
class Line:
    """One row of the table: a target at one connection count, over all rounds."""

    target: str
    connections: int
    rates: list[float]
    p50_ms: float  # medians over rounds
    p99_ms: float
    not_1000: int  # sums over rounds
    errors: int
    rows: int
    answered_1000: int
    peak_rss_mib: float  # the largest worker peak in any round

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)


def summarise(done: Sequence[TargetRun], connections: Sequence[int]) -> list[Line]:
    lines = []
    for target in TARGETS:
        turns = [turn for turn in done if turn.target == target.name]
        for count in connections:
            runs = [run for turn in turns for run in turn.runs if run.connections == count]
            if not runs:
                continue
            peaks = [kib for turn in turns for kib in turn.peak_rss_kib.values()]
            lines.append(
                Line(
                    target=target.name,
                    connections=count,
                    rates=[run.requests_per_sec for run in runs],
                    p50_ms=statistics.median(run.p50_ms for run in runs),
                    p99_ms=statistics.median(run.p99_ms for run in runs),
                    not_1000=sum(run.not_1000 for run in runs),
                    errors=sum(run.errors for run in runs),
                    rows=sum(run.rows_answered for run in runs),
                    answered_1000=sum(run.ok_1000 for run in runs),
                    peak_rss_mib=max(peaks, default=0) / 1024,
                )
            )
    return lines


HEADINGS = ("target", "conns", "req/s median (min–max)", "p50 ms", "p99 ms", "non-1000", "errors")
HEADINGS_END = ("rows stored / 1000s answered", "peak RSS/worker MiB")


def table(lines: Sequence[Line]) -> list[str]:
    rows = [(*HEADINGS, *HEADINGS_END)]
    for line in lines:
        stored = f"{line.rows} / {line.answered_1000}" + ("" if line.rows == line.answered_1000 else " MISMATCH")
        rows.append(
            (
                line.target,
                str(line.connections),
                f"{line.median_rate:,.0f} ({min(line.rates):,.0f}–{max(line.rates):,.0f})",
                f"{line.p50_ms:.1f}",
                f"{line.p99_ms:.1f}",
                str(line.not_1000),
                str(line.errors),
                stored,
                f"{line.peak_rss_mib:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(aligned(i, cell, widths[i]) for i, cell in enumerate(row)) for row in rows]


def aligned(column: int, cell: str, width: int) -> str:
    """Names left-aligned, figures right-aligned, so that digits line up."""
    return cell.ljust(width) if column == 0 else cell.rjust(width)


def ratios(lines: Sequence[Line], connections: Sequence[int]) -> list[str]:
    out = []
    for count in connections:
        by_target = {line.target: line.median_rate for line in lines if line.connections == count}
        if by_target.get(MM7SOAP.name) and by_target.get(REFERENCE.name):
            ratio = by_target[MM7SOAP.name] / by_target[REFERENCE.name]
            out.append(f"mm7soap / reference at {count} connections: {ratio:.2f} (median req/s)")
    return out


def row_comparison(done: Sequence[TargetRun]) -> list[str]:
    """Whether the reference stores what mm7soap stores: the yardstick must do the same job."""
    samples = {turn.target: turn.sample for turn in reversed(done)}
    ours, reference = samples.get(MM7SOAP.name), samples.get(REFERENCE.name)
    if not ours or not reference:
        return []
    alike = [column for column, value in ours.items() if reference.get(column) == value]
    text = f"stored rows: {len(alike)} columns alike"
    differ = [column for column in ours if column in reference and reference[column] != ours[column]]
    if differ:
        text += f"; different: {', '.join(differ)}"
    for name, sample, other in ((MM7SOAP.name, ours, reference), (REFERENCE.name, reference, ours)):
        only = [column for column in sample if column not in other]
        if only:
            text += f"; only {name} fills {', '.join(only)}"
    return [text]


def command_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`: fsync on tmpfs costs nothing."""
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        mount, fstype = line.split()[1:3]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def machine() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "wrk": command_version(["wrk", "--version"]).split(" Copyright")[0],
        "lxml": ".".join(map(str, lxml.etree.LXML_VERSION)),
        "sqlite": sqlite3.sqlite_version,
        "mm7soap": command_version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "databases": f"{tempfile.gettempdir()} ({filesystem(Path(tempfile.gettempdir()))})",
    }


# --- the command --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mm7soap vs a plain lxml+sqlite3 reference, under gunicorn and wrk.")
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load after start (default 2)")
    parser.add_argument("--connections", type=connection_counts, default=[8, 32], help="default 8,32")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    # Whole seconds: wrk reads no fractions.  Sinch gives up on a request after 10 s: an
    # answer later than that is as good as none.
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds (default 10)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results", help="default benchmarks/results/")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.threads < 1:
        parser.error("rounds and threads must be ≥ 1, duration > 0, warmup ≥ 0")
    return args


def connection_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give positive connection counts, e.g. 8,32")
    return counts


def time_bounds(args: argparse.Namespace) -> tuple[float, float]:
    """Seconds the whole run should take, and the most it can take before something gives up."""
    turns = args.rounds * len(TARGETS)
    wrk_runs = len(args.connections)
    expected = turns * (4 + args.warmup + wrk_runs * (args.duration + 1))
    per_wrk = args.timeout + WRK_SLACK + 2 * SETTLE_TIMEOUT
    most = turns * (START_TIMEOUT + STOP_TIMEOUT + args.warmup + per_wrk + wrk_runs * (args.duration + per_wrk))
    return expected, most


def header(args: argparse.Namespace) -> list[str]:
    expected, most = time_bounds(args)
    info = machine()
    return [
        f"mm7soap benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        f"machine: {info['cpus']} CPUs, {info['platform']}; databases in {info['databases']}",
        f"python {info['python']}, gunicorn {info['gunicorn']}, {info['wrk']}, lxml {info['lxml']},"
        f" sqlite {info['sqlite']}, mm7soap {info['mm7soap']}",
        f"rounds: {args.rounds} (mm7soap then reference); {args.warmup:g} s warm-up, {args.duration:g} s per run at"
        f" {','.join(map(str, args.connections))} connections, {args.threads} wrk threads",
        f"expected duration {expected / 60:.1f} min (bounded by {most / 60:.0f} min)",
    ]


def run_all(args: argparse.Namespace) -> tuple[list[TargetRun], list[str]]:
    """Every round, A then B; stops at the first target that cannot be measured."""
    done: list[TargetRun] = []
    for round_number in range(1, args.rounds + 1):
        for target in TARGETS:
            try:
                turn = run_target(target, round_number, args)
            except BenchmarkError as exc:
                return done, [f"round {round_number} {target.name}: {exc}"]
            done.append(turn)
            print(progress_line(args.rounds, turn), flush=True)
    return done, []


def report(args: argparse.Namespace, head: list[str], done: list[TargetRun], aborted: list[str]) -> list[str]:
    lines = summarise(done, args.connections)
    problems = [problem for turn in done for problem in turn.problems()] + aborted
    text = [*head, "", *table(lines), "", *ratios(lines, args.connections), *row_comparison(done)]
    text += ["", "problems:", *(f"  {p}" for p in problems)] if problems else ["", "no problems"]
    return text


def write_results(args: argparse.Namespace, text: list[str], done: list[TargetRun], aborted: list[str]) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"benchmark-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".txt").write_text("\n".join(text) + "\n")
    raw = {
        "machine": machine(),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "turns": [asdict(turn) for turn in done],
        "aborted": aborted,
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    return stem


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    head = header(args)
    print("\n".join(head), flush=True)
    done, aborted = run_all(args)
    text = report(args, head, done, aborted)
    print("\n" + "\n".join(text[len(head) + 1 :]))
    stem = write_results(args, text, done, aborted)
    print(f"\nwritten to {stem}.txt and {stem}.json")
    if aborted:
        return 2
    return 1 if any(turn.problems() for turn in done) else 0


if __name__ == "__main__":
    sys.exit(main())

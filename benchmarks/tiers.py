"""What one report costs each tier, to tell how mm7soap scales out on PostgreSQL:
`python benchmarks/tiers.py --database postgresql://…`.

A 2-core machine cannot show several instances growing; it can measure what each tier spends
per report, which is what the growth is made of (see benchmarks/README.md, "Several instances
on PostgreSQL"):

- **service**: mm7soap served by gunicorn with its production settings, on SQLite and then on a
  fresh PostgreSQL database, each loaded by wrk as fast as it answers: the CPU seconds (from
  /proc) of mm7soap's master and workers, of the PostgreSQL backends serving its database, and of
  the cluster's own processes (WAL writer, checkpointer, …), over the reports acknowledged.
- **postgresql**: PostgreSQL alone, without HTTP: `--clients` threads, each on its own
  connection, commit batches of `--batches` delivery reports through mm7soap's own group commit
  (`GroupCommit.commit`: BEGIN, then per report SAVEPOINT, INSERT … ON CONFLICT DO NOTHING
  RETURNING id, the outbox's advisory lock, the outbox INSERT … RETURNING, RELEASE; COMMIT), as
  fast as they can for `--duration` s: commits/s, rows/s, and the CPU of the backends per row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from databases import cluster_facts, create_database, describe, drop_database
from handoff import report_template
from load import Load, run_wrk
from measure import measure
from rows import read_only
from servers import (
    MM7SOAP,
    MM7SOAP_POSTGRESQL,
    BenchmarkError,
    Target,
    booted_workers,
    cpu_seconds,
    endpoint_path,
    start_server,
    stop_server,
)

from mm7soap.commit import GroupCommit, Ticket
from mm7soap.postgres import is_postgresql
from mm7soap.resend import report_fingerprint
from mm7soap.schema import REPORT_COLUMNS, REPORTS
from mm7soap.settings import Settings
from mm7soap.store import RowWrite, Store


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU per report of mm7soap and of PostgreSQL; PostgreSQL's commits/s.")
    parser.add_argument("part", nargs="?", choices=("service", "postgresql", "both"), default="both")
    parser.add_argument("--database", required=True, metavar="URL", help="a PostgreSQL cluster whose role has CREATEDB")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections of the service part (32)")
    parser.add_argument("--batches", type=counts, default=[1, 8, 32], help="reports per commit (default 1,8,32)")
    parser.add_argument("--clients", type=counts, default=[1, 4, 16], help="connections committing (1,4,16)")
    args = parser.parse_args(argv)
    if not is_postgresql(args.database):
        parser.error("--database takes a postgresql:// URL")
    if args.duration < 1 or args.connections < 1:
        parser.error("--duration and --connections must be ≥ 1")
    return args


SCHEDSTAT = Path("/proc/self/schedstat").exists()  # the kernel keeps per-task run times


def counts(text: str) -> list[int]:
    found = [int(part) for part in text.split(",") if part.strip()]
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError("give positive numbers, e.g. 1,8,32")
    return found


# --- the cluster's processes -----------------------------------------------------------------


def cluster_processes(url: str) -> tuple[list[int], list[int]]:
    """(the backends working for `url`'s database: its clients' and their parallel workers, the
    cluster's own processes: checkpointer, WAL writer, …, and an autovacuum worker on this
    database), as pg_stat_activity lists them (not by process title: a cluster may not set
    titles).  Other databases' processes (other people's tests on a shared cluster) are in neither."""
    conn = read_only(url)
    try:
        rows = conn.execute(
            "SELECT pid, backend_type IN ('client backend', 'parallel worker'), datname = current_database(),"
            " datname IS NULL FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall()
    finally:
        conn.close()
    backends = [int(pid) for pid, serving, ours, _ in rows if serving and ours]
    background = [int(pid) for pid, serving, ours, cluster in rows if not serving and (ours or cluster)]
    return backends, background


def run_seconds(pid: int) -> float | None:
    """The CPU time of a process's threads, from the scheduler's own count in nanoseconds
    (/proc/PID/task/*/schedstat), or None if it is gone.  /proc/PID/stat counts in clock ticks,
    and where the kernel samples them, a backend that runs 50 µs bursts between ticks is
    charged nothing most of the time: 16 such backends showed a tenth of their CPU."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    found = {pid: run_seconds(pid) if SCHEDSTAT else cpu_seconds(pid) for pid in pids}
    return {pid: seconds for pid, seconds in found.items() if seconds is not None}


class Clock:
    """The CPU seconds each group of processes spends from now on, and the wall seconds.  A
    process that exits meanwhile counts for nothing: its figures are gone with it."""

    def __init__(self, *groups: Sequence[int]) -> None:
        self.started = [cpu_by_pid(group) for group in groups]
        self.wall = time.perf_counter()

    def spent(self) -> list[float]:
        """The CPU seconds of each group, then the wall seconds, since the clock started."""
        cpu = []
        for then in self.started:
            now = cpu_by_pid(list(then))
            cpu.append(sum(now[pid] - seconds for pid, seconds in then.items() if pid in now))
        return [*cpu, time.perf_counter() - self.wall]


# --- service: CPU per report of each tier, served ------------------------------------------------


@dataclass
class Served:
    target: str
    reports: int  # acknowledged 1000 in the measured run
    requests_per_sec: float  # wrk's
    mm7soap_cpu: float
    backends_cpu: float
    background_cpu: float
    problems: list[str]

    def line(self) -> str:
        per = [f"{1000 * cpu / max(self.reports, 1):.2f}" for cpu in self.cpus()]
        return (
            f"{self.target:<19} {self.requests_per_sec:8,.0f} req/s   CPU ms per report: mm7soap {per[0]},"
            f" PostgreSQL backends {per[1]}, PostgreSQL background {per[2]}"
            + (f"   PROBLEMS: {'; '.join(self.problems)}" if self.problems else "")
        )

    def cpus(self) -> tuple[float, float, float]:
        return self.mm7soap_cpu, self.backends_cpu, self.background_cpu


def serve_and_measure(target: Target, args: argparse.Namespace, database: str | None) -> Served:
    """`target` served, warmed up, then loaded as fast as it answers while its CPU is counted."""
    workdir = Path(tempfile.mkdtemp(prefix="mm7soap-tiers-"))
    server = start_server(target, workdir, None, database)
    try:
        workers = booted_workers(server)
        run_wrk(server.base_url + endpoint_path(), Load(args.connections), 2, 2, 10, "tiers-warmup")
        ours = [server.process.pid, *workers]
        backends, background = cluster_processes(database) if database else ([], [])
        clock = Clock(ours, backends, background)
        run_args = argparse.Namespace(duration=args.duration, threads=2, timeout=10)
        run = measure(server, Load(args.connections), run_args, 1)
        spent = clock.spent()
        if database:  # a backend that connected during the run: all of its CPU was spent in it
            late = sorted(set(cluster_processes(database)[0]) - set(backends))
            spent[1] += sum(cpu_by_pid(late).values())
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return Served(target.name, run.ok_1000, run.requests_per_sec, *spent[:3], run.problems())


def service(args: argparse.Namespace) -> list[str]:
    lines = ["service (gunicorn, production settings; wrk as fast as answered, "
             f"{args.connections} connections, {args.duration} s):"]  # fmt: skip
    print(lines[0], flush=True)
    for target in (MM7SOAP, replace(MM7SOAP_POSTGRESQL, cluster=args.database)):
        database = create_database(args.database) if target.cluster else None
        try:
            done = serve_and_measure(target, args, database)
        finally:
            if database:
                drop_database(args.database, database)
        lines.append("  " + done.line())
        print(lines[-1], flush=True)
    return lines


# --- postgresql: commits/s and rows/s of the store's own statements ------------------------------


def report_rows(template: dict[str, Any], prefix: str) -> Iterator[dict[str, Any]]:
    """Distinct delivery reports (none a resend of another), as the service stores them."""
    n = 0
    while True:
        n += 1
        row = {**template, "transaction_id": f"{prefix}-tx-{n}", "message_id": f"{prefix}-mid-{n}"}
        row["fingerprint"] = report_fingerprint(row, REPORT_COLUMNS)
        yield row


def report_work(row: dict[str, Any]) -> Any:
    """What Store.save_delivery_report hands its group commit for one report."""
    return RowWrite(REPORTS, REPORT_COLUMNS, row, "delivery_report", row["message_id"])


@dataclass
class Committed:
    clients: int
    batch: int
    commits: int
    rows: int
    seconds: float
    backends_cpu: float
    background_cpu: float
    stored: int  # rows in the table afterwards: must be `rows`
    failed: list[str]  # the first error of a client that stopped on one

    def line(self) -> str:
        rows, seconds = max(self.rows, 1), self.seconds
        return (
            f"  {self.clients:>7} {self.batch:>5} {self.commits / seconds:>10,.0f} {self.rows / seconds:>8,.0f}"
            f" {1000 * self.clients * seconds / max(self.commits, 1):>10.1f}"  # each client's mean commit
            f" {1e6 * self.backends_cpu / rows:>19,.0f} {1e6 * self.background_cpu / rows:>18,.0f}"
            + ("" if self.stored == self.rows else f"  MISMATCH: {self.stored} stored")
            + "".join(f"  FAILED: {error}" for error in self.failed)
        )


POSTGRESQL_HEADINGS = "  clients batch  commits/s   rows/s  ms/commit  backend µs CPU/row  background µs/row"


def commit_batches(url: str, template: dict[str, Any], clients: int, batch: int, seconds: float) -> Committed:
    """`clients` threads committing `batch` reports at a time for `seconds`, on a fresh store.
    Each has a Store of its own, so its own writing connection: as `clients` instances would."""
    stores = [Store(Settings(database=url)) for _ in range(clients)]
    stores[0].migrate()
    ready, done, failed = threading.Barrier(clients + 1, timeout=60), [0] * clients, []
    start, stop = threading.Event(), threading.Event()

    def client(index: int) -> None:
        store, rows = stores[index], report_rows(template, f"c{index}")
        writes = GroupCommit(store.connections, store.busy_timeout_ms)
        store.connections.for_writing()  # connected before the clock starts
        ready.wait()
        start.wait()
        while not stop.is_set():
            tickets = [Ticket(report_work(next(rows))) for _ in range(batch)]
            writes.commit(tickets)
            errors = [str(ticket.error) for ticket in tickets if ticket.error]
            if errors:  # a batch is counted whole or not at all: the table then says MISMATCH
                failed.append(errors[0])
                return
            done[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        # Found while the clients wait: a connection opened under their load can take a second,
        # which the clock would miss and the rows would not.
        clock = Clock(*cluster_processes(url))
        start.set()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        spent = clock.spent()
        stored = int(stores[0].db.execute(f"SELECT count(*) FROM {REPORTS}").fetchone()[0])
    finally:
        stop.set()
        start.set()  # a client still waiting to start then sees `stop` and returns
        for store in stores:
            store.close()
    commits = sum(done)
    return Committed(clients, batch, commits, commits * batch, spent[2], spent[0], spent[1], stored, failed[:1])


def postgresql(args: argparse.Namespace) -> list[str]:
    lines = [
        f"PostgreSQL alone: the store's statements through GroupCommit.commit, {args.duration} s per line:",
        POSTGRESQL_HEADINGS,
    ]
    print("\n".join(lines), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="mm7soap-tiers-"))
    try:
        template = report_template(scratch / "template.db")[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for clients in args.clients:
        for batch in args.batches:
            database = create_database(args.database)
            try:
                done = commit_batches(database, template, clients, batch, args.duration)
            finally:
                drop_database(args.database, database)
            lines.append(done.line())
            print(lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(f"mm7soap tiers, {os.cpu_count()} CPUs; {describe(cluster_facts(args.database))}", flush=True)
        lines = []
        if args.part in ("service", "both"):
            lines += service(args)
        if args.part in ("postgresql", "both"):
            lines += postgresql(args)
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 1 if any(word in line for line in lines for word in ("PROBLEMS", "MISMATCH", "FAILED")) else 0


if __name__ == "__main__":
    sys.exit(main())

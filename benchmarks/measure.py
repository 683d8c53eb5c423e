"""One target's turn: a server on a fresh database, warmed up, measured under each load."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databases import create_database, drop_database
from load import Load, run_wrk
from receiver import ReceiverProcess, start_receiver
from rows import DRAIN_TIMEOUT, outbox_counts, sample_row, settle, snapshot, wait_drained
from servers import (
    Server,
    Target,
    booted_workers,
    cpu_seconds,
    endpoint_path,
    forwarder_pid,
    start_server,
    stop_server,
    webhook_environment,
    worker_peaks,
)

from mm7soap.postgres import redacted


@dataclass
class Run:
    """One measured wrk run against one target under one load."""

    round: int
    target: str
    connections: int
    offered_rate: float | None  # Load.rate: None when wrk posts as fast as it is answered
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
    # With a webhook: events still pending (not yet delivered) when the run ended.
    backlog: int | None = None

    @property
    def load(self) -> Load:
        return Load(self.connections, self.offered_rate)

    @property
    def rows_answered(self) -> int:
        """Rows of the requests that were answered: those wrk abandoned are not compared."""
        return self.rows_added - self.abandoned_stored

    def problems(self) -> list[str]:
        found = []
        where = f"round {self.round} {self.target} c={self.connections} {self.load.label}"
        if self.not_1000:
            found.append(f"{where}: {self.not_1000} answers other than 1000")
        if self.errors:
            found.append(f"{where}: wrk errors {self.wrk['errors']}")
        if self.rows_answered != self.ok_1000:
            found.append(f"{where}: {self.rows_answered} rows stored but {self.ok_1000} answers 1000 (MISMATCH)")
        return found


@dataclass
class Forwarded:
    """What the forwarder delivered of a target's events, once the load of its turn ended."""

    events: int  # in the outbox: one per report stored, warm-up included
    delivered: int  # distinct events the receiver got
    received: int  # POSTs the receiver got (more than `delivered` if any was delivered twice)
    drain_seconds: float | None  # from the end of the last run until none was pending; None: not in time
    # CPU seconds the forwarder process and the receiver used over the turn (None: unknown, or
    # the forwarder was restarted): what forwarding takes from the cores the intake runs on.
    forwarder_cpu: float | None = None
    receiver_cpu: float | None = None

    def cpu_per_event_ms(self, seconds: float | None) -> str:
        return f"{1000 * seconds / self.events:.2f} ms" if seconds is not None and self.events else "?"

    def problems(self) -> list[str]:
        if self.drain_seconds is None:
            return [f"events still pending {DRAIN_TIMEOUT:.0f} s after the load ended"]
        if self.delivered != self.events:
            return [f"the receiver got {self.delivered} of {self.events} events"]
        return []


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
    forwarded: Forwarded | None = None  # with a webhook: what reached the receiver

    def problems(self) -> list[str]:
        found = [problem for run in self.runs for problem in run.problems()]
        if self.forwarded is not None:
            found += [f"round {self.round} {self.target}: {p}" for p in self.forwarded.problems()]
        if sorted(self.peak_rss_kib) != self.workers_at_start:
            # gunicorn replaced a worker (its timeout, or a crash): that is a failure, and
            # the replaced worker's peak memory is lost.
            found.append(
                f"round {self.round} {self.target}: workers {self.workers_at_start} became {sorted(self.peak_rss_kib)}"
            )
        return found


def forwarded(server: Server, receiver: ReceiverProcess, forwarder: int | None) -> Forwarded:
    """Wait for the outbox to empty, then count what the receiver got."""
    drained = wait_drained(server.database)
    stats = receiver.stats()
    events = outbox_counts(server.database)[0]
    used = cpu_seconds(forwarder) if forwarder is not None else None
    return Forwarded(
        events, int(stats["unique"]), int(stats["received"]), drained, used, cpu_seconds(receiver.process.pid)
    )


def measure(server: Server, load: Load, args: argparse.Namespace, round_number: int) -> Run:
    tag = f"{server.target.name}-r{round_number}-c{load.connections}-{load.label.replace('/', '')}"
    settle(server.database)
    before = snapshot(server.database)[0]
    result = run_wrk(server.base_url + endpoint_path(), load, args.duration, args.threads, args.timeout, tag)
    settle(server.database)
    # Includes the request wrk builds only to check the script and never sends: it has no row.
    abandoned = [str(tid) for tid in result.pop("unanswered")]
    after, abandoned_stored = snapshot(server.database, abandoned)
    return Run(
        round=round_number,
        target=server.target.name,
        connections=load.connections,
        offered_rate=load.rate,
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
        backlog=outbox_counts(server.database)[1] if server.target.webhook else None,
    )


def run_target(target: Target, round_number: int, args: argparse.Namespace) -> TargetRun:
    """Start `target` on a fresh database, warm it up, measure each load, stop it."""
    database = create_database(target.cluster) if target.cluster else None
    try:
        done = run_on(target, round_number, args, database)
    except BaseException:
        if target.cluster and database:
            drop_database(target.cluster, database)
        raise
    if target.cluster and database and not done.problems():
        drop_database(target.cluster, database)
    elif database:
        print(f"  {target.name}: kept its database {redacted(database)} for inspection", flush=True)
    return done


def run_on(target: Target, round_number: int, args: argparse.Namespace, database: str | None) -> TargetRun:
    """`target`'s turn on `database` (PostgreSQL), or on a SQLite file in a fresh directory."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mm7soap-bench-{target.name.replace('+', '-')}-"))
    # With a webhook, the receiver is a process of its own, started before and stopped after.
    receiver = start_receiver() if target.webhook else None
    try:
        server = start_server(target, workdir, webhook_environment(receiver.url) if receiver else None, database)
        try:
            workers_at_start = booted_workers(server)
            forwarder = forwarder_pid(server) if receiver else None
            if args.warmup > 0:
                url = server.base_url + endpoint_path()
                warmup = Load(max(args.connections))
                run_wrk(url, warmup, args.warmup, args.threads, args.timeout, f"warmup-r{round_number}")
            runs = [measure(server, load, args, round_number) for load in loads(args)]
            peaks = worker_peaks(server)
            delivered = forwarded(server, receiver, forwarder) if receiver else None
        finally:
            stop_server(server)
    finally:
        if receiver is not None:
            receiver.stop()
    sample = sample_row(server.database)
    done = TargetRun(round_number, target.name, runs, peaks, workers_at_start, str(workdir), sample, delivered)
    if done.problems():
        print(f"  {target.name}: kept {workdir} (database, server.log) for inspection", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return done


def loads(args: argparse.Namespace) -> list[Load]:
    """Each connection count as fast as answered, then (with --rate) paced at each rate."""
    paced = [Load(connections, rate) for rate in args.rate for connections in args.connections]
    return [Load(connections) for connections in args.connections] + paced


def progress_line(rounds: int, done: TargetRun) -> str:
    parts = [
        f"c={r.connections} {r.load.label}: {r.requests_per_sec:,.0f} req/s, p99 {r.p99_ms:.1f} ms"
        + (f", {r.backlog:,} pending" if r.backlog is not None else "")
        for r in done.runs
    ]
    if done.forwarded is not None:
        drain = done.forwarded.drain_seconds
        parts.append(
            f"forwarded {done.forwarded.delivered:,}/{done.forwarded.events:,}"
            + (f", drained in {drain:.1f} s" if drain is not None else "")
        )
    status = "ok" if not done.problems() else "PROBLEMS"
    return f"round {done.round}/{rounds}  {done.target:<15}  " + " | ".join(parts) + f"  [{status}]"

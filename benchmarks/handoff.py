"""How fast the hand-off (issue 18) forwards events: `python benchmarks/handoff.py`.

Two measurements, each against `receiver.py`, a fast local receiver in a process of its own
that answers 204 to every POST and notes when each event arrived:

- **drain**: a database holding `--events` undelivered events (50,000 by default), and one
  `Forwarder(settings).run(until_drained=True)` delivering them all.  Prints events/s, and
  the receiver's own count, which must equal the events.
- **latency**: mm7soap served by gunicorn with the forwarder on (a webhook URL set, so the
  master starts `python -m mm7soap.forwarder` beside the workers), paced by wrk at `--rate`
  reports/s for `--duration` s.  Prints the time from each event's commit (the outbox's
  `created_at`, UTC) to its arrival at the receiver (same machine, same clock): p50, p90,
  p99, max; and the events delivered against the reports acknowledged.

See benchmarks/README.md ("Hand-off").
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from load import Load, run_wrk
from receiver import ReceiverProcess, start_receiver
from rows import DRAIN_TIMEOUT, read_only, settle, wait_drained
from servers import (
    MM7SOAP_WEBHOOK,
    WEBHOOK_SECRET,
    BenchmarkError,
    cpu_seconds,
    endpoint_path,
    forwarder_pid,
    start_server,
    stop_server,
    webhook_environment,
)
from stages import sinch_envelope

from mm7soap import binding, envelope
from mm7soap.forwarder import Forwarder
from mm7soap.records import Inbound, delivery_report_row
from mm7soap.resend import report_fingerprint
from mm7soap.schema import REPORT_COLUMNS
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.times import parse_stored as parse_text
from mm7soap.transport import MM7WsgiApp


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The forwarder's throughput (drain) and commit-to-receiver latency.")
    parser.add_argument("what", nargs="?", choices=["drain", "latency", "both"], default="both")
    parser.add_argument("--events", type=int, default=50_000, help="events in the drained outbox (default 50000)")
    parser.add_argument(
        "--reports-per-message",
        type=int,
        default=1,
        help="drain: reports sharing each MessageID, delivered in order one after another (default 1)",
    )
    parser.add_argument("--concurrency", type=int, default=None, help="MM7SOAP_WEBHOOK_CONCURRENCY (default: its own)")
    parser.add_argument("--rate", type=float, default=400.0, help="latency: offered reports/s (default 400)")
    parser.add_argument("--duration", type=int, default=20, help="latency: seconds of paced load (default 20)")
    parser.add_argument("--connections", type=int, default=32, help="latency: wrk connections (default 32)")
    parser.add_argument("--warmup", type=int, default=2, help="latency: seconds of unmeasured load first (default 2)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.reports_per_message < 1 or args.rate <= 0 or args.duration < 1:
        parser.error("--events, --reports-per-message and --duration must be ≥ 1, --rate > 0")
    return args


def webhook_settings(database: Path, receiver: ReceiverProcess, concurrency: int | None) -> Settings:
    """The forwarder's settings: the environment's (synchronous FULL by default), delivering to `receiver`."""
    return Settings.from_env(
        database=str(database), webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, webhook_concurrency=concurrency
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of them at or below it."""
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


# --- drain ---------------------------------------------------------------------------------


def report_template(database: Path) -> tuple[dict[str, Any], str]:
    """The stored row of post_report.lua's report, read by mm7soap's own path, and its envelope."""
    template = sinch_envelope()
    body = (template % ("fill-tx", "fill-mid")).encode()
    read = envelope.read(body)
    app = MM7WsgiApp(Settings(database=str(database)))
    try:
        descriptor = app.endpoint.operations[read.namespace][read.operation]
        request = binding.read(descriptor.in_message, read.request)
        row = delivery_report_row(request, read, Inbound(raw_envelope=body, client_address="127.0.0.1"))
    finally:
        app.store.close()
    return row, template


STATUSES = ("Forwarded", "Retrieved", "Rejected", "Expired", "Deferred", "Indeterminate")


def fill(database: Path, events: int, per_message: int) -> float:
    """`events` delivery reports stored through `Store.save_delivery_report`, each with its
    outbox event; seconds taken.  With `synchronous=OFF`: the filling is not measured, and
    with FULL its fsync per report would take minutes.  `per_message` reports share each
    MessageID (with different MMStatus, as Sinch sends Forwarded then Retrieved)."""
    row, template = report_template(database)
    store = Store(Settings(database=str(database), synchronous="OFF"))
    started = time.perf_counter()
    try:
        store.migrate()
        for n in range(events):
            message = f"drain-mid-{n // per_message}"
            transaction = f"drain-tx-{n}"
            report = {
                **row,
                "transaction_id": transaction,
                "message_id": message,
                "mm_status": row["mm_status"] if per_message == 1 else STATUSES[n % per_message % len(STATUSES)],
                "raw_envelope": (template % (transaction, message)).encode(),
            }
            report["fingerprint"] = report_fingerprint(report, REPORT_COLUMNS)
            if store.save_delivery_report(report).duplicate:
                raise RuntimeError(f"report {n} was taken for a resend")
    finally:
        store.close()
    return time.perf_counter() - started


def process_cpu() -> float:
    """CPU seconds this process (every thread: the forwarder's pool too) has used so far."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def outbox_states(database: Path) -> dict[str, int]:
    conn = read_only(database)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    finally:
        conn.close()


def drain(args: argparse.Namespace) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="mm7soap-handoff-drain-"))
    database = workdir / "mm7soap.db"
    ok = False
    try:
        print(f"drain: filling {database} with {args.events:,} delivery reports (synchronous=OFF) …", flush=True)
        filled = fill(database, args.events, args.reports_per_message)
        print(f"  filled in {filled:.1f} s ({args.events / filled:,.0f} reports/s)", flush=True)
        receiver = start_receiver()
        try:
            settings = webhook_settings(database, receiver, args.concurrency)
            forwarder = Forwarder(settings)
            receiver_cpu = cpu_seconds(receiver.process.pid) or 0.0
            started, cpu = time.perf_counter(), process_cpu()
            try:
                forwarder.run(until_drained=True)
            finally:
                elapsed, cpu = time.perf_counter() - started, process_cpu() - cpu
                forwarder.close()
            stats = receiver.stats()
            receiver_cpu = (cpu_seconds(receiver.process.pid) or 0.0) - receiver_cpu
        finally:
            receiver.stop()
        states = outbox_states(database)
        ok = stats["unique"] == args.events and states.get("delivered") == args.events
        rate = forwarder.delivered / elapsed
        print(
            f"  forwarded {forwarder.delivered:,} events in {elapsed:.2f} s: {rate:,.0f} events/s"
            f" (concurrency {settings.webhook_concurrency}, synchronous {settings.synchronous},"
            f" {args.reports_per_message} report(s) per MessageID)"
        )
        print(
            f"  CPU per event: forwarder {1e6 * cpu / args.events:,.0f} µs ({cpu / elapsed:.0%} of a core),"
            f" receiver {1e6 * receiver_cpu / args.events:,.0f} µs"
        )
        print(
            f"  receiver: {stats['received']:,} POSTs, {stats['unique']:,} distinct events"
            f" (expected {args.events:,}); outbox: {states}  [{'ok' if ok else 'MISMATCH'}]"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ok


# --- latency -------------------------------------------------------------------------------


def events_since(database: Path, after: int) -> list[tuple[str, str, str]]:
    """(event_id, created_at, the report's TransactionID) of each event after sequence `after`."""
    conn = read_only(database)
    try:
        return conn.execute(
            "SELECT o.event_id, o.created_at, r.transaction_id FROM outbox AS o"
            " JOIN delivery_reports AS r ON r.id = o.source_id AND o.type = 'delivery_report'"
            " WHERE o.sequence > ? ORDER BY o.sequence",
            [after],
        ).fetchall()
    finally:
        conn.close()


def last_sequence(database: Path) -> int:
    conn = read_only(database)
    try:
        return int(conn.execute("SELECT coalesce(max(sequence), 0) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def latency(args: argparse.Namespace) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="mm7soap-handoff-latency-"))
    receiver = start_receiver()
    ok = False
    try:
        server = start_server(MM7SOAP_WEBHOOK, workdir, webhook_environment(receiver.url, args.concurrency))
        try:
            url = server.base_url + endpoint_path()
            load = Load(args.connections, args.rate)
            print(
                f"latency: mm7soap under gunicorn, forwarder on (concurrency {concurrency(args)}),"
                f" {args.rate:g} reports/s offered over {args.connections} connections for {args.duration} s …",
                flush=True,
            )
            if args.warmup:
                run_wrk(url, load, args.warmup, 2, 10, "handoff-warmup")
                settle(server.database)
                wait_drained(server.database)
            forwarder = forwarder_pid(server)
            mark = last_sequence(server.database)
            cpu = cpu_seconds(forwarder) if forwarder else None
            result = run_wrk(url, load, args.duration, 2, 10, "handoff")
            settle(server.database)
            drained = wait_drained(server.database)
            if cpu is not None and forwarder is not None:
                after = cpu_seconds(forwarder)
                cpu = None if after is None else after - cpu  # None: it was restarted
            arrivals = receiver.arrivals()
        finally:
            stop_server(server)
        events = events_since(server.database, mark)
        abandoned = {str(tid) for tid in result["unanswered"]}
        answered = [(eid, created) for eid, created, tid in events if tid not in abandoned]
        delivered = [arrivals[eid] - parse_text(created).timestamp() for eid, created in answered if eid in arrivals]
        delivered.sort()
        acknowledged = int(result["ok_1000"])
        clean = not result["not_1000"] and not sum(result["errors"].values())
        ok = clean and len(delivered) == acknowledged == len(answered) and drained is not None
        print(
            f"  intake: {result['requests_per_sec']:,.0f} req/s, answer p50 {result['p50_us'] / 1000:.1f} ms,"
            f" p99 {result['p99_us'] / 1000:.1f} ms; {acknowledged:,} acknowledged 1000,"
            f" {result['not_1000']} other answers, {sum(result['errors'].values())} wrk errors"
        )
        if delivered:
            p50, p90, p99 = (1000 * percentile(delivered, f) for f in (0.5, 0.9, 0.99))
            print(
                f"  commit → receiver: min {1000 * delivered[0]:.0f} ms, p50 {p50:.0f} ms, p90 {p90:.0f} ms,"
                f" p99 {p99:.0f} ms, max {1000 * delivered[-1]:.0f} ms ({len(delivered):,} events)"
            )
        if cpu is not None and answered:
            print(
                f"  forwarder CPU: {1e6 * cpu / len(answered):,.0f} µs per event,"
                f" {cpu / args.duration:.0%} of a core at {result['requests_per_sec']:,.0f} reports/s"
            )
        print(
            f"  events delivered {len(delivered):,} / reports acknowledged {acknowledged:,}"
            f" (events of answered reports {len(answered):,}; outbox empty"
            + (f" {drained:.1f} s after the load)" if drained is not None else f" NOT within {DRAIN_TIMEOUT:.0f} s)")
            + f"  [{'ok' if ok else 'MISMATCH'}]"
        )
    finally:
        receiver.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  kept {workdir} (database, server.log) for inspection")
    return ok


def concurrency(args: argparse.Namespace) -> int:
    return args.concurrency or Settings.from_env().webhook_concurrency


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ok = True
    try:
        if args.what in ("drain", "both"):
            ok = drain(args) and ok
        if args.what in ("latency", "both"):
            if shutil.which("wrk") is None:
                print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
                return 2
            ok = latency(args) and ok
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

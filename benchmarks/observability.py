"""What the request log and the metrics cost in CPU: `python benchmarks/observability.py`.

run.py --observability compares req/s at saturation, mm7soap (a request line per report at
INFO, /metrics counting) against mm7soap-quiet (neither), in the same rounds.  On a shared
machine whose speed swings by 2× from one 10 s run to the next, that ratio needs many rounds.
This measures the cost directly: each target in turn, served by gunicorn, is offered the same
paced load (`--rate` reports/s for `--duration` s, well below saturation, so both do the same
work), and the CPU time of its master and workers (from /proc) is divided by the reports
acknowledged.  CPU time is what a request costs whatever else the machine runs; the ratio of
the two is the share the log line and the metrics add.  Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from load import Load, run_wrk
from servers import (
    LOGGING,
    MM7SOAP,
    MM7SOAP_QUIET,
    BenchmarkError,
    Server,
    Target,
    child_pids,
    cpu_seconds,
    endpoint_path,
    start_server,
    stop_server,
)

DEPLOYED = replace(MM7SOAP, settings=LOGGING)  # a request line at INFO, /metrics counting


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU per report with and without the request log and metrics.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each target once (default 3)")
    parser.add_argument("--rate", type=float, default=300.0, help="offered reports/s (default 300)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per target and round (default 15)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rate <= 0 or args.duration < 1:
        parser.error("--rounds and --duration must be ≥ 1, --rate > 0")
    return args


def service_cpu(server: Server) -> float:
    """CPU seconds of the master and its workers so far."""
    pids = [server.process.pid, *child_pids(server.process.pid)]
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def cpu_per_report(target: Target, args: argparse.Namespace) -> float:
    """Microseconds of service CPU per report acknowledged, under the paced load."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mm7soap-observability-{target.name}-"))
    try:
        server = start_server(target, workdir)
        try:
            url = server.base_url + endpoint_path()
            run_wrk(url, Load(args.connections, args.rate), 2, 2, 10, f"warm-{target.name}")
            before = service_cpu(server)
            result = run_wrk(url, Load(args.connections, args.rate), args.duration, 2, 10, target.name)
            used = service_cpu(server) - before
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    acknowledged = int(result.get("ok_1000", 0))
    if acknowledged < args.rate * args.duration * 0.8:
        raise BenchmarkError(f"{target.name}: only {acknowledged} reports acknowledged: {result}")
    return 1e6 * used / acknowledged


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    measured: dict[str, list[float]] = {DEPLOYED.name: [], MM7SOAP_QUIET.name: []}
    print(f"CPU per report at {args.rate:g} reports/s over {args.connections} connections, {args.duration} s a run")
    try:
        for number in range(1, args.rounds + 1):
            order = (DEPLOYED, MM7SOAP_QUIET) if number % 2 else (MM7SOAP_QUIET, DEPLOYED)
            for target in order:
                figure = cpu_per_report(target, args)
                measured[target.name].append(figure)
                print(f"  round {number} {target.name:<14} {figure:,.0f} µs", flush=True)
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    on, off = (statistics.median(measured[t.name]) for t in (DEPLOYED, MM7SOAP_QUIET))
    print(f"median: mm7soap {on:,.0f} µs, mm7soap-quiet {off:,.0f} µs per report")
    print(
        f"mm7soap / mm7soap-quiet, CPU per report: {on / off:.3f} (the log line and the metrics: {on / off - 1:+.1%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the request log and the metrics cost in intake: `python benchmarks/observability.py`.

Issue 19 allows them 5 % of intake req/s at 32 connections.  run.py --observability measures
mm7soap (a request line per report at INFO, which replaces gunicorn's access line, and /metrics
counting) and mm7soap-quiet (gunicorn's access line, as before issue 19, and nothing counted) one
after the other; on a shared machine whose speed swings by ±20 % from one 10 s run to the next,
that ratio cannot tell 5 % from noise.  Here both run at the same time: each round starts both,
each its own gunicorn on its own database and port, and two wrk processes started together load
them as fast as they answer, over `--connections` connections each.  Whatever else the machine
runs then slows both alike.  Each round gives two ratios: of their req/s, and of their CPU per
report (the CPU seconds of each server's master and workers, from /proc, over the reports it
acknowledged), inverted so that both read "mm7soap's intake over mm7soap-quiet's".  Rounds swap
which server, and which wrk, starts first, and are summed up in pairs, one of each order: the
one started first gets ahead.  `--control` runs mm7soap-quiet against itself: the method's own
noise; `--silent` runs mm7soap-quiet without the access line too.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from load import Load, run_wrk
from measure import Run, measure
from rows import settle
from servers import (
    LOGGING,
    MM7SOAP,
    MM7SOAP_QUIET,
    BenchmarkError,
    Server,
    Target,
    booted_workers,
    child_pids,
    cpu_seconds,
    endpoint_path,
    start_server,
    stop_server,
)

LOG_FORMATS = ("text", "json")  # MM7SOAP_LOG_FORMAT of the target that logs
TARGET_RATIO = 0.95  # issue 19: mm7soap / mm7soap-quiet ≥ this (the log line and the metrics ≤ 5 %)

T = TypeVar("T")


# `--only`: the setting that turns the other part off (a later setting wins over LOGGING's).
ONLY = {"log": (("MM7SOAP_METRICS_ACCESS", "off"),), "metrics": (("MM7SOAP_LOG_LEVEL", "warning"),)}


# What mm7soap has on, as the heading says it, and what the summary says costs: by `--only`.
MEASURED = {
    None: ("request log at info, {log_format}; metrics", "the request log and the metrics"),
    "log": ("request log at info, {log_format}; no metrics", "the request log alone"),
    "metrics": ("metrics; no request line", "the metrics alone"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mm7soap (request log at INFO, /metrics counting) and mm7soap-quiet (neither),"
        " loaded at the same time: what the log line and the metrics cost."
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="rounds, both targets at once in each; even (default 10)"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load after start (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections to each target (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each wrk (default 2)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds (default 10)")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="MM7SOAP_LOG_FORMAT of mm7soap (default text)"
    )
    parser.add_argument(
        "--control", action="store_true", help="mm7soap-quiet against itself: the method's own noise (ratios ~1)"
    )
    parser.add_argument(
        "--only",
        choices=tuple(ONLY),
        help="mm7soap with the request log only (metrics off) or the metrics only (no INFO line): each one's share",
    )
    parser.add_argument(
        "--silent",
        action="store_true",
        help="mm7soap-quiet without gunicorn's access line either: against no line per request at all"
        " (default: as mm7soap was before issue 19, an access line per request)",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.duration, args.connections, args.threads) < 1 or args.warmup < 0:
        parser.error("--rounds, --duration, --connections and --threads must be ≥ 1, --warmup ≥ 0")
    if args.rounds % 2:
        parser.error("--rounds must be even: each pair of rounds starts each target first once")
    return args


def targets(args: argparse.Namespace) -> tuple[Target, Target]:
    """(on, off): mm7soap as deployed, a request line per report at INFO in `--log-format` and
    /metrics counting; and mm7soap-quiet, nothing logged per report and nothing counted.
    With `--control`, two mm7soap-quiet."""
    if args.control:
        return replace(MM7SOAP_QUIET, name="quiet-a"), replace(MM7SOAP_QUIET, name="quiet-b")
    without = ONLY[args.only] if args.only else ()
    on = replace(MM7SOAP, settings=(*LOGGING, ("MM7SOAP_LOG_FORMAT", args.log_format), *without))
    if args.silent:
        return on, replace(MM7SOAP_QUIET, settings=(*MM7SOAP_QUIET.settings, ("MM7SOAP_ACCESS_LOG", "off")))
    return on, MM7SOAP_QUIET


def in_order(round_number: int, pair: tuple[Target, Target]) -> tuple[Target, Target]:
    """Odd rounds start `pair` as given, even rounds the other way round: whatever starting
    first does (a server's page cache, a wrk's head start) falls on each alike."""
    return pair if round_number % 2 else (pair[1], pair[0])


def together(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Each call in a thread of its own, started in the order given; their results in that order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


@dataclass
class Measured:
    """One target's measured run in a round, and the CPU its server used meanwhile."""

    run: Run
    cpu_seconds: float  # its master's and workers', from just before wrk started to after it ended

    @property
    def cpu_per_report(self) -> float:
        """Microseconds of CPU per report acknowledged."""
        return 1e6 * self.cpu_seconds / self.run.ok_1000


@dataclass
class Paired:
    """One round: both targets measured at the same time."""

    round: int
    first: str  # the target started first, whose wrk started first
    on: Measured
    off: Measured
    replaced: list[str]  # targets whose workers gunicorn replaced during the round

    @property
    def ratio(self) -> float:
        """mm7soap's req/s over mm7soap-quiet's."""
        return self.on.run.requests_per_sec / self.off.run.requests_per_sec

    @property
    def cpu_ratio(self) -> float:
        """mm7soap-quiet's CPU per report over mm7soap's: the intake ratio if CPU sets the intake."""
        return self.off.cpu_per_report / self.on.cpu_per_report

    def problems(self) -> list[str]:
        found = self.on.run.problems() + self.off.run.problems()
        return found + [f"round {self.round} {name}: a worker was replaced" for name in self.replaced]

    def line(self, rounds: int) -> str:
        status = "ok" if not self.problems() else "PROBLEMS"
        parts = [
            f"{side.run.target} {side.run.requests_per_sec:,.0f} req/s, {side.cpu_per_report:,.0f} µs CPU a report"
            for side in (self.on, self.off)
        ]
        return (
            f"round {self.round}/{rounds}  {self.first} first:  {' | '.join(parts)}"
            f" | req/s {self.ratio:.3f}, CPU {self.cpu_ratio:.3f}  [{status}]"
        )


def run_round(round_number: int, pair: tuple[Target, Target], args: argparse.Namespace) -> Paired:
    """Both targets started (each on a fresh database), warmed up together, measured together, stopped."""
    order = in_order(round_number, pair)
    workdirs = [Path(tempfile.mkdtemp(prefix=f"mm7soap-observability-{target.name}-")) for target in order]
    servers: list[Server] = []
    try:
        for target, workdir in zip(order, workdirs, strict=True):
            servers.append(start_server(target, workdir))
        workers = [booted_workers(server) for server in servers]
        if args.warmup > 0:
            together([partial(warm_up, server, round_number, args) for server in servers])
        for server in servers:
            settle(server.database)  # then measure's own settling takes as long for both
        measured = together([partial(measure_cpu, server, round_number, args) for server in servers])
        replaced = [s.target.name for s, w in zip(servers, workers, strict=True) if child_pids(s.process.pid) != w]
    finally:
        for server in servers:
            stop_server(server)
    by_name = {side.run.target: side for side in measured}
    paired = Paired(round_number, order[0].name, by_name[pair[0].name], by_name[pair[1].name], replaced)
    if paired.problems():
        print(f"  kept {', '.join(map(str, workdirs))} (databases, server.log) for inspection", flush=True)
    else:
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    return paired


def warm_up(server: Server, round_number: int, args: argparse.Namespace) -> None:
    url = server.base_url + endpoint_path()
    run_wrk(url, Load(args.connections), args.warmup, args.threads, args.timeout, f"warmup-r{round_number}")


def measure_cpu(server: Server, round_number: int, args: argparse.Namespace) -> Measured:
    """measure.measure's run as fast as answered, and the CPU the server used over it."""
    before = server_cpu(server)
    run = measure(server, Load(args.connections), args, round_number)
    used = server_cpu(server) - before
    if run.ok_1000 == 0:
        raise BenchmarkError(f"round {round_number} {server.target.name}: no report acknowledged: {run.wrk}")
    return Measured(run, used)


def server_cpu(server: Server) -> float:
    """CPU seconds the master and its workers have used so far."""
    return sum(cpu_seconds(pid) or 0.0 for pid in [server.process.pid, *child_pids(server.process.pid)])


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def both_orders(ratios: Sequence[float]) -> list[float]:
    """Each two rounds' ratios, one with each target started first, as one: their geometric
    mean.  The target started first gets ahead (by a tenth of its CPU per report in some
    rounds, and more of req/s); a pair cancels that, as a median of single rounds does not."""
    return [math.sqrt(first * second) for first, second in zip(ratios[0::2], ratios[1::2], strict=True)]


def summary(
    done: Sequence[Paired], control: bool = False, measured: str = "the request log and the metrics"
) -> list[str]:
    """Both ratios' median and range over the pairs of rounds, and the cost they make of the
    log line and the metrics (with `control`, the noise they show when there is none)."""
    ratios, cpu_ratios = [paired.ratio for paired in done], [paired.cpu_ratio for paired in done]
    on, off = done[0].on.run.target, done[0].off.run.target
    rows = [("req/s, loaded side by side", ratios), (f"CPU per report, {off} / {on}", cpu_ratios)]
    width = max(len(label) for label, _ in rows) + 1
    pairs = len(done) // 2
    lines = [f"{on} / {off}, {pairs} pair{'s' * (pairs > 1)} of rounds (each started first once), median (min–max):"]
    lines += [f"  {label + ':':<{width}} {spread(both_orders(values))}" for label, values in rows]
    started_first = [statistics.median(cpu_ratios[first::2]) for first in (0, 1)]
    lines.append(f"  CPU per report by which started first: {on} {started_first[0]:.3f}, {off} {started_first[1]:.3f}")
    if control:
        return [*lines, "a control: both targets are the same, so any departure from 1.000 is the method's noise"]
    cost, cpu_cost = (1 - statistics.median(both_orders(values)) for values in (ratios, cpu_ratios))
    return [
        *lines,
        f"{measured} cost {cost:.1%} of req/s, {cpu_cost:.1%} by CPU per report (issue 19: ≤ {1 - TARGET_RATIO:.0%})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    pair = targets(args)
    heading, measured = MEASURED[args.only]
    what = "the control" if args.control else heading.format(log_format=args.log_format)
    if args.silent:
        what += "; mm7soap-quiet without an access line"
    print(
        f"{pair[0].name} ({what}) and {pair[1].name} at the same time: {args.connections} connections each,"
        f" as fast as answered; {args.warmup} s warm-up, {args.duration} s measured; {args.rounds} rounds",
        flush=True,
    )
    done: list[Paired] = []
    try:
        for number in range(1, args.rounds + 1):
            done.append(run_round(number, pair, args))
            print(done[-1].line(args.rounds), flush=True)
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = [problem for paired in done for problem in paired.problems()]
    print(
        "\n".join(["", *summary(done, args.control, measured), *(f"problem: {p}" for p in problems)]),
        flush=True,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

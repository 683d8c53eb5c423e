"""Benchmark mm7soap against the reference app: `python benchmarks/run.py`.

Both are served by gunicorn with mm7soap's production settings and loaded in turn (A B A B …)
by wrk, posting Sinch delivery reports over loopback keep-alive connections.  Only the ratio
within one run means much: the machine is shared, so absolute figures drift between runs.
`--webhook` adds a third target between them, mm7soap forwarding its events to a local
receiver (A W B A W B …); `--observability` adds mm7soap-quiet after mm7soap (no request
log line, no metrics), prints what logging and counting cost, then runs observability.py
(both loaded at the same time, which the machine's swings cannot skew); `--database postgresql://…`
adds mm7soap-postgresql after mm7soap (the same service on a fresh database of that cluster) and
prints mm7soap-postgresql / mm7soap.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from databases import cluster_facts, describe
from load import WRK_SLACK
from measure import TargetRun, loads, progress_line, run_target
from report import (
    OBSERVED_CONNECTIONS,
    engine_ratio,
    forwarding,
    machine,
    observability_cost,
    ratios,
    row_comparison,
    summarise,
    table,
)
from rows import DRAIN_TIMEOUT, SETTLE_TIMEOUT
from servers import (
    BENCHMARKS,
    MM7SOAP,
    MM7SOAP_POSTGRESQL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TARGETS,
    WEBHOOK_TARGETS,
    BenchmarkError,
    Target,
    observed,
)

from mm7soap.postgres import is_postgresql, redacted

# Offered req/s of the paced runs: about a quarter and a half of what mm7soap takes at most
# on a 2-core machine with wrk on the same cores, so that they measure answer time, not a queue.
DEFAULT_RATES = (400.0, 800.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mm7soap vs a plain lxml+sqlite3 reference, under gunicorn and wrk.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every target (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load after start (default 2)")
    parser.add_argument("--connections", type=connection_counts, default=[8, 32], help="default 8,32")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--rate",
        type=offered_rates,
        default=list(DEFAULT_RATES),
        help=f"req/s of the paced runs; 0: none (default {','.join(f'{rate:g}' for rate in DEFAULT_RATES)})",
    )
    # Whole seconds: wrk reads no fractions.  Sinch gives up on a request after 10 s: an
    # answer later than that is as good as none.
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds (default 10)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results", help="default benchmarks/results/")
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="also measure mm7soap+webhook (forwarding every event to benchmarks/receiver.py), then handoff.py both",
    )
    parser.add_argument(
        "--observability",
        action="store_true",
        help="also measure mm7soap-quiet (metrics off, log level warning) beside mm7soap, which then logs at info;"
        f" prints mm7soap / mm7soap-quiet at {OBSERVED_CONNECTIONS} connections, then observability.py (both at once)",
    )
    parser.add_argument(
        "--database",
        type=postgresql_url,
        metavar="URL",
        help="also measure mm7soap-postgresql, on a fresh database made in this PostgreSQL cluster for each turn"
        " (its role needs CREATEDB) and dropped after; prints mm7soap-postgresql / mm7soap."
        " Example: --database postgresql://mm7soap:secret@127.0.0.1:5432/mm7soap",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.threads < 1:
        parser.error("rounds and threads must be ≥ 1, duration > 0, warmup ≥ 0")
    return args


def offered_rates(text: str) -> list[float]:
    """`400,800` → [400.0, 800.0]; `0` → [] (no paced runs)."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give req/s rates, e.g. 400,800, or 0") from None
    if any(rate < 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates are ≥ 0")
    return [rate for rate in rates if rate > 0]


def postgresql_url(text: str) -> str:
    if not is_postgresql(text):
        raise argparse.ArgumentTypeError("give a postgresql://user:password@host:port/database URL")
    return text


def connection_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give positive connection counts, e.g. 8,32")
    return counts


def targets(args: argparse.Namespace) -> tuple[Target, ...]:
    """What each round measures, in order."""
    chosen = WEBHOOK_TARGETS if args.webhook else TARGETS
    if args.database:  # right after mm7soap, so that both meet the machine in the same state
        on_postgresql = replace(MM7SOAP_POSTGRESQL, cluster=args.database)
        at = chosen.index(MM7SOAP) + 1
        chosen = (*chosen[:at], on_postgresql, *chosen[at:])
    return observed(chosen) if args.observability else chosen


def time_bounds(args: argparse.Namespace) -> tuple[float, float]:
    """Seconds the whole run should take, and the most it can take before something gives up."""
    turns = args.rounds * len(targets(args))
    wrk_runs = len(loads(args))
    expected = turns * (4 + args.warmup + wrk_runs * (args.duration + 1))
    per_wrk = args.timeout + WRK_SLACK + 2 * SETTLE_TIMEOUT
    most = turns * (START_TIMEOUT + STOP_TIMEOUT + args.warmup + per_wrk + wrk_runs * (args.duration + per_wrk))
    if args.webhook:
        most += args.rounds * DRAIN_TIMEOUT
    return expected, most


def header(args: argparse.Namespace) -> list[str]:
    expected, most = time_bounds(args)
    info = machine()
    order = " then ".join(target.name for target in targets(args))
    postgresql = [f"mm7soap-postgresql: {describe(cluster_facts(args.database))}"] if args.database else []
    return [
        f"mm7soap benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        f"machine: {info['cpus']} CPUs, {info['platform']}; databases in {info['databases']}",
        f"python {info['python']}, gunicorn {info['gunicorn']}, {info['wrk']}, lxml {info['lxml']},"
        f" sqlite {info['sqlite']}, mm7soap {info['mm7soap']}",
        *postgresql,
        f"rounds: {args.rounds} ({order}); {args.warmup:g} s warm-up, {args.duration:g} s per run at"
        f" {','.join(map(str, args.connections))} connections, as fast as answered"
        + (f" and paced at {', '.join(f'{rate:g}' for rate in args.rate)} req/s" if args.rate else "")
        + f", {args.threads} wrk threads",
        f"expected duration {expected / 60:.1f} min (bounded by {most / 60:.0f} min)",
    ]


def run_all(args: argparse.Namespace) -> tuple[list[TargetRun], list[str]]:
    """Every round, A then B; stops at the first target that cannot be measured."""
    done: list[TargetRun] = []
    for round_number in range(1, args.rounds + 1):
        for target in targets(args):
            try:
                turn = run_target(target, round_number, args)
            except BenchmarkError as exc:
                return done, [f"round {round_number} {target.name}: {exc}"]
            done.append(turn)
            print(progress_line(args.rounds, turn), flush=True)
    return done, []


def report(args: argparse.Namespace, head: list[str], done: list[TargetRun], aborted: list[str]) -> list[str]:
    lines = summarise(done, loads(args))
    problems = [problem for turn in done for problem in turn.problems()] + aborted
    text = [*head, "", *table(lines), "", *ratios(lines, loads(args)), *row_comparison(done), *forwarding(done)]
    if args.observability:
        text += observability_cost(lines)
    if args.database:
        text += engine_ratio(lines)
    text += ["", "problems:", *(f"  {p}" for p in problems)] if problems else ["", "no problems"]
    return text


def write_results(args: argparse.Namespace, text: list[str], done: list[TargetRun], aborted: list[str]) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"benchmark-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".txt").write_text("\n".join(text) + "\n")
    raw = {
        "machine": machine(),
        "arguments": {key: printable(value) for key, value in vars(args).items()},
        "turns": [asdict(turn) for turn in done],
        "aborted": aborted,
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    return stem


def printable(value: object) -> object:
    """An argument as the results file keeps it: a path as text, a database URL without its password."""
    if isinstance(value, Path):
        return str(value)
    return redacted(value) if isinstance(value, str) else value


HANDOFF_OK = "hand-off: ok"
SIDE_BY_SIDE_OK = "side by side: ok"


def hand_off() -> list[str]:
    """`handoff.py both` (drain 50,000, latency at 400/s), printed as it goes and returned, so
    that the forwarder's figures stand next to the intake table (issue 18)."""
    return follow_up("hand-off", ["handoff.py", "both"])


def side_by_side(args: argparse.Namespace) -> list[str]:
    """`observability.py`: mm7soap and mm7soap-quiet loaded at the same time, which tells the
    cost of the request log and the metrics from the machine's swings as the table cannot."""
    timing = ["--duration", args.duration, "--warmup", args.warmup, "--timeout", args.timeout]
    command = ["observability.py", "--connections", OBSERVED_CONNECTIONS, "--threads", args.threads, *timing]
    return follow_up("side by side", command)


def follow_up(name: str, command: Sequence[object]) -> list[str]:
    """Another script of benchmarks/ run after the table, printed as it goes and returned; the
    last line is `<name>: ok`, or its exit status."""
    title = f"{name} (benchmarks/{' '.join(map(str, command))}):"
    print("\n" + title, flush=True)
    lines = [title]
    arguments = [sys.executable, str(BENCHMARKS / str(command[0])), *map(str, command[1:])]
    with subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    return [*lines, f"{name}: ok" if child.returncode == 0 else f"{name}: exit {child.returncode}"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        head = header(args)
    except BenchmarkError as exc:  # the cluster of --database cannot be reached
        print(exc, file=sys.stderr)
        return 2
    print("\n".join(head), flush=True)
    done, aborted = run_all(args)
    text = report(args, head, done, aborted)
    print("\n" + "\n".join(text[len(head) + 1 :]))
    if args.webhook and not aborted:
        handed_off = hand_off()
        text += ["", *handed_off]
        if handed_off[-1] != HANDOFF_OK:
            aborted = ["handoff.py: " + handed_off[-1]]
    if args.observability and not aborted:
        paired = side_by_side(args)
        text += ["", *paired]
        if paired[-1] != SIDE_BY_SIDE_OK:
            aborted = ["observability.py: " + paired[-1]]
    stem = write_results(args, text, done, aborted)
    print(f"\nwritten to {stem}.txt and {stem}.json")
    if aborted:
        return 2
    return 1 if any(turn.problems() for turn in done) else 0


if __name__ == "__main__":
    sys.exit(main())

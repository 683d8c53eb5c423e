"""The table: each target under each load over all rounds, the ratios, and the machine."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gunicorn
import lxml.etree
from load import Load
from measure import TargetRun
from servers import MM7SOAP, MM7SOAP_POSTGRESQL, MM7SOAP_QUIET, REFERENCE, REPO


@dataclass
class Line:
    """One row of the table: a target under one load, over all rounds."""

    target: str
    load: Load
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


def summarise(done: Sequence[TargetRun], loads: Sequence[Load]) -> list[Line]:
    lines = []
    for name in dict.fromkeys(turn.target for turn in done):  # the targets, in the order they ran
        turns = [turn for turn in done if turn.target == name]
        for load in loads:
            runs = [run for turn in turns for run in turn.runs if run.load == load]
            if not runs:
                continue
            peaks = [kib for turn in turns for kib in turn.peak_rss_kib.values()]
            lines.append(
                Line(
                    target=name,
                    load=load,
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


HEADINGS = ("target", "conns", "offered", "req/s median (min–max)", "p50 ms", "p99 ms", "non-1000", "errors")
HEADINGS_END = ("rows stored / 1000s answered", "peak RSS/worker MiB")


def table(lines: Sequence[Line]) -> list[str]:
    rows = [(*HEADINGS, *HEADINGS_END)]
    for line in lines:
        stored = f"{line.rows} / {line.answered_1000}" + ("" if line.rows == line.answered_1000 else " MISMATCH")
        rows.append(
            (
                line.target,
                str(line.load.connections),
                line.load.label,
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


def ratios(lines: Sequence[Line], loads: Sequence[Load]) -> list[str]:
    """Throughput where wrk posts as fast as answered (each target against the reference);
    latency where it paces."""
    out = []
    for load in loads:
        by_target = {line.target: line for line in lines if line.load == load}
        reference = by_target.get(REFERENCE.name)
        ours = [line for name, line in by_target.items() if name != REFERENCE.name]
        if not ours or not reference:
            continue
        if load.rate is None:
            for line in ours:
                ratio = line.median_rate / reference.median_rate
                out.append(f"{line.target} / reference at {load.connections} connections: {ratio:.2f} (median req/s)")
        else:
            each = ", ".join(f"{line.target} {line.p99_ms:.1f} ms" for line in [*ours, reference])
            out.append(f"p99 at {load.label} offered over {load.connections} connections: {each}")
    return out


OBSERVED_CONNECTIONS = 32  # run.py --observability compares at this many connections


def observability_cost(lines: Sequence[Line]) -> list[str]:
    """What the request log line and the metrics cost: mm7soap's throughput over
    mm7soap-quiet's, as fast as answered at OBSERVED_CONNECTIONS (1.00: nothing)."""
    by_target = {
        line.target: line for line in lines if line.load.rate is None and line.load.connections == OBSERVED_CONNECTIONS
    }
    ours, quiet = by_target.get(MM7SOAP.name), by_target.get(MM7SOAP_QUIET.name)
    if ours is None or quiet is None:
        return [f"mm7soap / mm7soap-quiet: no run of both at {OBSERVED_CONNECTIONS} connections"]
    ratio = ours.median_rate / quiet.median_rate
    return [f"mm7soap / mm7soap-quiet at {OBSERVED_CONNECTIONS} connections: {ratio:.2f} (median req/s)"]


ENGINE_CONNECTIONS = 32  # run.py --database compares the engines at this many connections
ENGINE_TARGET = 0.8  # issue 20: one instance on PostgreSQL ≥ 0.8× the same on SQLite


def engine_ratio(lines: Sequence[Line]) -> list[str]:
    """mm7soap on PostgreSQL against mm7soap on SQLite, as fast as answered at
    ENGINE_CONNECTIONS, in the same run (run.py --database)."""
    by_target = {
        line.target: line for line in lines if line.load.rate is None and line.load.connections == ENGINE_CONNECTIONS
    }
    ours, sqlite = by_target.get(MM7SOAP_POSTGRESQL.name), by_target.get(MM7SOAP.name)
    if ours is None or sqlite is None:
        return [f"mm7soap-postgresql / mm7soap: no run of both at {ENGINE_CONNECTIONS} connections"]
    ratio = ours.median_rate / sqlite.median_rate
    return [
        f"mm7soap-postgresql / mm7soap at {ENGINE_CONNECTIONS} connections: {ratio:.2f}"
        f" (median req/s; target ≥ {ENGINE_TARGET})"
    ]


def forwarding(done: Sequence[TargetRun]) -> list[str]:
    """With a webhook: whether the forwarder kept up, and delivered every event in the end."""
    out = []
    for turn in done:
        if turn.forwarded is None:
            continue
        sent = turn.forwarded
        backlog = ", ".join(f"c={run.connections} {run.load.label} {run.backlog:,}" for run in turn.runs)
        drain = f"{sent.drain_seconds:.1f} s" if sent.drain_seconds is not None else "NOT in time"
        forwarder, receiver = sent.cpu_per_event_ms(sent.forwarder_cpu), sent.cpu_per_event_ms(sent.receiver_cpu)
        out.append(
            f"round {turn.round} {turn.target}: {sent.events:,} events, {sent.delivered:,} delivered to the receiver"
            f" ({sent.received:,} POSTs); pending at the end of each run: {backlog};"
            f" outbox empty {drain} after the load; CPU per event: forwarder {forwarder}, receiver {receiver}"
        )
    return ["", "forwarding:", *(f"  {line}" for line in out)] if out else []


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

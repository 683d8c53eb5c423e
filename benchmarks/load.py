"""wrk posting Sinch delivery reports with post_report.lua: as fast as answers come, or paced."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import BenchmarkError

LUA_SCRIPT = Path(__file__).resolve().parent / "post_report.lua"
WRK_SLACK = 30.0  # seconds wrk may overrun its -d before it is killed


@dataclass(frozen=True)
class Load:
    """How one wrk run loads a target: `connections` keep-alive connections, each posting its
    next report as soon as the last is answered (`rate` None: closed loop, the most the target
    can take), or after a random pause such that together they offer `rate` reports a second."""

    connections: int
    rate: float | None = None

    @property
    def label(self) -> str:
        return "max" if self.rate is None else f"{self.rate:g}/s"

    def gap_ms(self) -> float | None:
        """The mean pause per connection that offers `rate` in all (answer time aside)."""
        return None if self.rate is None else self.connections * 1000.0 / self.rate


def run_wrk(url: str, load: Load, seconds: int, threads: int, timeout: int, tag: str) -> dict[str, Any]:
    """One wrk run; the RESULT line post_report.lua prints, as a dict."""
    command = [
        "wrk",
        f"-t{min(threads, load.connections)}",  # wrk wants at least one connection per thread
        f"-c{load.connections}",
        f"-d{seconds}s",
        f"--timeout={timeout}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        tag,
    ]
    gap = load.gap_ms()
    if gap is not None:
        command.append(f"{gap:.3f}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout + WRK_SLACK)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"wrk did not finish: {' '.join(command)}") from exc
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise BenchmarkError(f"wrk printed no RESULT (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")

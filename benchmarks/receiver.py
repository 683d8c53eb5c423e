"""A fast local webhook receiver for the hand-off benchmarks, run as a process of its own.

    python benchmarks/receiver.py [--port 0]      # prints `listening PORT`, then serves

It answers 204 to every POST at once, over keep-alive HTTP/1.1 connections, and notes each
delivery's `webhook-id` and the moment it arrived (`time.time()`: the wall clock, the one
the outbox's `created_at` is read from, on the same machine).  It checks no signature and
parses no body, so that it costs the forwarder as little as a receiver can.  HEAD (the
forwarder's reachability check) is answered 204 too.  What it noted is read over HTTP:

- `GET /stats`: `{"received": POSTs, "unique": distinct webhook-ids, "first": t, "last": t}`
- `GET /arrivals`: `{webhook-id: first arrival time}`

The helpers below (`start_receiver`, `ReceiverProcess`) are for the benchmark driver: they
start this file with the driver's Python as a subprocess, never in the driver's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
START_TIMEOUT = 10.0


@dataclass
class Tally:
    received: int = 0
    first: float | None = None
    last: float | None = None
    arrivals: dict[str, float] = field(default_factory=dict)  # webhook-id → its first arrival

    def note(self, event_id: str) -> None:
        now = time.time()
        self.received += 1
        if self.first is None:
            self.first = now
        self.last = now
        self.arrivals.setdefault(event_id, now)

    def stats(self) -> dict[str, Any]:
        return {"received": self.received, "unique": len(self.arrivals), "first": self.first, "last": self.last}


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests read off the buffer as they complete (pipelined too)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # the body is still arriving
            del self.buffer[: end + 4 + length]
            method, _, rest = lines[0].partition(" ")
            self.answer(method, rest.partition(" ")[0], headers)

    def answer(self, method: str, path: str, headers: dict[str, str]) -> None:
        assert self.transport is not None
        close = headers.get("connection", "").lower() == "close"
        if method == "POST":
            self.tally.note(headers.get("webhook-id", ""))
            self.transport.write(NO_CONTENT_CLOSE if close else NO_CONTENT)
        elif method == "GET" and path in ("/stats", "/arrivals"):
            found = self.tally.stats() if path == "/stats" else self.tally.arrivals
            body = json.dumps(found).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            self.transport.write(head.encode() + body)
        else:
            self.transport.write(NO_CONTENT_CLOSE if close else NO_CONTENT)
        if close:
            self.transport.close()
            self.transport = None


async def serve(port: int) -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(tally), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


# --- for the driver -----------------------------------------------------------------------


@dataclass
class ReceiverProcess:
    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/stats"))

    def arrivals(self) -> dict[str, float]:
        return dict(self.get("/arrivals"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_receiver() -> ReceiverProcess:
    """This file as a process of its own, on a free port of 127.0.0.1 it chooses itself."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else ""  # `listening PORT`, or nothing if it failed
    if not line.startswith("listening "):
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"the receiver did not start (exit {process.poll()}): {line!r}")
    return ReceiverProcess(process, int(line.split()[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Answer 204 to every webhook POST, noting when each arrived.")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()

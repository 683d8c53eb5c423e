"""Where one Sinch delivery report's time goes inside mm7soap: `python benchmarks/stages.py`.

In-process, one thread, no HTTP server: each stage of mm7soap's request path is timed with
timeit (the best of 5 repeats of N calls), then the whole WSGI call of mm7soap and of the
reference app (`reference_app.py`). The envelope is the one `post_report.lua` posts, with new
ids wherever a row is stored. Both databases live in a temporary directory; `--synchronous`
is mm7soap's (the reference always commits with FULL). An indented stage is part of the one
above it. A stage timed alone in a loop keeps its code and data in the CPU's caches, so the
stages add up to less than the whole: "envelope read, then operation run" times the two in
turn, as a request runs them, to show how much. timeit switches the garbage collector off
while it times. run.py measures the served whole; this says which part
of the application to look at.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import re
import sys
import tempfile
import timeit
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

from mm7soap import binding, envelope, mime
from mm7soap.records import Inbound, delivery_report_row
from mm7soap.resend import report_fingerprint
from mm7soap.schema import REPORT_COLUMNS
from mm7soap.service import Call, OperationContext
from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp

BENCHMARKS = Path(__file__).resolve().parent
LUA_SCRIPT = BENCHMARKS / "post_report.lua"
CONTENT_TYPE = 'multipart/related; type="text/xml";'  # as Sinch sends it, and post_report.lua
REPEATS = 5

Stage = tuple[str, Callable[[], object]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time each stage of one Sinch delivery report, in-process.")
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat (default 2000)")
    parser.add_argument(
        "--synchronous", default="FULL", choices=["FULL", "NORMAL", "OFF"], help="mm7soap's (default FULL)"
    )
    args = parser.parse_args(argv)
    if args.number < 1:
        parser.error("--number must be ≥ 1")
    return args


def sinch_envelope() -> str:
    """post_report.lua's ENVELOPE: `%s` stands for the TransactionID, then the MessageID."""
    found = re.search(r"local ENVELOPE = \[\[\n(.*?)\]\]", LUA_SCRIPT.read_text(), re.DOTALL)
    if found is None:
        raise RuntimeError(f"{LUA_SCRIPT} has no ENVELOPE")
    return found.group(1)


def load_reference(database: Path) -> ModuleType:
    """A fresh reference_app on `database` (it reads the path from the environment when imported)."""
    spec = importlib.util.spec_from_file_location("reference_app", BENCHMARKS / "reference_app.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("reference_app.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    before = os.environ.get("REFERENCE_DATABASE")
    os.environ["REFERENCE_DATABASE"] = str(database)
    try:
        spec.loader.exec_module(module)
    finally:
        if before is None:
            del os.environ["REFERENCE_DATABASE"]
        else:
            os.environ["REFERENCE_DATABASE"] = before
    return module


def post(app: Callable[..., Any], body: bytes) -> bytes:
    """One WSGI call as gunicorn makes it for Sinch's request; its answer must be a 1000."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/mm7",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": CONTENT_TYPE,
        "HTTP_X_MBLOX_CARRIER_ID": "0001890",
    }
    statuses: list[str] = []
    body = app(environ, lambda status, headers: statuses.append(status))
    answer = b"".join(body)
    if hasattr(body, "close"):  # as a WSGI server does: mm7soap logs and counts the request then
        body.close()
    if not statuses[0].startswith("200") or b"<StatusCode>1000</StatusCode>" not in answer:
        raise RuntimeError(f"not a 1000: {statuses[0]} {answer[:300]!r}")
    return answer


def stages(app: MM7WsgiApp, reference: ModuleType, template: str, number: int) -> list[Stage]:
    """mm7soap's request path in order (indented: parts of the stage above), then the two
    whole calls."""
    ids = count()

    def report() -> bytes:
        n = next(ids)
        return (template % (f"stages-tx-{n}", f"stages-{n}")).encode()

    sample = report()
    read = envelope.read(sample)
    descriptor = app.endpoint.operations[read.namespace][read.operation]
    request = binding.read(descriptor.in_message, read.request)
    inbound = Inbound(raw_envelope=sample, charset=None, client_address="127.0.0.1", operator_id="0001890")
    context = OperationContext(udc=Call(envelope=read, inbound=inbound), in_header=read.transaction_id)
    response = descriptor.function(context, request)  # stores the sample once

    # Endpoint.run stores, so each call needs a report with new ids: read them beforehand.
    reports = [report() for _ in range(number * REPEATS + 1)]
    reads = iter([(envelope.read(body), Inbound(raw_envelope=body)) for body in reports])

    def run() -> object:
        return app.endpoint.run(*next(reads))

    def read_then_run() -> object:
        body = report()
        return app.endpoint.run(envelope.read(body), Inbound(raw_envelope=body))

    def store() -> object:
        n = next(ids)
        row = delivery_report_row(request, read, inbound)
        row.update(transaction_id=f"stages-tx-{n}", message_id=f"stages-{n}")
        row["fingerprint"] = report_fingerprint(row, REPORT_COLUMNS)  # a new report, not a resend
        stored = app.store.save_delivery_report(row)
        assert not stored.duplicate
        return stored

    return [
        ("MIME: the root part of the body", lambda: mime.read_body(CONTENT_TYPE, sample)),
        ("envelope read into canonical Nodes", lambda: envelope.read(sample)),
        ("  XML parsed (lxml, hardened)", lambda: envelope.parse_xml(sample)),
        ("operation run, answer written", run),
        ("  binding: the Spyne request object", lambda: binding.read(descriptor.in_message, read.request)),
        ("  stored row built", lambda: delivery_report_row(request, read, inbound)),
        ("  row stored and committed", store),
        (
            "  answer written",
            lambda: binding.answer_document(
                read.namespace, "DeliveryReportRsp", descriptor.out_message, response, read.transaction_id
            ),
        ),
        ("envelope read, then operation run", read_then_run),
        ("mm7soap: whole WSGI call", lambda: post(app, report())),
        ("reference: whole WSGI call", lambda: post(reference.application, report())),
    ]


def best_microseconds(stage: Callable[[], object], number: int) -> float:
    stage()  # warm: caches, prepared statements, connections
    return min(timeit.repeat(stage, number=number, repeat=REPEATS)) / number * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mm7soap-stages-") as workdir:
        app = MM7WsgiApp(Settings(database=str(Path(workdir) / "mm7soap.db"), synchronous=args.synchronous))
        reference = load_reference(Path(workdir) / "reference.db")
        path = stages(app, reference, sinch_envelope(), args.number)
        timed = [(name, best_microseconds(stage, args.number)) for name, stage in path]
        app.store.close()
        reference.connection().close()
    print(
        f"one Sinch delivery report, in-process, one thread; mm7soap synchronous={args.synchronous},"
        f" reference FULL; best of {REPEATS} × {args.number} calls"
    )
    width = max(len(name) for name, _ in timed)
    for name, microseconds in timed:
        print(f"{name:<{width}}  {microseconds:8.1f} µs")
    whole = dict(timed)
    ratio = whole["mm7soap: whole WSGI call"] / whole["reference: whole WSGI call"]
    print(f"{'mm7soap / reference, time per call':<{width}}  {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

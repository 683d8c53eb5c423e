"""The benchmark's yardstick (benchmarks/reference_app.py) does the work it is compared on:
it answers 1000 only after committing the report's row, with mm7soap's durability."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sqlite3
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import SINCH_CONTENT_TYPE, call, data

ROOT = Path(__file__).parent.parent


def test_reference_app_stores_then_answers_1000(tmp_path, monkeypatch):
    database = tmp_path / "reference.db"
    monkeypatch.setenv("REFERENCE_DATABASE", str(database))
    spec = importlib.util.spec_from_file_location("reference_app", ROOT / "benchmarks" / "reference_app.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    response = call(reference.application, data("sinch_delivery_report.xml"), content_type=SINCH_CONTENT_TYPE)
    assert response.status == 200
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"
    assert response.text("Header/TransactionID") == "tx-20261127-0042"
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT message_id, mm_status FROM delivery_reports").fetchall() == [
            ("481516234200000001", "Retrieved")
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reference.connection().close()


def test_benchmark_loads_and_pacing(monkeypatch):
    """The command's modules import, and each connection count is measured closed-loop, then
    paced so that the connections together offer each --rate reports a second."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run = importlib.import_module("run")
    load = importlib.import_module("load")
    measure = importlib.import_module("measure")
    args = run.parse_args(["--connections", "8,32", "--rate", "400,800"])
    assert measure.loads(args) == [
        *(load.Load(8), load.Load(32)),
        *(load.Load(8, 400.0), load.Load(32, 400.0), load.Load(8, 800.0), load.Load(32, 800.0)),
    ]
    assert load.Load(32, 400.0).gap_ms() == 80.0  # 32 connections, each one report per 80 ms
    assert [item.label for item in measure.loads(run.parse_args(["--rate", "0"]))] == ["max", "max"]
    assert [item.label for item in measure.loads(run.parse_args(["--connections", "32"]))] == ["max", "400/s", "800/s"]


def test_stages_times_mm7soaps_path_and_both_whole_calls(monkeypatch, capsys, tmp_path):
    """benchmarks/stages.py runs, and times only calls that were answered 1000."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    stages = importlib.import_module("stages")
    assert stages.main(["--number", "3", "--synchronous", "OFF"]) == 0
    printed = capsys.readouterr().out.splitlines()
    labels = ["envelope read into canonical Nodes", "  row stored and committed", "envelope read, then operation run"]
    labels.append("mm7soap: whole WSGI call")
    for label in [*labels, "reference: whole WSGI call"]:
        line = next(line for line in printed if line.startswith(label))
        assert float(line.split()[-2]) > 0
    assert printed[-1].startswith("mm7soap / reference")
    reference = stages.load_reference(tmp_path / "reference.db")
    with pytest.raises(RuntimeError, match="not a 1000"):
        stages.post(reference.application, b"<not-a-report/>")
    reference.connection().close()


def test_benchmark_webhook_target_and_receiver(monkeypatch, tmp_path):
    """`run.py --webhook` measures mm7soap forwarding to a receiver between the other two, and
    the receiver (a process of its own) answers 204 and counts each event id once."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run = importlib.import_module("run")
    servers = importlib.import_module("servers")
    receiver_module = importlib.import_module("receiver")
    assert [target.name for target in run.targets(run.parse_args([]))] == ["mm7soap", "reference"]
    names = [target.name for target in run.targets(run.parse_args(["--webhook"]))]
    assert names == ["mm7soap", "mm7soap+webhook", "reference"]
    monkeypatch.setenv("MM7SOAP_WEBHOOK_URL", "http://127.0.0.1:9/elsewhere")
    assert "MM7SOAP_WEBHOOK_URL" not in servers.MM7SOAP.environment(8080, tmp_path)
    extra = servers.webhook_environment("http://127.0.0.1:1/hook")
    environment = servers.MM7SOAP_WEBHOOK.environment(8080, tmp_path, extra)
    assert environment["MM7SOAP_WEBHOOK_URL"] == "http://127.0.0.1:1/hook"
    assert environment["MM7SOAP_DATABASE"] == str(tmp_path / "mm7soap.db")

    receiver = receiver_module.start_receiver()
    try:
        for event_id in ("evt_a", "evt_b", "evt_a"):  # evt_a delivered twice: at least once
            request = urllib.request.Request(
                receiver.url, b'{"type":"delivery_report"}', {"webhook-id": event_id}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 204
        assert receiver.process.pid != os.getpid()
        stats = receiver.stats()
        assert (stats["received"], stats["unique"]) == (3, 2)
        assert sorted(receiver.arrivals()) == ["evt_a", "evt_b"]
    finally:
        receiver.stop()
    assert receiver.process.returncode is not None


def test_benchmark_observability_target_and_ratio(monkeypatch, tmp_path):
    """`run.py --observability` measures mm7soap-quiet (metrics off, no INFO line) after
    mm7soap (which then logs at INFO, as deployed), and prints mm7soap / mm7soap-quiet."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run = importlib.import_module("run")
    report = importlib.import_module("report")
    load = importlib.import_module("load")
    targets = run.targets(run.parse_args(["--observability", "--webhook"]))
    assert [target.name for target in targets] == ["mm7soap", "mm7soap-quiet", "mm7soap+webhook", "reference"]
    environments = {target.name: target.environment(8080, tmp_path) for target in targets}
    assert environments["mm7soap-quiet"]["MM7SOAP_METRICS_ACCESS"] == "off"
    assert environments["mm7soap-quiet"]["MM7SOAP_LOG_LEVEL"] == "warning"
    assert environments["mm7soap"]["MM7SOAP_LOG_LEVEL"] == "info"
    assert environments["mm7soap+webhook"]["MM7SOAP_LOG_LEVEL"] == "info"
    assert environments["reference"]["MM7SOAP_LOG_LEVEL"] == "warning"
    assert environments["mm7soap"].get("MM7SOAP_METRICS_ACCESS") != "off"
    assert [target.name for target in run.targets(run.parse_args([]))] == ["mm7soap", "reference"]

    def line(target: str, rate: float, connections: int = 32) -> object:
        return report.Line(target, load.Load(connections), [rate], 1.0, 2.0, 0, 0, 10, 10, 50.0)

    lines = [line("mm7soap", 900.0), line("mm7soap-quiet", 1000.0), line("mm7soap", 10.0, connections=8)]
    assert report.observability_cost(lines) == ["mm7soap / mm7soap-quiet at 32 connections: 0.90 (median req/s)"]
    assert "no run of both" in report.observability_cost(lines[:1])[0]

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


def test_observability_runs_both_targets_at_once_swapping_which_starts_first(monkeypatch):
    """`observability.py` measures mm7soap (request log at INFO in the chosen format, metrics)
    beside mm7soap-quiet (or, `--control`, mm7soap-quiet beside itself), each round starting
    the other one first, and its two wrk runs in threads started in that order."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    observability = importlib.import_module("observability")
    args = observability.parse_args([])
    assert (args.rounds, args.duration, args.connections, args.log_format) == (10, 10, 32, "text")
    on, off = observability.targets(args)
    logging_on, quiet = (target.environment(8080, ROOT) for target in (on, off))
    assert (logging_on["MM7SOAP_LOG_LEVEL"], logging_on["MM7SOAP_LOG_FORMAT"]) == ("info", "text")
    assert logging_on.get("MM7SOAP_METRICS_ACCESS") != "off"
    assert (quiet["MM7SOAP_METRICS_ACCESS"], quiet["MM7SOAP_LOG_LEVEL"]) == ("off", "warning")
    json_on = observability.targets(observability.parse_args(["--log-format", "json"]))[0]
    assert json_on.environment(8080, ROOT)["MM7SOAP_LOG_FORMAT"] == "json"
    log_only, metrics_only = (
        observability.targets(observability.parse_args(["--only", part]))[0].environment(8080, ROOT)
        for part in ("log", "metrics")
    )
    assert (log_only["MM7SOAP_LOG_LEVEL"], log_only["MM7SOAP_METRICS_ACCESS"]) == ("info", "off")
    assert metrics_only["MM7SOAP_LOG_LEVEL"] == "warning" and metrics_only.get("MM7SOAP_METRICS_ACCESS") != "off"
    assert "MM7SOAP_ACCESS_LOG" not in quiet  # gunicorn's access line, as before issue 19
    silent = observability.targets(observability.parse_args(["--silent"]))[1].environment(8080, ROOT)
    assert silent == {**quiet, "MM7SOAP_ACCESS_LOG": "off"}
    control = observability.targets(observability.parse_args(["--control"]))
    assert [target.name for target in control] == ["quiet-a", "quiet-b"]
    assert {target.settings for target in control} == {off.settings}
    assert observability.in_order(1, (on, off)) == (on, off)
    assert observability.in_order(2, (on, off)) == (off, on)
    started: list[str] = []
    assert observability.together([lambda: started.append("a") or 1, lambda: started.append("b") or 2]) == [1, 2]
    assert started == ["a", "b"]


def test_observability_ratios_by_pairs_of_rounds_and_problems(monkeypatch):
    """Each round's ratios: req/s (mm7soap / quiet) and CPU per report (quiet / mm7soap); each
    two rounds, one of each order, make one figure (their geometric mean), summed up by the
    median and range of those; a run's problem or a replaced worker is a round's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    observability = importlib.import_module("observability")
    measure = importlib.import_module("measure")

    def side(target: str, rate: float, cpu: float, not_1000: int = 0) -> object:
        numbers = {"ok_1000": 1000, "not_1000": not_1000, "errors": 0, "rows_added": 1000}
        measured = measure.Run(1, target, 32, None, rate, 1.0, 2.0, **numbers, abandoned=0, abandoned_stored=0, wrk={})
        return observability.Measured(measured, cpu)

    quiet = side("mm7soap-quiet", 100.0, 1.0)
    ratios = [(0.81, 0.9), (1.0, 0.9), (0.64, 0.49), (1.0, 1.0), (1.0, 0.64), (1.0, 1.0)]  # (req/s, CPU)
    rounds = [
        observability.Paired(number, "", side("mm7soap", 100.0 * rate, 1.0 / cpu), quiet, [])
        for number, (rate, cpu) in enumerate(ratios, start=1)
    ]
    assert [(round(each.ratio, 3), round(each.cpu_ratio, 3)) for each in rounds] == ratios
    summary = observability.summary(rounds)
    assert summary[1].split(":")[1].split() == ["0.900", "(0.800–1.000)"]
    assert summary[2].split(":")[1].split() == ["0.800", "(0.700–0.900)"]
    assert summary[3].endswith("mm7soap 0.640, mm7soap-quiet 1.000")
    assert summary[4].startswith("the request log and the metrics cost 10.0% of req/s, 20.0% by CPU per report")
    assert "noise" in observability.summary(rounds, control=True)[-1]
    assert all(each.problems() == [] for each in rounds)
    failed = observability.Paired(7, "", rounds[0].on, side("mm7soap-quiet", 100.0, 1.0, not_1000=3), [])
    assert "answers other than 1000" in failed.problems()[0]
    replaced = observability.Paired(8, "", rounds[0].on, quiet, ["mm7soap"])
    assert replaced.problems() == ["round 8 mm7soap: a worker was replaced"]
    with pytest.raises(SystemExit):
        observability.parse_args(["--rounds", "5"])


def test_run_observability_runs_observability_py_after_its_table(monkeypatch):
    """`run.py --observability` then runs observability.py at 32 connections with its own
    duration, warm-up, threads and timeout; a script that fails says so in the last line."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run = importlib.import_module("run")
    followed: list[list[str]] = []
    with monkeypatch.context() as patched:
        patched.setattr(run, "follow_up", lambda name, command: followed.append([name, *map(str, command)]) or [])
        run.side_by_side(run.parse_args(["--observability", "--duration", "7", "--warmup", "1"]))
    [[name, script, *arguments]] = followed
    assert (name, script) == ("side by side", "observability.py")
    assert dict(zip(arguments[::2], arguments[1::2], strict=True)) == {
        "--connections": "32",
        "--duration": "7",
        "--warmup": "1",
        "--threads": "2",
        "--timeout": "10",
    }
    assert run.follow_up("missing", ["no-such-script.py"])[-1] == "missing: exit 2"

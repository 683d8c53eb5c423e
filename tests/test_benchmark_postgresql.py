"""The benchmarks on PostgreSQL (issue 20): `run.py --database postgresql://…` measures
mm7soap-postgresql beside mm7soap, each turn on a database of its own that is dropped after,
counts what it stored as on SQLite, and prints no password; `tiers.py` commits batches through
the store's own statements and counts them."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from mm7soap.settings import Settings
from mm7soap.store import Store

ROOT = Path(__file__).parent.parent
URL = "postgresql://bench:s3cret-pw@db.example:5432/mm7soap"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The benchmarks' modules, imported as run.py imports them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return lambda name: importlib.import_module(name)


@pytest.fixture
def cluster(postgresql_admin: psycopg.Connection[Any]) -> str:
    """The test cluster's URL, whose role may create databases (skips without one)."""
    return os.environ["MM7SOAP_TEST_POSTGRESQL_URL"]


def bench_databases(admin: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'mm7soap_bench_%'")}


def store_reports(bench: Any, database: str, tmp_path: Path, count: int) -> list[str]:
    """`count` distinct delivery reports stored by mm7soap's store; their TransactionIDs."""
    tiers: ModuleType = bench("tiers")
    template = bench("handoff").report_template(tmp_path / "template.db")[0]
    rows = tiers.report_rows(template, "t")
    with Store(Settings(database=database)) as store:
        store.migrate()
        stored = [store.save_delivery_report(next(rows)) for _ in range(count)]
    assert not any(found.duplicate for found in stored)
    return [f"t-tx-{n}" for n in range(1, count + 1)]


def test_database_option_adds_mm7soap_postgresql_after_mm7soap(bench, tmp_path):
    run = bench("run")
    targets = run.targets(run.parse_args(["--database", URL]))
    assert [target.name for target in targets] == ["mm7soap", "mm7soap-postgresql", "reference"]
    assert targets[1].cluster == URL and targets[0].cluster is None
    names = [target.name for target in run.targets(run.parse_args(["--database", URL, "--webhook"]))]
    assert names == ["mm7soap", "mm7soap-postgresql", "mm7soap+webhook", "reference"]
    assert [target.name for target in run.targets(run.parse_args([]))] == ["mm7soap", "reference"]
    with pytest.raises(SystemExit):
        run.parse_args(["--database", str(tmp_path / "mm7soap.db")])
    # The server is told the database made for its turn, not a file in its directory.
    environment = targets[1].environment(8080, tmp_path, None, URL.replace("/mm7soap", "/mm7soap_bench_x"))
    assert environment["MM7SOAP_DATABASE"] == "postgresql://bench:s3cret-pw@db.example:5432/mm7soap_bench_x"
    assert targets[0].environment(8080, tmp_path)["MM7SOAP_DATABASE"] == str(tmp_path / "mm7soap.db")


def test_engine_ratio_is_printed_with_database(bench, tmp_path):
    run, report, load = bench("run"), bench("report"), bench("load")

    def line(target: str, rate: float, connections: int = 32) -> object:
        return report.Line(target, load.Load(connections), [rate], 1.0, 2.0, 0, 0, 10, 10, 50.0)

    lines = [line("mm7soap", 1000.0), line("mm7soap-postgresql", 850.0), line("mm7soap-postgresql", 10.0, 8)]
    expected = "mm7soap-postgresql / mm7soap at 32 connections: 0.85 (median req/s; target ≥ 0.8)"
    assert report.engine_ratio(lines) == [expected]
    assert "no run of both" in report.engine_ratio(lines[:1])[0]
    measure = bench("measure")

    def turn(target: str, rate: float) -> object:
        measured = measure.Run(1, target, 32, None, rate, 1.0, 2.0, 10, 0, 0, 10, 0, 0, {"errors": {}})
        return measure.TargetRun(1, target, [measured], {}, [], str(tmp_path), {})

    done = [turn("mm7soap", 1000.0), turn("mm7soap-postgresql", 850.0)]
    arguments = ["--connections", "32", "--rate", "0"]
    assert expected in run.report(run.parse_args([*arguments, "--database", URL]), ["head"], done, [])
    assert expected not in run.report(run.parse_args(arguments), ["head"], done, [])


def test_results_file_keeps_no_password(bench, tmp_path):
    run = bench("run")
    args = run.parse_args(["--database", URL, "--out", str(tmp_path)])
    stem = run.write_results(args, ["a line"], [], [])
    written = stem.with_suffix(".json").read_text()
    assert "s3cret-pw" not in written
    assert json.loads(written)["arguments"]["database"] == "postgresql://bench:***@db.example:5432/mm7soap"
    assert json.loads(written)["arguments"]["out"] == str(tmp_path)


def test_header_names_the_cluster_without_its_password(bench, cluster):
    run = bench("run")
    header = run.header(run.parse_args(["--database", cluster, "--rounds", "1"]))
    password = psycopg.conninfo.conninfo_to_dict(cluster)["password"]
    line = next(line for line in header if line.startswith("mm7soap-postgresql: PostgreSQL "))
    assert "fsync on" in line and "synchronous_commit on" in line
    assert ":***@" in line
    assert not any(password in line for line in header)


def test_rows_are_counted_on_either_engine(bench, database, tmp_path):
    """What run.py reads of a target's database (rows.py) reads a PostgreSQL one alike."""
    rows = bench("rows")
    transactions = store_reports(bench, database, tmp_path, 3)
    assert rows.snapshot(database, [*transactions[:2], "never-sent"]) == (3, 2)
    assert rows.sample_row(database)["mm_status"] == "Retrieved"
    assert rows.outbox_counts(database) == (3, 3)  # none delivered: no forwarder
    rows.settle(database)


def test_a_turn_on_postgresql_gets_a_database_of_its_own_dropped_after(bench, cluster, postgresql_admin, monkeypatch):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    run, measure, servers = bench("run"), bench("measure"), bench("servers")
    args = run.parse_args(["--duration", "1", "--warmup", "0", "--connections", "2", "--rate", "0"])
    before = bench_databases(postgresql_admin)
    in_postgresql: list[int] = []

    def count_then_drop(cluster: str, url: str) -> None:  # what the server stored, read before the drop
        with psycopg.connect(url) as conn:
            in_postgresql.append(conn.execute("SELECT count(*) FROM delivery_reports").fetchone()[0])
        drop_database(cluster, url)

    drop_database = measure.drop_database
    monkeypatch.setattr(measure, "drop_database", count_then_drop)
    turn = measure.run_target(replace(servers.MM7SOAP_POSTGRESQL, cluster=cluster), 1, args)
    assert turn.problems() == []
    assert turn.runs[0].ok_1000 > 0
    assert turn.runs[0].rows_answered == turn.runs[0].ok_1000
    assert in_postgresql and in_postgresql[0] >= turn.runs[0].ok_1000  # the server's writes, counted there
    assert bench_databases(postgresql_admin) == before


def test_only_benchmark_databases_are_dropped(bench, cluster, postgresql_admin):
    databases, servers = bench("databases"), bench("servers")
    url = databases.create_database(cluster)
    name = url.rsplit("/", 1)[1]
    assert name in bench_databases(postgresql_admin)
    with pytest.raises(servers.BenchmarkError, match="not a benchmark database"):
        databases.drop_database(cluster, cluster.rsplit("/", 1)[0] + "/someone_elses")
    databases.drop_database(cluster, url)
    assert name not in bench_databases(postgresql_admin)


def test_tiers_commits_batches_of_the_stores_statements(bench, postgresql_url, tmp_path):
    tiers = bench("tiers")
    template = bench("handoff").report_template(tmp_path / "template.db")[0]
    done = tiers.commit_batches(postgresql_url, template, clients=2, batch=3, seconds=0.5)
    assert done.commits > 0
    assert done.rows == 3 * done.commits == done.stored
    with psycopg.connect(postgresql_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == done.rows
    assert done.failed == [] and "MISMATCH" not in done.line()
    with Store(Settings(database=postgresql_url)) as store:
        store.migrate()
        serving = store.db.execute("SELECT pg_backend_pid()").fetchone()[0]  # open while we look
        backends, background = tiers.cluster_processes(postgresql_url)
        assert serving in backends and background and not set(backends) & set(background)


def test_tiers_counts_the_cpu_of_mm7soap_and_of_its_backends(bench, cluster):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    tiers, databases, servers = bench("tiers"), bench("databases"), bench("servers")
    args = tiers.parse_args(["service", "--database", cluster, "--duration", "1", "--connections", "2"])
    database = databases.create_database(cluster)
    try:
        done = tiers.serve_and_measure(replace(servers.MM7SOAP_POSTGRESQL, cluster=cluster), args, database)
    finally:
        databases.drop_database(cluster, database)
    assert done.problems == [] and done.reports > 0
    assert done.mm7soap_cpu > 0 and done.backends_cpu > 0  # the workers', and PostgreSQL's for them

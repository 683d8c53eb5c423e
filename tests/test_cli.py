"""The `mm7soap` command: every command has help with an example; the read commands work."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from mm7soap.cli import cli
from mm7soap.namespaces import MM7_NAMES
from tests.helpers import call, data

COMMANDS = sorted(cli.commands)


def test_the_commands_exist():
    assert set(COMMANDS) == {"serve", "wsdl", "reports", "report"}


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help_ending_with_an_example(command):
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    help_text = (cli.commands[command] if command else cli).help
    assert help_text and "Example:" in help_text
    assert help_text.rstrip().splitlines()[-1].strip().startswith("mm7soap ")
    assert "Example:" in result.output


def store_examples(app) -> None:
    call(app, data("sinch_delivery_report.xml"), headers={"X-Mblox-Carrier-Id": "0001890"})
    call(app, data("korean_euc_kr.xml"))
    call(app, data("chinese_gb2312.xml"))


def test_reports_lists_newest_first(app, settings):
    store_examples(app)
    result = CliRunner().invoke(cli, ["reports", "--database", settings.database])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["id", "received_at", "message_id"]
    assert [line.split()[2] for line in lines[2:]] == ["CN-MSG-0001", "KR_20261127_000123", "481516234200000001"]


def test_reports_filters_and_json(app, settings):
    store_examples(app)
    runner = CliRunner()
    result = runner.invoke(cli, ["reports", "-d", settings.database, "--status", "Retrieved", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["message_id"] == "481516234200000001"
    assert row["operator_id"] == "0001890"
    assert "tx-20261127-0042" in row["raw_envelope"]
    result = runner.invoke(cli, ["reports", "-d", settings.database, "--recipient", "01012345678", "--json"])
    assert [r["message_id"] for r in json.loads(result.output)] == ["KR_20261127_000123"]
    assert "수신 완료" in json.loads(result.output)[0]["raw_envelope"]
    result = runner.invoke(cli, ["reports", "-d", settings.database, "--since", "2999-01-01", "--json"])
    assert json.loads(result.output) == []


def test_reports_since_compares_times_not_text(app, settings):
    store_examples(app)
    rows = list(app.store.delivery_reports())
    first = min(row["received_at"] for row in rows)
    whole_second = first[:19] + "Z"  # the second it arrived in, without the fraction
    in_paris = (datetime.fromisoformat(first[:19]) + timedelta(hours=1)).isoformat() + "+01:00"
    runner = CliRunner()
    for since in (whole_second, in_paris, first[:19]):
        result = runner.invoke(cli, ["reports", "-d", settings.database, "--since", since, "--json"])
        assert len(json.loads(result.output)) == 3, since
    later = runner.invoke(cli, ["reports", "-d", settings.database, "--since", "2999-01-01T00:00:00+05:00", "--json"])
    assert json.loads(later.output) == []
    bad = runner.invoke(cli, ["reports", "-d", settings.database, "--since", "last tuesday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def test_report_shows_every_report_of_a_message(app, settings):
    store_examples(app)
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "481516234200000001", "-d", settings.database])
    assert result.exit_code == 0
    assert "481516234200000001" in result.output and "Retrieved" in result.output
    missing = runner.invoke(cli, ["report", "nope", "-d", settings.database])
    assert missing.exit_code == 1
    assert "no report for MessageID nope" in missing.output


def test_reports_reads_the_database_from_the_environment(app, settings):
    store_examples(app)
    result = CliRunner().invoke(cli, ["reports", "--json"], env={"MM7SOAP_DATABASE": settings.database})
    assert len(json.loads(result.output)) == 3


def test_wsdl_writes_one_file_per_namespace(tmp_path):
    result = CliRunner().invoke(cli, ["wsdl", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.wsdl" for n in MM7_NAMES)


def test_click_group_is_the_entry_point():
    assert isinstance(cli, click.Group)

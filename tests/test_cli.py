"""The `mm7soap` command: every command has help with an example; the read commands work."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import click
import pytest
from click.testing import CliRunner

from mm7soap.cli import cli
from mm7soap.namespaces import MM7_NAMES
from mm7soap.settings import Settings
from tests.backends import only_postgresql
from tests.helpers import call, data, template


def command_paths(group: click.Group, above: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command, a group's commands included, as the words that run it."""
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((*above, name))
        if isinstance(command, click.Group):
            found.extend(command_paths(command, (*above, name)))
    return found


COMMANDS = command_paths(cli)


def test_the_commands_exist():
    assert {" ".join(path) for path in COMMANDS} == {
        "serve",
        "wsdl",
        "reports",
        "report",
        "messages",
        "message",
        "send",
        "forward",
        "outbox",
        "outbox list",
        "outbox retry",
        "outbox prune",
        "stats",
        "prune",
        "copy",
    }


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda path: " ".join(path) or "mm7soap")
def test_every_command_has_help_ending_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    help_text = command.help
    assert help_text and "Example:" in help_text
    assert help_text.rstrip().splitlines()[-1].strip().startswith("mm7soap ")
    assert "Example:" in result.output


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test of a database here runs on SQLite and on PostgreSQL (tests/conftest.py)."""
    return backend_settings


def store_examples(app) -> None:
    call(app, data("sinch_delivery_report.xml"), headers={"X-Mblox-Carrier-Id": "0001890"})
    call(app, data("korean_euc_kr.xml"))
    call(app, data("chinese_gb2312.xml"))


def test_reports_lists_newest_first(app, settings):
    store_examples(app)
    result = CliRunner().invoke(cli, ["reports", "--database", settings.database])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["kind", "id", "received_at", "message_id"]
    assert [line.split()[3] for line in lines[2:]] == ["CN-MSG-0001", "KR_20261127_000123", "481516234200000001"]


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


def test_report_lists_read_replies_beside_delivery_reports(app, settings):
    store_examples(app)
    assert call(app, data("cli_read_reply.xml")).text("Body/ReadReplyRsp/Status/StatusCode") == "1000"
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "481516234200000001", "-d", settings.database])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [(row[0], row[6]) for row in rows] == [("ReadReply", "Read"), ("DeliveryReport", "Retrieved")]
    only = runner.invoke(cli, ["reports", "-d", settings.database, "--kind", "ReadReply", "--json"])
    assert [(r["kind"], r["mm_status"]) for r in json.loads(only.output)] == [("ReadReply", "Read")]
    delivery = runner.invoke(cli, ["reports", "-d", settings.database, "--kind", "DeliveryReport", "--json"])
    assert {r["kind"] for r in json.loads(delivery.output)} == {"DeliveryReport"}
    assert len(json.loads(delivery.output)) == 3


def test_reports_reads_the_database_from_the_environment(app, settings):
    store_examples(app)
    result = CliRunner().invoke(cli, ["reports", "--json"], env={"MM7SOAP_DATABASE": settings.database})
    assert len(json.loads(result.output)) == 3


MO_PICTURE = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n"


def post_mo(app, sender: str, subject: str, linked_id: str) -> None:
    envelope = template(
        "cli_deliver_template.xml",
        transaction_id=f"tx-{linked_id}",
        linked_id=linked_id,
        sender=sender,
        subject=subject,
    )
    content = [
        b"Content-Type: image/jpeg",
        b"Content-ID: <picture>",
        b"Content-Disposition: attachment; filename=../../holiday.jpg",
        b"Content-Transfer-Encoding: binary",
        b"",
        MO_PICTURE,
        b"--inner",
        b"Content-Type: text/plain; charset=utf-8",
        b"",
        "Grüße".encode(),
        b"--inner--",
    ]
    body = b"\r\n".join(
        [
            b"--outer",
            b"Content-Type: text/xml; charset=utf-8",
            b"Content-ID: <soap-start>",
            b"",
            envelope,
            b"--outer",
            b"Content-Type: multipart/mixed; boundary=inner",
            b"Content-ID: <default.cid>",
            b"",
            b"--inner",
            *content,
            b"--outer--",
            b"",
        ]
    )
    ctype = 'multipart/related; type="text/xml"; boundary=outer; start="<soap-start>"'
    response = call(app, body, content_type=ctype, headers={"X-Mblox-Carrier-Id": "0001470"})
    assert response.text("Body/DeliverRsp/Status/StatusCode") == "1000", response.body


def test_messages_lists_and_filters(app, settings):
    post_mo(app, "15551230001", "first", "mo-1")
    post_mo(app, "15551230002", "second", "mo-2")
    runner = CliRunner()
    result = runner.invoke(cli, ["messages", "-d", settings.database])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "id",
        "received_at",
        "sender",
        "recipients",
        "subject",
        "part_count",
        "content_bytes",
        "operator_id",
    ]
    assert [line.split()[2:5] for line in lines[2:]] == [
        ["15551230002", "To:24680", "second"],
        ["15551230001", "To:24680", "first"],
    ]
    filtered = runner.invoke(cli, ["messages", "-d", settings.database, "--sender", "15551230001", "--json"])
    [row] = json.loads(filtered.output)
    assert row["subject"] == "first" and row["part_count"] == 2 and row["operator_id"] == "0001470"
    assert row["recipients"] == [{"list": "To", "kind": "ShortCode", "address": "24680", "display_only": False}]
    assert "tx-mo-1" in row["raw_envelope"]
    later = runner.invoke(cli, ["messages", "-d", settings.database, "--since", "2999-01-01", "--json"])
    assert json.loads(later.output) == []


def test_message_shows_parts_and_saves_them_safely(app, settings, tmp_path):
    post_mo(app, "15551230001", "picture", "mo-3")
    [row] = list(app.store.messages())
    runner = CliRunner()
    shown = runner.invoke(cli, ["message", str(row["id"]), "-d", settings.database])
    assert shown.exit_code == 0, shown.output
    assert "subject" in shown.output and "picture" in shown.output and "image/jpeg" in shown.output
    folder = tmp_path / "parts"
    saved = runner.invoke(cli, ["message", str(row["id"]), "-d", settings.database, "--save-parts", str(folder)])
    assert saved.exit_code == 0, saved.output
    # the sender's "../../holiday.jpg" cannot leave the folder
    assert sorted(p.name for p in folder.iterdir()) == ["1-holiday.jpg", "2-part.txt"]
    assert (folder / "1-holiday.jpg").read_bytes() == MO_PICTURE
    assert (folder / "2-part.txt").read_bytes() == "Grüße".encode()
    assert str(folder / "1-holiday.jpg") in saved.output
    as_json = runner.invoke(cli, ["message", str(row["id"]), "-d", settings.database, "--json"])
    details = json.loads(as_json.output)
    assert [part["content_type"] for part in details["parts"]] == ["image/jpeg", "text/plain"]
    assert details["parts"][0]["size"] == len(MO_PICTURE)
    missing = runner.invoke(cli, ["message", "999", "-d", settings.database])
    assert missing.exit_code == 1 and "no message 999" in missing.output


def test_wsdl_writes_one_file_per_namespace(tmp_path):
    result = CliRunner().invoke(cli, ["wsdl", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.wsdl" for n in MM7_NAMES)


def test_click_group_is_the_entry_point():
    assert isinstance(cli, click.Group)


@pytest.mark.parametrize("command", [["reports"], ["report", "4711"], ["messages"], ["message", "1"]])
def test_a_read_command_refuses_a_missing_database_and_creates_none(tmp_path, command):
    missing = tmp_path / "nowhere.db"
    result = CliRunner().invoke(cli, [*command, "--database", str(missing)])
    assert result.exit_code == 2
    assert f"no database at {missing}" in result.output
    assert not missing.exists()


READ_COMMANDS = [
    ["reports"],
    ["report", "4711"],
    ["messages"],
    ["message", "1"],
    ["stats"],
    ["outbox"],
    ["outbox", "list"],
    ["prune", "--older-than", "90d"],
]


@only_postgresql
@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("wrong", ["database", "password"])
def test_a_postgresql_database_it_cannot_use_is_said_in_one_line_without_the_password(settings, command, wrong):
    url = urlsplit(settings.database)
    assert url.password
    if wrong == "database":
        bad, said = url._replace(path="/no_such_database"), 'database "no_such_database" does not exist'
    else:
        bad, said = url._replace(netloc=url.netloc.replace(url.password, "not-the-password")), "password authentication"
    result = CliRunner().invoke(cli, [*command, "--database", bad.geturl()])
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: cannot connect to postgresql://{url.username}:***@") and said in line
    assert url.password not in line and "not-the-password" not in line


def test_a_read_command_with_bad_settings_says_which_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MM7SOAP_WEBHOOK_URL", "ftp://example")
    result = CliRunner().invoke(cli, ["reports", "--database", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: bad settings: webhook_url must be an http:// or https:// URL with a host"


@pytest.mark.parametrize("name", ["send", "serve"])
def test_every_option_of_send_and_serve_is_described(name):
    command = cli.commands[name]
    assert [p.name for p in command.params if isinstance(p, click.Option) and not p.help] == []


def test_send_help_shows_a_read_reply_an_mo_and_a_burst():
    result = CliRunner().invoke(cli, ["send", "--help"])
    examples = result.output.split("Example:", 1)[1].split("Options:", 1)[0]
    for flag in ("--read-reply", "--deliver", "--count", "--message-id"):
        assert flag in examples


def test_serve_help_names_every_variable_it_obeys():
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=10_000)
    for setting in fields(Settings):
        assert f"MM7SOAP_{setting.name.upper()}" in result.output

"""`mm7soap outbox` and `mm7soap forward` (issue 18): the outbox looked after by hand, on a
database filled by the real app and emptied by the real forwarder into a receiver that checks
every signature with the Standard Webhooks library."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook

from mm7soap import outbox_admin
from mm7soap.cli import cli
from mm7soap.forwarder import Forwarder
from mm7soap.schema import MIGRATIONS
from mm7soap.settings import Settings
from mm7soap.store import Store
from mm7soap.times import utc_timestamp as now_text
from tests.backends import only_postgresql
from tests.helpers import call
from tests.statements import trace_statements
from tests.test_cli import post_mo
from tests.test_stored_right import read_reply, report

SECRET = "whsec_" + base64.b64encode(b"mm7soap outbox test secret!!").decode()


class Receiver:
    """A webhook receiver (WSGI): verifies each delivery, keeps it, answers `status`."""

    def __init__(self) -> None:
        self.webhook = Webhook(SECRET)
        self.status = 204
        self.received: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, event)
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            event = self.webhook.verify(body, headers)  # raises unless signed with SECRET
            with self.lock:
                self.received.append((headers["webhook-id"], event))
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", [("Content-Length", "0")])
        return [b""]

    def sequences(self) -> list[int]:
        with self.lock:
            return [event["sequence"] for _, event in self.received]


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Every test of a database here runs on SQLite and on PostgreSQL (tests/conftest.py)."""
    return backend_settings


@pytest.fixture
def receiver(serve_wsgi: Any) -> tuple[Receiver, str]:
    found = Receiver()
    return found, serve_wsgi(found).replace("/mm7", "/events-in")


def forward(settings: Settings, url: str, max_age: float = 3600.0) -> None:
    """The real forwarder, until nothing is pending (max_age 0: one failure is final)."""
    webhook = replace(settings, webhook_url=url, webhook_secret=SECRET, webhook_max_age=max_age).checked()
    forwarder = Forwarder(webhook)
    try:
        forwarder.run(until_drained=True)
    finally:
        forwarder.close()


def store_report(app: Any, tx: str, status: str = "Retrieved", message_id: str = "msg-1") -> None:
    body = report(tx, status, MessageID=f"<MessageID>{message_id}</MessageID>")
    assert call(app, body).text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"


def outbox(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(cli, ["outbox", *args, "-d", settings.database])


def states(app: Any) -> dict[int, str]:
    return dict(app.store.db.execute("SELECT sequence, state FROM outbox ORDER BY sequence").fetchall())


@pytest.fixture
def mixed(app: Any, settings: Settings, receiver: tuple[Receiver, str]) -> Receiver:
    """Events 1–2 delivered, 3–4 failed (the receiver answered 500), 5 pending."""
    found, url = receiver
    store_report(app, "tx-1", "Forwarded", "msg-1")
    assert call(app, read_reply("tx-rr", "Read")).text("Body/ReadReplyRsp/Status/StatusCode") == "1000"
    forward(settings, url)
    store_report(app, "tx-3", "Retrieved", "msg-3")
    post_mo(app, "15551230001", "hello", "mo-4")
    found.status = 500
    forward(settings, url, max_age=0)
    store_report(app, "tx-5", "Retrieved", "msg-5")
    assert states(app) == {1: "delivered", 2: "delivered", 3: "failed", 4: "failed", 5: "pending"}
    return found


def test_the_summary_counts_states_ages_and_errors(app, settings, mixed):
    found = outbox_admin.summary(app.store.db)
    assert found.counts == {"pending": 1, "delivered": 2, "failed": 2}
    assert found.oldest_pending_sequence == 5 and 0 <= found.oldest_pending_age < 60
    [error] = found.errors
    assert (error.error, error.count) == ("HTTP 500", 2) and error.newest.startswith("20")

    result = outbox(settings)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["pending", "1", "oldest:", "sequence", "5,"]
    assert lines[1].split() == ["delivered", "2"] and lines[2].split() == ["failed", "2"]
    assert lines[-1].split()[0] == "2" and lines[-1].endswith("HTTP 500")
    as_json = json.loads(outbox(settings, "--json").output)
    assert as_json["counts"] == {"pending": 1, "delivered": 2, "failed": 2}
    assert as_json["oldest_pending"]["sequence"] == 5
    assert as_json["errors"][0]["error"] == "HTTP 500" and as_json["errors"][0]["count"] == 2


def test_the_summary_shows_the_newest_distinct_errors(app, settings, receiver):
    found, url = receiver
    store_report(app, "tx-1", "Retrieved", "msg-1")
    found.status = 503
    forward(settings, url, max_age=0)
    store_report(app, "tx-2", "Retrieved", "msg-2")
    forward(settings, "http://127.0.0.1:9/closed", max_age=0)  # the discard port: refused
    errors = outbox_admin.summary(app.store.db).errors
    assert [e.error.split(":")[0] for e in errors] == ["ConnectError", "HTTP 503"]
    assert [e.error for e in outbox_admin.summary(app.store.db, errors=1).errors] == [errors[0].error]


def test_an_empty_outbox(app, settings):
    result = outbox(settings)
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["pending", "0"],
        ["delivered", "0"],
        ["failed", "0"],
    ]
    assert json.loads(outbox(settings, "--json").output)["oldest_pending"] is None


def test_list_is_newest_first_by_state_and_as_json(app, settings, mixed):
    result = outbox(settings, "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == list(
        ("sequence", "state", "type", "source_id", "order_key", "created_at", "attempts", "last_error")
    )
    assert [line.split()[:3] for line in lines[2:]] == [
        ["5", "pending", "delivery_report"],
        ["4", "failed", "message"],
        ["3", "failed", "delivery_report"],
        ["2", "delivered", "read_reply"],
        ["1", "delivered", "delivery_report"],
    ]
    assert lines[2].split()[6] == "0"  # no attempt yet is 0, not blank
    failed = outbox(settings, "list", "--state", "failed", "--limit", "1", "--json")
    [row] = json.loads(failed.output)
    assert (row["sequence"], row["attempts"], row["last_status"], row["last_error"]) == (4, 1, 500, "HTTP 500")
    assert row["event_id"].startswith("evt_") and row["order_key"] is None  # an MO has no MessageID
    bad = outbox(settings, "list", "--state", "lost")
    assert bad.exit_code == 2


def test_retry_a_failed_event_delivers_it_late_with_its_own_id_and_sequence(app, settings, mixed, receiver):
    failed_id = app.store.db.execute("SELECT event_id FROM outbox WHERE sequence = 3").fetchone()[0]
    result = outbox(settings, "retry", "3")
    assert result.exit_code == 0, result.output
    assert "event 3 was failed; it is pending again" in result.output
    assert states(app)[3] == "pending"
    mixed.status = 204
    del mixed.received[:]
    forward(settings, receiver[1])
    assert states(app) == {1: "delivered", 2: "delivered", 3: "delivered", 4: "failed", 5: "delivered"}
    assert sorted(mixed.sequences()) == [3, 5]  # msg-3 and msg-5 do not wait for each other
    [(webhook_id, event)] = [found for found in mixed.received if found[1]["sequence"] == 3]
    assert webhook_id == failed_id == event["id"]


def test_retry_failed_makes_every_failed_event_pending(app, settings, mixed, receiver):
    result = outbox(settings, "retry", "--failed")
    assert result.exit_code == 0, result.output
    assert "2 failed events made pending again" in result.output
    row = app.store.db.execute("SELECT next_attempt_at, lease_until FROM outbox WHERE sequence = 4").fetchone()
    assert row[0] <= now_text() and row[1] is None
    mixed.status = 204
    forward(settings, receiver[1])
    assert set(states(app).values()) == {"delivered"}
    again = outbox(settings, "retry", "--failed")
    assert again.exit_code == 0 and "0 failed events made pending again" in again.output


def test_retry_a_delivered_event_sends_it_again_with_the_same_webhook_id(app, settings, mixed, receiver):
    first = [event for event in mixed.received if event[1]["sequence"] == 1]
    result = outbox(settings, "retry", "1")
    assert result.exit_code == 0, result.output
    assert "event 1 was delivered; it is pending again" in result.output
    mixed.status = 204
    forward(settings, receiver[1])
    again = [event for event in mixed.received if event[1]["sequence"] == 1]
    assert len(again) == len(first) + 1 and again[-1][0] == first[0][0]
    assert again[-1][1]["data"] == first[0][1]["data"]


def test_retry_leaves_a_pending_event_and_names_what_is_missing(app, settings, mixed):
    before = app.store.db.execute("SELECT * FROM outbox WHERE sequence = 5").fetchone()
    result = outbox(settings, "retry", "5")
    assert result.exit_code == 0 and "event 5 is already pending: nothing changed" in result.output
    assert app.store.db.execute("SELECT * FROM outbox WHERE sequence = 5").fetchone() == before
    missing = outbox(settings, "retry", "99")
    assert missing.exit_code == 1 and "no event 99" in missing.output
    for args in ((), ("3", "--failed")):
        wrong = outbox(settings, "retry", *args)
        assert wrong.exit_code == 2 and "give one SEQUENCE or --failed" in wrong.output
    with pytest.raises(ValueError):
        outbox_admin.retry(app.store.db)


def backdate(app: Any, days: float, where: str) -> None:
    old = now_text(datetime.now(timezone.utc) - timedelta(days=days))
    app.store.db.conn.execute(
        f"UPDATE outbox SET created_at = ?, delivered_at = CASE WHEN delivered_at IS NULL THEN NULL ELSE ? END"
        f" WHERE {where}",
        [old, old],
    )


def test_prune_deletes_only_delivered_events_older_than_the_age(app, settings, mixed):
    backdate(app, 30, "sequence IN (1, 3, 4, 5)")  # old: one delivered, two failed, one pending
    result = outbox(settings, "prune", "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert "deleted 1 delivered event" in result.output
    assert states(app) == {2: "delivered", 3: "failed", 4: "failed", 5: "pending"}
    # the report the pruned event announced is still stored
    assert [row["message_id"] for row in app.store.delivery_reports()] == ["msg-5", "msg-3", "msg-1"]
    everything = outbox(settings, "prune", "--older-than", "0s")
    assert "deleted 1 delivered event" in everything.output
    assert states(app) == {3: "failed", 4: "failed", 5: "pending"}
    assert "deleted 0 delivered events" in outbox(settings, "prune", "--older-than", "0s").output


def test_prune_never_reuses_a_sequence(app, settings, mixed, receiver):
    mixed.status = 204
    forward(settings, receiver[1])
    outbox(settings, "prune", "--older-than", "0s")
    assert states(app) == {3: "failed", 4: "failed"}
    store_report(app, "tx-6", "Retrieved", "msg-6")
    assert max(states(app)) == 6


def test_prune_deletes_in_batches_of_short_transactions(app, settings, receiver):
    for number in range(25):
        store_report(app, f"tx-{number}", "Retrieved", f"msg-{number}")
    forward(settings, receiver[1])
    store_report(app, "tx-late", "Retrieved", "msg-late")  # pending: never deleted
    begun: list[str] = []
    with Store(settings) as store:
        trace_statements(store.db, lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
        assert outbox_admin.prune(store.db, 0, batch=10, pause=0) == 25
    assert len(begun) == 3  # 10, 10, 5
    assert states(app) == {26: "pending"}
    with pytest.raises(ValueError):
        outbox_admin.prune(app.store.db, 0, batch=0)


def test_prune_lets_reports_be_stored_between_its_batches(app, settings, receiver):
    for number in range(40):
        store_report(app, f"tx-{number}", "Retrieved", f"msg-{number}")
    forward(settings, receiver[1])
    stored_during: list[int] = []
    with Store(settings) as store:

        def between(sql: str) -> None:  # before each batch's transaction, an MMSC's report is stored
            if sql.startswith("BEGIN") and len(stored_during) < 3:
                stored_during.append(len(stored_during))
                store_report(app, f"tx-during-{len(stored_during)}", "Retrieved", f"msg-d{len(stored_during)}")

        trace_statements(store.db, between)
        assert outbox_admin.prune(store.db, 0, batch=10, pause=0) == 40
    assert list(states(app).values()) == ["pending"] * 3


def test_prune_with_the_batch_option(app, settings, receiver):
    for number in range(12):
        store_report(app, f"tx-{number}", "Retrieved", f"msg-{number}")
    forward(settings, receiver[1])
    result = outbox(settings, "prune", "--older-than", "0s", "--batch", "5")
    assert result.exit_code == 0 and "deleted 12 delivered events" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1.5h", 5400), ("2D", 172800)]
)
def test_ages(text, seconds):
    assert outbox_admin.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["7", "7w", "", "-1d", "d", "1 day", "7d7d"])
def test_not_ages(app, settings, text):
    with pytest.raises(ValueError):
        outbox_admin.parse_age(text)
    result = outbox(settings, "prune", "--older-than", text)
    assert result.exit_code == 2 and "--older-than" in result.output


def test_age_text():
    assert [outbox_admin.age_text(s) for s in (5, 125, 3 * 3600 + 1200, 2 * 86400 + 4 * 3600)] == [
        "5s",
        "2m 5s",
        "3h 20m",
        "2d 4h",
    ]


@pytest.mark.parametrize(
    "args", [(), ("--json",), ("list",), ("retry", "1"), ("retry", "--failed"), ("prune", "--older-than", "7d")]
)
def test_the_outbox_commands_refuse_a_missing_database_and_create_none(tmp_path, args):
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, ["outbox", *args, "-d", str(missing)])
    assert result.exit_code == 2
    assert f"no database at {missing}" in result.output
    assert not missing.exists()
    from_env = CliRunner().invoke(cli, ["outbox", *args], env={"MM7SOAP_DATABASE": str(missing)})
    assert from_env.exit_code == 2 and not missing.exists()


def test_a_subcommand_takes_the_database_given_to_the_group(app, settings, mixed):
    result = CliRunner().invoke(cli, ["outbox", "-d", settings.database, "list", "--state", "pending"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[2:]] == ["5"]


def test_a_database_not_yet_migrated_has_an_empty_outbox(tmp_path):
    path = tmp_path / "old.db"
    settings = Settings(database=str(path))
    with Store(settings) as store:
        for migration in MIGRATIONS[:5]:
            migration(store.db)
        assert outbox_admin.summary(store.db).counts == {"pending": 0, "delivered": 0, "failed": 0}
        assert outbox_admin.events(store.db) == []
        assert outbox_admin.retry(store.db, failed=True).count == 0
        assert outbox_admin.prune(store.db, 0) == 0
    assert CliRunner().invoke(cli, ["outbox", "-d", str(path)]).exit_code == 0


@only_postgresql
def test_a_postgresql_database_without_tables_has_an_empty_outbox(settings):
    """A database made for mm7soap that no instance has written yet: the commands read it as
    empty, and create nothing in it."""
    assert outbox(settings).output.split() == ["pending", "0", "delivered", "0", "failed", "0"]
    assert outbox(settings, "list").exit_code == 0
    assert "0 failed events made pending again" in outbox(settings, "retry", "--failed").output
    assert "deleted 0 delivered events" in outbox(settings, "prune", "--older-than", "0s").output
    with Store(settings) as store:
        assert store.db.table_names() == []


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database" * 100)
    result = CliRunner().invoke(cli, ["outbox", "-d", str(path)])
    assert result.exit_code == 1 and f"cannot use the database {path}" in result.output


def test_forward_without_a_webhook_url(app, settings):
    result = CliRunner().invoke(cli, ["forward", "-d", settings.database], env={"MM7SOAP_WEBHOOK_URL": ""})
    assert result.exit_code == 2
    assert "no webhook URL: set MM7SOAP_WEBHOOK_URL" in result.output


@pytest.mark.parametrize(
    ("secret", "said"),
    [
        ("", "webhook_secret is not"),
        ("whsec_c2hvcnQ=", "shorter than 16 bytes"),
        ("whsec_not base64 at all!!", "not base64"),
    ],
)
def test_forward_with_a_bad_secret_says_why_without_the_secret(app, settings, secret, said):
    env = {"MM7SOAP_WEBHOOK_URL": "https://app.example.com/in", "MM7SOAP_WEBHOOK_SECRET": secret}
    result = CliRunner().invoke(cli, ["forward", "-d", settings.database], env=env)
    assert result.exit_code == 2
    assert "bad settings" in result.output and said in result.output
    assert not secret or secret not in result.output


def test_forward_with_a_bad_url_or_a_missing_database(app, settings, tmp_path):
    env = {"MM7SOAP_WEBHOOK_URL": "app.example.com/in", "MM7SOAP_WEBHOOK_SECRET": SECRET}
    result = CliRunner().invoke(cli, ["forward", "-d", settings.database], env=env)
    assert result.exit_code == 2 and "webhook_url must be an http:// or https:// URL" in result.output
    assert SECRET not in result.output
    missing = tmp_path / "typo.db"
    env["MM7SOAP_WEBHOOK_URL"] = "https://app.example.com/in"
    result = CliRunner().invoke(cli, ["forward", "-d", str(missing)], env=env)
    assert result.exit_code == 2 and f"no database at {missing}" in result.output
    assert not missing.exists()


def test_the_forwarder_beside_gunicorn_runs_niced_and_mm7soap_forward_does_not(app, settings, receiver):
    """`python -m mm7soap.forwarder` is what the master starts beside its workers: the MMSC's
    answers must come first on those cores."""
    _, url = receiver
    env = {**os.environ, "MM7SOAP_DATABASE": settings.database, "MM7SOAP_WEBHOOK_URL": url}
    env["MM7SOAP_WEBHOOK_SECRET"] = SECRET
    beside = [sys.executable, "-m", "mm7soap.forwarder"]
    alone = [sys.executable, "-c", "from mm7soap.cli import cli; cli()", "forward"]
    assert [niceness_of(command, env) - os.nice(0) for command in (beside, alone)] == [10, 0]


def niceness_of(command: list[str], env: dict[str, str]) -> int:
    """The niceness of `command` once it forwards (read from /proc), then it is stopped."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = b""
        while b"forwarding events to" not in output:
            line = process.stdout.readline() if process.stdout else b""
            assert line, f"{command} ended: {output.decode()}"
            output += line
        return int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


def stopped(process: subprocess.Popen[bytes]) -> bytes:
    """Its output once SIGTERM has stopped it.  One that does not stop within 20 s fails the
    test with where each of its threads was (faulthandler, on SIGABRT), and is not left running."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            output = process.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
        raise AssertionError(
            f"the forwarder did not stop within 20 s of SIGTERM:\n{output.decode(errors='replace')}"
        ) from None


def test_forward_runs_the_forwarder_until_sigterm(app, settings, receiver):
    found, url = receiver
    store_report(app, "tx-1", "Forwarded", "msg-1")
    store_report(app, "tx-2", "Retrieved", "msg-1")
    post_mo(app, "15551230001", "hello", "mo-1")
    env = {
        **os.environ,
        "MM7SOAP_WEBHOOK_URL": url.replace("http://", "http://user:pa55word@"),
        "MM7SOAP_WEBHOOK_SECRET": SECRET,
        "PYTHONFAULTHANDLER": "1",  # a SIGABRT prints every thread's stack: see stopped()
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from mm7soap.cli import cli; cli()", "forward", "-d", settings.database],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while len(found.sequences()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        store_report(app, "tx-3", "Read", "msg-3")  # one committed while it runs
        while len(found.sequences()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        output = stopped(process)
    assert process.returncode == 0, output
    sequences = found.sequences()
    assert sorted(sequences) == [1, 2, 3, 4]
    assert sequences.index(1) < sequences.index(2)  # msg-1's Forwarded before its Retrieved
    types = {event["sequence"]: event["type"] for _, event in found.received}
    assert types == {1: "delivery_report", 2: "delivery_report", 3: "message", 4: "delivery_report"}
    assert set(states(app).values()) == {"delivered"}
    text = output.decode()
    assert "forwarding events to" in text and "***" in text
    assert "pa55word" not in text and SECRET not in text
    password = urlsplit(settings.database).password if "://" in settings.database else None
    assert password is None or password not in text

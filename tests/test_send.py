"""`mm7soap send`: an MMSC in a command, passing against mm7soap and naming what a broken
endpoint gets wrong."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner

from mm7soap import mmsc
from mm7soap.cli import cli
from mm7soap.mmsc import FORMATS, MobileOriginated, Report, Request, Stamps, http_body
from mm7soap.namespaces import MM7_NAMESPACES
from mm7soap.transport import MM7WsgiApp

REPORT = ["--message-id", "4711000000000001", "--recipient", "15551230001", "--sender", "24680"]
CHECKS = [
    "HTTP 200",
    "Content-Type text/xml",
    "SOAP 1.1 Envelope",
    "DeliveryReportRsp in the request's namespace",
    "MM7Version echoed",
    "StatusCode 1000",
    "TransactionID echoed",
    'TransactionID mustUnderstand="1"',
]


def send(*args: str) -> Any:
    return CliRunner().invoke(cli, ["send", *args])


def test_a_delivery_report_sent_as_sinch_sends_it_passes_every_check(app, live_url):
    result = send(live_url, *REPORT, "--status", "Forwarded", "--carrier-id", "0001890", "--transaction-id", "tx-1")
    assert result.exit_code == 0, result.output
    assert [line.split("  ")[1] for line in result.output.splitlines() if line.startswith("PASS")] == CHECKS
    assert "FAIL" not in result.output
    [row] = list(app.store.delivery_reports())
    assert (row["transaction_id"], row["mm_status"], row["operator_id"]) == ("tx-1", "Forwarded", "0001890")
    assert (row["sender"], row["recipient"], row["namespace"]) == ("24680", "15551230001", "REL-6-MM7-1-4")
    assert row["date_utc"] is not None


def test_sinch_framing_by_default():
    request = Request(Report("m", "15551230001", "24680", "Retrieved"), transaction_id="t")
    content_type, body = http_body(request)
    assert content_type == 'multipart/related; type="text/xml";'
    assert body.startswith(b"<?xml") and b"<DeliveryReportReq>" in body
    assert b'<TransactionID soap-env:mustUnderstand="1">t</TransactionID>' in body


@pytest.mark.parametrize("wire_format", FORMATS)
@pytest.mark.parametrize("name", ["REL-6-MM7-1-4", "REL-5-MM7-1-0"])
def test_every_format_and_namespace(app, live_url, wire_format, name):
    result = send(live_url, *REPORT, "--format", wire_format, "--namespace", name, "--read-reply")
    assert result.exit_code == 0, result.output
    [row] = list(app.store.read_replies())
    assert row["namespace"] == name and row["mm_status"] == "Read"
    assert row["mm7_version"] == ("6.8.0" if name == "REL-6-MM7-1-4" else "5.3.0")


def test_namespace_by_uri_and_an_explicit_version(app, live_url):
    uri = MM7_NAMESPACES["REL-5-MM7-1-3"]
    result = send(live_url, *REPORT, "--namespace", uri, "--version", "5.6.0")
    assert result.exit_code == 0, result.output
    assert [(r["namespace"], r["mm7_version"]) for r in app.store.delivery_reports()] == [("REL-5-MM7-1-3", "5.6.0")]


def test_deliver_carries_the_files_as_attachments(app, live_url, tmp_path):
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(bytes(range(256)) * 64 + b"\r\n--mm7-\r\n")
    note = tmp_path / "note.txt"
    note.write_text("Grüße", encoding="utf-8")
    args = ["--deliver", str(picture), str(note), "--sender", "15551230001", "--recipient", "24680"]
    result = send(live_url, *args, "--subject", "Hi", "--linked-id", "mo-7")
    assert result.exit_code == 0, result.output
    assert "PASS  DeliverRsp in the request's namespace" in result.output
    [message] = list(app.store.messages())
    assert (message["sender"], message["subject"], message["linked_id"]) == ("15551230001", "Hi", "mo-7")
    assert message["content_found_by"] == "href"
    parts = app.store.message_parts(message["id"], with_data=True)
    assert [(p["filename"], p["content_type"], p["data"]) for p in parts] == [
        ("photo.jpg", "image/jpeg", picture.read_bytes()),
        ("note.txt", "text/plain", note.read_bytes()),
    ]


def test_deliver_without_files_is_a_plain_envelope():
    content_type, body = http_body(Request(MobileOriginated("15551230001", "24680"), wire_format="text-xml"))
    assert content_type == "text/xml; charset=utf-8" and b"<Content" not in body


def test_count_and_concurrency_use_fresh_transaction_ids(app, live_url):
    result = send(live_url, *REPORT, "--count", "24", "--concurrency", "4", "--transaction-id", "burst")
    assert result.exit_code == 0, result.output
    assert re.match(r"24 sent, 24 succeeded, 0 failed in [\d.]+ s", result.output)
    assert "FAIL" not in result.output


# A clock that stands still: every request of a burst sent in the same millisecond.
STOPPED = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone.utc)
KINDS = {
    "DeliveryReportReq": ([], lambda app: app.store.delivery_reports()),
    "ReadReplyReq": (["--read-reply"], lambda app: app.store.read_replies()),
    "DeliverReq": (["--deliver"], lambda app: app.store.messages()),
}


@pytest.mark.parametrize("kind", KINDS)
def test_count_sends_distinct_requests_and_each_is_stored(app, live_url, monkeypatch, kind):
    """Requests of a burst posted in the same millisecond said the same (MessageID, Recipient,
    MMStatus, Date): they were resends, stored once, while `send` printed them all succeeded."""
    monkeypatch.setattr(mmsc, "utc_now", lambda: STOPPED)
    flags, stored = KINDS[kind]
    result = send(live_url, *REPORT, *flags, "--count", "50", "--concurrency", "8")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("50 sent, 50 succeeded, 0 failed in ")
    stamp = "Date" if kind == "DeliveryReportReq" else "TimeStamp"
    assert f"50 distinct {kind}, each with its own TransactionID and {stamp}" in result.output
    assert len(list(stored(app))) == 50


@pytest.mark.parametrize("kind", KINDS)
def test_count_with_resend_sends_one_request_again_and_again(app, live_url, kind):
    flags, stored = KINDS[kind]
    result = send(live_url, *REPORT, *flags, "--count", "20", "--concurrency", "4", "--resend")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("20 sent, 20 succeeded, 0 failed in ")
    assert f"the same {kind} 20 times (--resend): it should be stored once" in result.output
    [row] = list(stored(app))
    assert row["transaction_id"] and "-" not in row["transaction_id"]  # the one request, not numbered copies


def test_stamps_are_distinct_to_the_millisecond_and_follow_the_clock(monkeypatch):
    now = [STOPPED]
    monkeypatch.setattr(mmsc, "utc_now", lambda: now[0])
    stamps = Stamps()
    burst = [stamps.next() for _ in range(3)]
    assert burst == [STOPPED.replace(microsecond=123000) + timedelta(milliseconds=n) for n in range(3)]
    now[0] = STOPPED + timedelta(seconds=1)  # the clock moved past the bumped stamps: they follow it
    assert stamps.next() == STOPPED.replace(microsecond=123000) + timedelta(seconds=1)


def rewriting(app: MM7WsgiApp, change: Callable[[str, list, bytes], tuple[str, list, bytes]]) -> Callable:
    """The real endpoint, with its answer rewritten on the way out."""

    def broken(environ: dict, start_response: Callable) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list) -> None:
            captured.update(status=status, headers=headers)

        answer = app(environ, capture)
        body = b"".join(answer)
        answer.close()
        status, headers, body = change(captured["status"], captured["headers"], body)
        headers = [(k, v) for k, v in headers if k != "Content-Length"] + [("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]

    return broken


def body_change(old: bytes, new: bytes) -> Callable:
    return lambda status, headers, body: (status, headers, re.sub(old, new, body))


REL5 = MM7_NAMESPACES["REL-5-MM7-1-0"].encode()
BROKEN = {
    "HTTP 200": lambda status, headers, body: ("500 Internal Server Error", headers, body),
    "Content-Type text/xml": lambda status, headers, body: (
        status,
        [(k, "application/xml" if k == "Content-Type" else v) for k, v in headers],
        body,
    ),
    "SOAP 1.1 Envelope": lambda status, headers, body: (status, headers, b"<html><body>Error 500</body></html>"),
    "DeliveryReportRsp in the request's namespace": body_change(rb'xmlns="[^"]+"', b'xmlns="' + REL5 + b'"'),
    "MM7Version echoed": body_change(rb"<MM7Version>6.8.0<", b"<MM7Version>5.3.0<"),
    "StatusCode 1000": body_change(rb"<StatusCode>1000<", b"<StatusCode>4000<"),
    "TransactionID echoed": body_change(rb">tx-broken<", b">tx-other<"),
    'TransactionID mustUnderstand="1"': body_change(rb' env:mustUnderstand="1"', b""),
}


@pytest.mark.parametrize("failing", BROKEN, ids=list(BROKEN))
def test_a_broken_endpoint_fails_naming_the_check(app, serve_wsgi, failing):
    url = serve_wsgi(rewriting(app, BROKEN[failing]))
    result = send(url, *REPORT, "--transaction-id", "tx-broken")
    assert result.exit_code == 1, result.output
    assert f"FAIL  {failing}" in result.output
    if failing not in ("SOAP 1.1 Envelope", "DeliveryReportRsp in the request's namespace"):
        failed = [line.split("  ")[1] for line in result.output.splitlines() if line.startswith("FAIL")]
        assert failed == [failing]


def test_a_broken_endpoint_under_count_reports_how_many_failed(app, serve_wsgi):
    url = serve_wsgi(rewriting(app, BROKEN["StatusCode 1000"]))
    result = send(url, *REPORT, "--count", "5", "--concurrency", "2")
    assert result.exit_code == 1
    assert "5 sent, 0 succeeded, 5 failed" in result.output
    assert "FAIL  StatusCode 1000: 5" in result.output


def test_nothing_listening_is_a_failed_check():
    result = send("http://127.0.0.1:9/mm7", *REPORT, "--timeout", "2")
    assert result.exit_code == 1
    assert "FAIL  HTTP answer" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipient", "1", "--sender", "2"], "needs --message-id"),
        ([*REPORT, "--namespace", "REL-9"], "is not an MM7 namespace"),
        ([*REPORT, "--deliver", "--read-reply"], "choose one"),
        ([*REPORT, __file__], "add --deliver"),
    ],
)
def test_usage_errors_say_what_is_missing(args, message):
    result = send("http://127.0.0.1:9/mm7", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_basic_credentials(make_app, serve_wsgi):
    url = serve_wsgi(make_app(auth_user="mmsc", auth_password="s3cret"))
    assert send(url, *REPORT, "--user", "mmsc", "--password", "s3cret").exit_code == 0
    refused = send(url, *REPORT, "--user", "mmsc", "--password", "wrong")
    assert refused.exit_code == 1
    assert "FAIL  HTTP 200  (HTTP 401 Unauthorized)" in refused.output

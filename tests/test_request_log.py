"""The request log (issue 19): one line per MM7 request, with its operation, ids, operator,
StatusCode, HTTP status and duration; a 3000 at ERROR with its cause, a 4004 at WARNING with
what was wrong; text or JSON lines; never a credential."""

from __future__ import annotations

import base64
import io
import json
import logging
import logging.handlers
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from mm7soap import errors, requestlog
from mm7soap.settings import Settings
from tests.helpers import call, data, wsgi_environ
from tests.test_stored_right import report

PASSWORD = "pa55-w0rd-never-logged"


@pytest.fixture
def configured(settings: Settings) -> Iterator[Callable[..., io.StringIO]]:
    """`requestlog.configure` into a StringIO, with the `mm7soap` logger restored after."""
    logger = logging.getLogger(requestlog.PACKAGE_LOG)
    saved = (list(logger.handlers), logger.level, logger.propagate)

    def configure(**changes: Any) -> io.StringIO:
        stream = io.StringIO()
        requestlog.configure(replace(settings, **changes), stream)
        return stream

    yield configure
    logger.handlers[:], logger.level, logger.propagate = saved


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "mm7soap.requests"]


def test_a_1000_is_one_info_line_with_the_requests_ids_operator_status_and_duration(app, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    assert call(app, report("tx-7"), headers={"X-Mblox-Carrier-Id": "0001890"}).status == 200
    [record] = request_records(caplog)
    assert record.levelno == logging.INFO
    line = record.getMessage()
    for field in (
        "operation=DeliveryReport",
        "namespace=REL-6-MM7-1-4",
        "transaction_id=tx-7",
        "message_id=msg-1",
        "operator_id=0001890",
        "status_code=1000",
        "http_status=200",
    ):
        assert field in line.split(), line
    assert re.search(r"\bduration_ms=\d+\.?\d*\b", line)
    assert "details=" not in line


def test_an_mo_has_no_message_id_and_a_resend_says_so(app, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    call(app, data("deliver_sinch.xml"), content_type='multipart/related; type="text/xml";')
    call(app, report("tx-1"))
    call(app, report("tx-2"))  # a resend of tx-1's report
    deliver, first, resent = (record.getMessage() for record in request_records(caplog))
    assert "operation=Deliver " in deliver and "message_id=" not in deliver
    assert "resent=" not in first
    assert "resent=true" in resent.split()


def test_a_3000_with_the_database_locked_is_logged_at_error_with_its_cause(app, settings, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert call(app, report("tx-locked")).status == 500
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    [record] = request_records(caplog)
    assert record.levelno == logging.ERROR
    line = record.getMessage()
    assert "status_code=3000" in line and "transaction_id=tx-locked" in line
    assert 'details="not stored: database is locked"' in line


def test_a_4004_is_logged_at_warning_with_what_was_wrong(app, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    call(app, report("tx-bad", MessageID=""))
    call(app, data("not_well_formed.xml"))
    missing, garbled = request_records(caplog)
    assert missing.levelno == garbled.levelno == logging.WARNING
    assert "operation=DeliveryReport" in missing.getMessage() and "transaction_id=tx-bad" in missing.getMessage()
    assert 'details="DeliveryReportReq has no MessageID"' in missing.getMessage()
    assert "status_code=4004" in garbled.getMessage() and 'details="not well-formed XML' in garbled.getMessage()


def test_only_mm7_requests_are_logged(app, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    call(app, method="GET", path="/health", content_type="")
    call(app, method="GET", path="/mm7", query="wsdl", content_type="")
    call(app, method="GET", path="/metrics", content_type="")
    assert request_records(caplog) == []


def test_text_lines_are_gunicorns_with_key_value_pairs_one_line_each(app, configured):
    stream = configured(log_format="text")
    call(app, report('tx with "quotes"\nand a newline'))
    [line] = stream.getvalue().splitlines()
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] operation=DeliveryReport ", line)
    assert 'transaction_id="tx with \\"quotes\\"\\nand a newline"' in line


def test_a_text_lines_time_is_its_own_second_though_written_once_a_second():
    """TextFormatter writes the time once a second: each line still has its own second, as
    logging.Formatter writes it (gunicorn's format), and the line is logged from `write`."""
    plain = logging.Formatter(requestlog.TEXT_FORMAT, requestlog.TEXT_DATE_FORMAT)
    cached = requestlog.TextFormatter()
    for created in (1_764_769_543.2, 1_764_769_543.9, 1_764_769_544.01, 1_764_769_543.5, 1_764_769_600.0):
        record = logging.LogRecord("mm7soap.requests", logging.INFO, __file__, 1, "%s", ("a=1",), None)
        record.created = created
        assert cached.format(record) == plain.format(record)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(filename)s:%(funcName)s:%(lineno)d"))
    requestlog.REQUEST_LOG.addHandler(handler)
    try:
        requestlog.write(
            requestlog.Answered("DeliveryReport", "REL-6-MM7-1-4", "tx", "m", None, None, 4004, 500, 0.001)
        )
    finally:
        requestlog.REQUEST_LOG.removeHandler(handler)
    assert stream.getvalue() == f"requestlog.py:write:{requestlog.write.__code__.co_firstlineno}\n"


ANSWERS = (
    requestlog.Answered(
        "DeliveryReport", "REL-6-MM7-1-4", "tx-1", "m-1", "0001890", "192.0.2.7", 1000, 200, 0.00234, resent=True
    ),
    requestlog.Answered(
        "ReadReply",
        "REL-5-MM7-1-0",
        'tx "2"\nx',
        None,
        None,
        None,
        4004,
        500,
        0.5,
        errors.ValidationError("no MessageID"),
    ),
    requestlog.Answered(
        "", "", None, None, "éé", "2001:db8::1", 3000, 500, 5.0, errors.StoreError("database is locked")
    ),
)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_line_written_without_its_record_is_the_line_its_record_makes(configured, monkeypatch, log_format):
    """Configured as under gunicorn, `write` writes the line itself (RequestLogHandler.write_line):
    it is the line the handler formats from the record Logger.log would have made."""
    stream = configured(log_format=log_format, log_level="info")
    [handler] = logging.getLogger(requestlog.PACKAGE_LOG).handlers
    assert requestlog.sole_handler(logging.INFO) is handler
    monkeypatch.setattr(requestlog.time, "time", lambda: 1_764_769_543.2567)
    expected = []
    for answered in ANSWERS:
        requestlog.write(answered)
        record = requestlog.record_of(answered.level, answered.fields())
        record.created = 1_764_769_543.2567
        expected.append(handler.format(record) + "\n")
    assert stream.getvalue() == "".join(expected)


def test_another_handler_or_a_filter_gets_the_record(configured):
    """With a handler on `mm7soap.requests`, or a filter on the way, the line is a LogRecord
    handed to the loggers' handlers, as Logger.log hands it."""
    stream = configured(log_format="text", log_level="info")
    other = logging.handlers.BufferingHandler(10)
    requestlog.REQUEST_LOG.addHandler(other)
    try:
        requestlog.write(ANSWERS[0])
    finally:
        requestlog.REQUEST_LOG.removeHandler(other)
    [record] = other.buffer
    assert record.mm7_fields == ANSWERS[0].fields() and record.levelno == logging.INFO
    assert stream.getvalue().endswith(f"[INFO] {record.getMessage()}\n")
    [handler] = logging.getLogger(requestlog.PACKAGE_LOG).handlers
    handler.addFilter(lambda record: record.levelno > logging.INFO)
    requestlog.write(ANSWERS[0])
    requestlog.write(ANSWERS[1])
    assert [line.split("] ")[3].split()[0] for line in stream.getvalue().splitlines()] == [
        "operation=DeliveryReport",
        "operation=ReadReply",
    ]


def test_json_lines_parse_one_object_each(app, configured, settings):
    stream = configured(log_format="json")
    call(app, report("tx-j"))
    call(app, report("tx-j2", MessageID=""))
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        call(app, report("tx-j3", MessageID="<MessageID>msg-3</MessageID>"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    stored, invalid, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert stored["level"] == "INFO" and stored["logger"] == "mm7soap.requests"
    assert {
        key: stored[key] for key in ("operation", "transaction_id", "message_id", "status_code", "http_status")
    } == {
        "operation": "DeliveryReport",
        "transaction_id": "tx-j",
        "message_id": "msg-1",
        "status_code": 1000,
        "http_status": 200,
    }
    assert isinstance(stored["duration_ms"], float) and stored["time"].endswith("+00:00")
    assert (invalid["level"], invalid["status_code"]) == ("WARNING", 4004)
    assert (failed["level"], failed["status_code"], failed["details"]) == (
        "ERROR",
        3000,
        "not stored: database is locked",
    )


def test_warning_level_does_not_even_format_the_info_line(app, configured, monkeypatch, settings):
    stream = configured(log_level="warning")

    def formatted(self: requestlog.Answered) -> dict[str, Any]:
        raise AssertionError("the line was formatted")

    assert call(app, report("tx-q")).status == 200
    monkeypatch.setattr(requestlog.Answered, "fields", formatted)
    assert call(app, report("tx-q2", MessageID="<MessageID>msg-2</MessageID>")).status == 200
    assert stream.getvalue() == ""
    monkeypatch.undo()
    blocker = sqlite3.connect(settings.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        call(app, report("tx-q3", MessageID="<MessageID>msg-3</MessageID>"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "[ERROR] operation=DeliveryReport" in stream.getvalue()  # a 3000 still is


def test_no_credentials_in_any_line(make_app, configured, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app(auth_user="mmsc", auth_password=PASSWORD)
    stream = configured(log_format="json", log_level="debug")
    good = "Basic " + base64.b64encode(f"mmsc:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(f"mmsc:{PASSWORD}-wrong".encode()).decode()
    assert call(app, report("tx-c1"), headers={"Authorization": good}).status == 200
    assert call(app, report("tx-c2"), headers={"Authorization": bad}).status == 401
    assert call(app, report("tx-c3"), headers={"Authorization": "Bearer " + PASSWORD}).status == 401
    assert call(app, method="GET", path="/metrics", content_type="", headers={"Authorization": bad}).status == 401
    written = stream.getvalue() + "\n".join(record.getMessage() for record in caplog.records)
    assert len(stream.getvalue().splitlines()) == 3
    for secret in (PASSWORD, good.split()[1], bad.split()[1], "Authorization"):
        assert secret not in written
    assert '"status_code": 4001' in stream.getvalue()


def test_configure_replaces_its_handler(configured):
    configured()
    configured(log_format="json")
    handlers = logging.getLogger(requestlog.PACKAGE_LOG).handlers
    assert [type(handler) for handler in handlers].count(requestlog.RequestLogHandler) == 1


def test_the_line_has_the_clients_address_the_one_a_trusted_proxy_forwarded(make_app, caplog):
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    app = make_app(trusted_proxies=("192.0.2.0/24",))
    call(app, report("tx-a1"))  # helpers.call's REMOTE_ADDR: 192.0.2.10, a proxy of ours here
    call(app, report("tx-a2", MessageID="<MessageID>m-2</MessageID>"), headers={"X-Forwarded-For": "203.0.113.9"})
    clients = [record.mm7_fields.get("client") for record in request_records(caplog)]
    assert clients == ["192.0.2.10", "203.0.113.9"]


def test_the_line_and_the_counts_wait_until_the_answer_is_sent(app, caplog):
    """A WSGI server closes the body once it is sent: the MMSC has its answer without waiting
    for the log line's write and the metrics' counts, which are made then, once."""
    caplog.set_level(logging.INFO, logger="mm7soap.requests")
    answer = app(wsgi_environ(report("tx-s")), lambda status, headers: None)
    assert b"<StatusCode>1000</StatusCode>" in b"".join(answer)
    counted = app.metrics.registry.get_sample_value
    labels = {"operation": "DeliveryReport", "namespace": "REL-6-MM7-1-4", "status_code": "1000"}
    assert request_records(caplog) == [] and counted("mm7soap_requests_total", labels) is None
    answer.close()
    answer.close()  # a middleware's close as well as the server's: still once
    [record] = request_records(caplog)
    assert record.mm7_fields["transaction_id"] == "tx-s" and counted("mm7soap_requests_total", labels) == 1


def marked(app: Any, body: bytes, path: str = "/mm7", method: str = "POST") -> bool:
    """Whether the request's environ says its request line was written (no access line then)."""
    environ = wsgi_environ(body, method=method, path=path)
    app(environ, lambda status, headers: None).close()
    return environ.get(requestlog.LOGGED, False)


def test_a_request_with_a_line_is_marked_for_no_access_line_when_access_log_is_other(make_app, configured):
    configured(log_level="info")
    app = make_app()
    assert marked(app, report("tx-m1"))
    assert not marked(app, b"", path="/health", method="GET")  # no request line: its access line stays
    assert not marked(make_app(access_log="all"), report("tx-m2"))
    configured(log_level="warning")  # a 1000 has no line then, so its access line stays; a 4004 has one
    assert not marked(app, report("tx-m3", MessageID="<MessageID>m-3</MessageID>"))
    assert marked(app, report("tx-m4", MessageID=""))


def test_access_log_is_all_other_or_off():
    assert Settings.from_env({"MM7SOAP_ACCESS_LOG": "all"}).access_log == "all"
    assert Settings().access_log == "other"
    with pytest.raises(ValueError, match="access_log must be all, other or off"):
        Settings.from_env({"MM7SOAP_ACCESS_LOG": "none"})

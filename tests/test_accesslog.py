"""The access log: mm7soap's cheaper logger writes exactly the lines gunicorn's would."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from mm7soap.accesslog import AccessLogger
from mm7soap.requestlog import LOGGED


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def logged(logger_class: type, environ: dict[str, str], access_log_format: str | None = None) -> str:
    cfg = Config()
    cfg.set("accesslog", "-")
    if access_log_format is not None:
        cfg.set("access_log_format", access_log_format)
    logger = logger_class(cfg)
    logger.now = lambda: "[28/Nov/2026:01:02:03 +0000]"  # one clock for both
    lines = Lines()
    logger.access_log.addHandler(lines)
    try:
        resp = SimpleNamespace(status="200 OK", sent=812, headers=[("Content-Type", "text/xml")])
        req = SimpleNamespace(headers=[("HOST", "x")])
        logger.access(resp, req, environ, timedelta(microseconds=1500))
    finally:
        logger.access_log.removeHandler(lines)
    return lines.lines[-1]


BASE = {"REQUEST_METHOD": "POST", "RAW_URI": "/mm7?x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "192.0.2.7"}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"HTTP_USER_AGENT": 'Sinch "MMSC" 2.0', "HTTP_REFERER": "http://x/"},
        {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"sinch:secret").decode()},
    ],
)
def test_the_same_line_as_gunicorns_logger(extra: dict[str, str]) -> None:
    environ = {**BASE, **extra}
    assert logged(AccessLogger, environ) == logged(glogging.Logger, environ)


def test_another_format_is_left_to_gunicorn() -> None:
    line = logged(AccessLogger, BASE, access_log_format="%(m)s %(U)s %(D)s")
    assert line == "POST None 1500"  # PATH_INFO absent here: gunicorn's own atoms


def test_a_request_the_request_log_wrote_a_line_of_has_none() -> None:
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = AccessLogger(cfg)
    lines = Lines()
    logger.access_log.addHandler(lines)
    resp = SimpleNamespace(status="200 OK", sent=812, headers=[])
    try:
        logger.access(resp, SimpleNamespace(headers=[]), {**BASE, LOGGED: True}, timedelta(microseconds=1500))
        assert lines.lines == []
        logger.access(resp, SimpleNamespace(headers=[]), BASE, timedelta(microseconds=1500))
        assert len(lines.lines) == 1
    finally:
        logger.access_log.removeHandler(lines)

"""The request log (issue 19): one line per MM7 request, saying what it came to.

The transport builds one `Answered` per POST to the MM7 path, once the answer is ready, and
hands it to `write` and to the metrics (`mm7soap.metrics.Metrics.answered`).  A 1000 is a
line at INFO, a 3000 (we failed: the MMSC will retry) at ERROR with its cause, any other
refusal (4004, 4001, 2004, …) at WARNING with what was wrong.  Of the request's headers only
the operator id and, through a trusted proxy, the client's address (X-Forwarded-For) are in
it, so no credentials can be.

An MM7 request the log wrote a line of gets no second one from gunicorn's access log (with
`access_log = other`, the default): its line says what the access line would have that an
operator reads (the client's address, the HTTP status), and what it cannot (the MM7
operation, ids and StatusCode).  `transport` marks the request's environ (`LOGGED`) and
`mm7soap.accesslog` skips what is marked.  Every other request (/health, /metrics, the WSDL, a
scanner's 404, an MM7 request whose line the level drops) keeps its access line.

Under gunicorn the master configures the `mm7soap` logger before it forks (`configure`):
stderr, as gunicorn's own log, at `log_level`, as text (gunicorn's line, key=value pairs)
or as JSON, one object per line.  A line only that handler would see (no other handler or
filter on the way, as under gunicorn) is written by it directly, with no LogRecord: the same
line for half the CPU, which every request pays (benchmarks/observability.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from mm7soap import errors
from mm7soap.service import Answer
from mm7soap.settings import Settings

REQUEST_LOG = logging.getLogger("mm7soap.requests")
PACKAGE_LOG = "mm7soap"  # every mm7soap.* logger writes through the handler `configure` adds
# gunicorn's own error log line (gunicorn.glogging.Logger.error_fmt and datefmt).
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
TEXT_DATE_FORMAT = "[%Y-%m-%d %H:%M:%S %z]"
# A value longer than this (an id or a parser's message an MMSC sent) is cut, with "…".
LONGEST_VALUE = 300
# The environ key of a request the request log wrote a line of (see above).
LOGGED = "mm7soap.request_logged"
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")  # written as is in a text line; others quoted


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs every request twice as much
class Answered:
    """What one MM7 request came to: the record the log line and the metrics are made from."""

    operation: str  # "DeliveryReport", "ReadReply", "Deliver"; "" when not read that far
    namespace: str  # "REL-6-MM7-1-4"; "" when not read that far
    transaction_id: str | None
    message_id: str | None
    operator_id: str | None
    client: str | None  # the client's address (mm7soap.access.AccessPolicy.client_address)
    status_code: int  # MM7's: 1000, or the Fault's
    http_status: int
    seconds: float
    error: errors.MM7Error | None = None
    resent: bool = False

    @classmethod
    def of(
        cls, answer: Answer, http_status: int, operator_id: str | None, client: str | None, seconds: float
    ) -> Answered:
        return cls(
            operation=answer.operation,
            namespace=answer.namespace,
            transaction_id=answer.transaction_id,
            message_id=answer.message_id,
            operator_id=operator_id,
            client=client or None,
            status_code=answer.status_code,
            http_status=http_status,
            seconds=seconds,
            error=answer.error,
            resent=answer.resent,
        )

    @property
    def level(self) -> int:
        if self.error is None:
            return logging.INFO
        return logging.ERROR if self.error.status_code == 3000 else logging.WARNING

    def fields(self) -> dict[str, Any]:
        """The line's fields, in order; those the request did not have are left out."""
        found: dict[str, Any] = {
            "operation": self.operation or None,
            "namespace": self.namespace or None,
            "transaction_id": self.transaction_id,
            "message_id": self.message_id,
            "operator_id": self.operator_id,
            "client": self.client,
            "status_code": self.status_code,
            "http_status": self.http_status,
            "duration_ms": round(self.seconds * 1000, 2),
            "resent": True if self.resent else None,
            # The Fault's Details: for a 3000 the cause (the StoreError's message), for a
            # 4004 what was wrong.
            "details": (self.error.details or self.error.status_text) if self.error is not None else None,
        }
        return {name: cut(value) for name, value in found.items() if value is not None}


def logs(answered: Answered) -> bool:
    """Whether `write` writes a line of it (its level is logged)."""
    return REQUEST_LOG.isEnabledFor(answered.level)


def write(answered: Answered) -> None:
    """The request's line; not even formatted when its level is not logged."""
    level = answered.level
    if not REQUEST_LOG.isEnabledFor(level):
        return
    fields = answered.fields()
    handler = sole_handler(level)
    if handler is not None:
        handler.write_line(level, fields)
        return
    # The record is made here and handed to the handlers as Logger.log would, but without its
    # search of the stack for the caller's file and line, which are always this function's.
    REQUEST_LOG.handle(record_of(level, fields))


def record_of(level: int, fields: dict[str, Any]) -> logging.LogRecord:
    """The record of a request line, as REQUEST_LOG.log would make it from `write`."""
    return REQUEST_LOG.makeRecord(
        REQUEST_LOG.name, level, __file__, WRITE_LINE, "%s", (KeyValues(fields),), None, "write", {"mm7_fields": fields}
    )


def sole_handler(level: int) -> RequestLogHandler | None:
    """The handler `configure` added, when a line at `level` would reach it and nothing else:
    no other handler or filter on its way, no formatter but ours.  So mm7soap runs under
    gunicorn, and the line is then written without the LogRecord and the handler calls that
    take most of its cost (a line a request is a cost every request pays)."""
    package = REQUEST_LOG.parent
    if REQUEST_LOG.handlers or REQUEST_LOG.filters or not REQUEST_LOG.propagate or package is None:
        return None
    if package.name != PACKAGE_LOG or package.propagate or package.filters or len(package.handlers) != 1:
        return None
    handler = package.handlers[0]
    if type(handler) is not RequestLogHandler or handler.filters or level < handler.level:
        return None
    return handler if isinstance(handler.formatter, (TextFormatter, JsonFormatter)) else None


WRITE_LINE = write.__code__.co_firstlineno  # where a request line is logged, for formats that show it


def cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > LONGEST_VALUE:
        return value[:LONGEST_VALUE] + "…"
    return value


class KeyValues:
    """`key=value …`, rendered only when a handler formats the line.  A value that is not
    plain is quoted as JSON, so an id holding spaces, quotes or a newline stays one field
    of one line."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join([f"{name}={text_value(value)}" for name, value in self.fields.items()])


def text_value(value: Any) -> str:
    if isinstance(value, str):  # most of a line: tested first
        text = value
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, (int, float)):
        return str(value)  # digits, ".", "-", "e", "inf": always plain
    else:
        text = str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """gunicorn's line (TEXT_FORMAT).  Its time has whole seconds, so it is written once a
    second rather than for every line (time.strftime with the local zone's offset is a
    quarter of the formatting)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, TEXT_DATE_FORMAT)
        self.written: tuple[int, str] = (-1, "")  # (the second, its time as written); one tuple: no torn pair

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        written = self.written
        if written[0] != second:
            written = self.written = (second, time.strftime(TEXT_DATE_FORMAT, self.converter(created)))
        return written[1]

    def request_line(self, created: float, level: int, fields: dict[str, Any]) -> str:
        """What `format` makes of a request line's record (`record_of`)."""
        return f"{self.stamp(created)} [{os.getpid()}] [{logging.getLevelName(level)}] {KeyValues(fields)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, then a request line's fields (or
    any other line's message, and its exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = json_head(record.created, record.levelname, record.name, record.process)
        fields = getattr(record, "mm7_fields", None)
        if fields is not None:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

    def request_line(self, created: float, level: int, fields: dict[str, Any]) -> str:
        """What `format` makes of a request line's record (`record_of`)."""
        line = json_head(created, logging.getLevelName(level), REQUEST_LOG.name, os.getpid())
        line.update(fields)
        return json.dumps(line, ensure_ascii=False)


def json_head(created: float, level: str, logger: str, pid: int | None) -> dict[str, Any]:
    time_text = datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")
    return {"time": time_text, "level": level, "logger": logger, "pid": pid}


class RequestLogHandler(logging.StreamHandler):  # type: ignore[type-arg] - a stream of text
    """The handler `configure` adds (and replaces when called again)."""

    def write_line(self, level: int, fields: dict[str, Any]) -> None:
        """The request line `emit` would write of `record_of(level, fields)`, written as it
        would be, made without the record (`sole_handler` says when that is the same)."""
        try:
            text = self.formatter.request_line(time.time(), level, fields)  # ours: see sole_handler
            with self.lock:  # as Handler.handle holds it around emit
                self.stream.write(text + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record_of(level, fields))


def configure(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """The `mm7soap` loggers write to stderr (or `stream`) at `log_level`, in `log_format`,
    and not through the root logger (whatever an embedding application set up there)."""
    logger = logging.getLogger(PACKAGE_LOG)
    for handler in [h for h in logger.handlers if isinstance(h, RequestLogHandler)]:
        logger.removeHandler(handler)
    handler = RequestLogHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False
    return handler

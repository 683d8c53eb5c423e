"""The request log (issue 19): one line per MM7 request, saying what it came to.

The transport builds one `Answered` per POST to the MM7 path, once the answer is ready, and
hands it to `write` and to the metrics (`mm7soap.metrics.Metrics.answered`).  A 1000 is a
line at INFO, a 3000 (we failed: the MMSC will retry) at ERROR with its cause, any other
refusal (4004, 4001, 2004, …) at WARNING with what was wrong.  Nothing from the request's
headers is in it, so no credentials can be.

gunicorn's access line (mm7soap/accesslog.py) stays: it has what this one does not (every
path: /health, /metrics, the WSDL, a scanner's 404; the client's address, user agent and
bytes sent), and this one has what it cannot (the MM7 operation, ids and StatusCode).

Under gunicorn the master configures the `mm7soap` logger before it forks (`configure`):
stderr, as gunicorn's own log, at `log_level`, as text (gunicorn's line, key=value pairs)
or as JSON, one object per line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")  # written as is in a text line; others quoted


@dataclass(frozen=True)
class Answered:
    """What one MM7 request came to: the record the log line and the metrics are made from."""

    operation: str  # "DeliveryReport", "ReadReply", "Deliver"; "" when not read that far
    namespace: str  # "REL-6-MM7-1-4"; "" when not read that far
    transaction_id: str | None
    message_id: str | None
    operator_id: str | None
    status_code: int  # MM7's: 1000, or the Fault's
    http_status: int
    seconds: float
    error: errors.MM7Error | None = None
    resent: bool = False

    @classmethod
    def of(cls, answer: Answer, http_status: int, operator_id: str | None, seconds: float) -> Answered:
        return cls(
            operation=answer.operation,
            namespace=answer.namespace,
            transaction_id=answer.transaction_id,
            message_id=answer.message_id,
            operator_id=operator_id,
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
            "status_code": self.status_code,
            "http_status": self.http_status,
            "duration_ms": round(self.seconds * 1000, 2),
            "resent": True if self.resent else None,
            # The Fault's Details: for a 3000 the cause (the StoreError's message), for a
            # 4004 what was wrong.
            "details": (self.error.details or self.error.status_text) if self.error is not None else None,
        }
        return {name: cut(value) for name, value in found.items() if value is not None}


def write(answered: Answered) -> None:
    """The request's line; not even formatted when its level is not logged."""
    level = answered.level
    if not REQUEST_LOG.isEnabledFor(level):
        return
    fields = answered.fields()
    REQUEST_LOG.log(level, "%s", KeyValues(fields), extra={"mm7_fields": fields})


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
        return " ".join(f"{name}={text_value(value)}" for name, value in self.fields.items())


def text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, then a request line's fields (or
    any other line's message, and its exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "mm7_fields", None)
        if fields is not None:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class RequestLogHandler(logging.StreamHandler):  # type: ignore[type-arg] - a stream of text
    """The handler `configure` adds (and replaces when called again)."""


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
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False
    return handler

"""gunicorn's access log, the same lines written for less.

gunicorn builds, for every request, a dictionary of some thirty fields (every request and
response header among them), escapes each, and formats the line from it.  Under load that
took a tenth of a worker's CPU, and CPU under the GIL is latency for every other request.
With the default format, `AccessLogger` writes the identical line from the nine fields it
shows, in about 40% of the time; any other `access_log_format` is left to gunicorn.

An MM7 request the request log wrote a line of has no access line (`access_log = other`,
mm7soap.requestlog): one line per request, whichever log writes it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn import glogging
from gunicorn.config import AccessLogFormat

from mm7soap.requestlog import LOGGED


def quoted(value: str) -> str:
    # As gunicorn's SafeAtoms: a double quote inside a quoted field is escaped.
    return value.replace('"', '\\"')


class AccessLogger(glogging.Logger):  # type: ignore[misc] - gunicorn ships no type hints
    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled or environ.get(LOGGED):
            return
        if self.cfg.access_log_format != AccessLogFormat.default:
            super().access(resp, req, environ, request_time)
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        request_line = f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        fields = (
            quoted(environ.get("REMOTE_ADDR", "-")),
            "-",
            quoted(self._get_user(environ) or "-"),
            self.now(),
            f'"{quoted(request_line)}"',
            str(status),
            "-" if sent is None else str(sent),
            f'"{quoted(environ.get("HTTP_REFERER", "-"))}"',
            f'"{quoted(environ.get("HTTP_USER_AGENT", "-"))}"',
        )
        try:
            self.access_log.info(" ".join(fields))
        except Exception:
            self.exception("could not write the access log")

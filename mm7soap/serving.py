"""Running under gunicorn: the production configuration, shared by `mm7soap serve` and
`gunicorn -c gunicorn.conf.py mm7soap.wsgi:application`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from mm7soap import errors
from mm7soap.envelope import Reply
from mm7soap.settings import Settings
from mm7soap.soap import fault_document
from mm7soap.store import Store
from mm7soap.wsgi import create_app


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn settings for mm7soap; the schema is migrated once, in the master."""

    def on_starting(server: Any) -> None:
        store = Store(settings)
        store.migrate()
        store.close()  # workers open their own connections after the fork

    return {
        "bind": settings.bind,
        "workers": settings.workers,
        # Threads, not sync workers: keep-alive connections are kept (Sinch sends
        # `Connection: Keep-Alive`), and a client stalling mid-body holds one thread
        # until the read timeout rather than a whole worker.
        "worker_class": "mm7soap.serving.MM7ThreadWorker",
        "threads": settings.threads,
        # Sinch gives up after 10 s and retries; a request still running past the
        # timeout has its worker replaced, and its report was not acknowledged.
        "timeout": settings.timeout,
        "keepalive": 5,
        "loglevel": settings.log_level,
        "accesslog": "-",
        "errorlog": "-",
        "preload_app": False,
        "on_starting": on_starting,
    }


class CapturedSocket:
    """Takes what gunicorn writes for a request it could not parse (an HTML page)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)


class MM7ThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, answering even unparseable HTTP with an MM7 Fault.

    gunicorn writes its own HTML page for a broken request line, bad headers or bad
    chunking; an MMSC expects SOAP, so the page is replaced by a Fault with the same status.
    """

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = CapturedSocket()
        super().handle_error(req, captured, addr, exc)  # logs it and picks the status
        status_line = captured.data.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 500
        error = errors.BadHttpError(f"the HTTP request could not be read: {exc}", status)
        body = fault_document(error, Reply())
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: text/xml; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("could not send the fault for an unreadable request")


class MM7Gunicorn(BaseApplication):  # type: ignore[misc] - gunicorn ships no type hints
    """gunicorn, configured in code rather than from a file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    MM7Gunicorn(settings).run()

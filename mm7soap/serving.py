"""Running under gunicorn: the production configuration, shared by `mm7soap serve` and
`gunicorn -c gunicorn.conf.py mm7soap.wsgi:application`."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from mm7soap.settings import Settings
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
        "worker_class": "gthread",
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

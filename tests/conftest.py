from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from mm7soap.settings import Settings
from mm7soap.transport import MM7WsgiApp


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=str(tmp_path / "mm7soap.db"), busy_timeout_ms=200)


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., MM7WsgiApp]]:
    """Builds apps on the test's database with some settings changed; closes them after."""
    made: list[MM7WsgiApp] = []

    def make(**changes: object) -> MM7WsgiApp:
        made.append(MM7WsgiApp(replace(settings, **changes)))
        return made[-1]

    yield make
    for application in made:
        application.store.close()


@pytest.fixture
def app(make_app: Callable[..., MM7WsgiApp]) -> MM7WsgiApp:
    return make_app()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """Serves a WSGI app on a free local port in a thread; returns its /mm7 URL."""
    servers = []

    def serve(application: Any) -> str:
        server = make_server("127.0.0.1", 0, application, handler_class=QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/mm7"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def live_url(app: MM7WsgiApp, serve_wsgi: Callable[[Any], str]) -> str:
    """The `app` fixture served over real HTTP."""
    return serve_wsgi(app)

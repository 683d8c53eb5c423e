from __future__ import annotations

import os
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
import pytest
from psycopg import sql

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


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """A connection per thread, as a real server: one client that stalls (or a forwarder's
    eight connections at once) does not hold up the others."""

    daemon_threads = True


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """Serves a WSGI app on a free local port in a thread; returns its /mm7 URL."""
    servers = []

    def serve(application: Any) -> str:
        server = make_server("127.0.0.1", 0, application, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
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


# PostgreSQL (issue 20): a real cluster, named by its URL; its role must have CREATEDB.
POSTGRESQL_URL = "MM7SOAP_TEST_POSTGRESQL_URL"
NO_POSTGRESQL = (
    f"{POSTGRESQL_URL} is not set; start a throwaway cluster with "
    "`.venv/bin/python -m tests.postgresql_cluster start /tmp/pg` and "
    f"`export {POSTGRESQL_URL}=$(cat /tmp/pg/url)`"
)


def need_postgresql() -> str:
    """The cluster's URL; without one the test skips, or fails under MM7SOAP_REQUIRE_POSTGRESQL=1
    (CI), so that a broken cluster cannot pass as a row of skips."""
    url = os.environ.get(POSTGRESQL_URL, "")
    if not url and os.environ.get("MM7SOAP_REQUIRE_POSTGRESQL") == "1":
        pytest.fail(f"MM7SOAP_REQUIRE_POSTGRESQL=1 but {NO_POSTGRESQL}")
    if not url:
        pytest.skip(NO_POSTGRESQL)
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test asking for a PostgreSQL database is a PostgreSQL test: `-m postgresql` finds it.
    for item in items:
        if "postgresql_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgresql)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a skip or failure that names the cause, not a connection error.
    if item.get_closest_marker("postgresql") is not None:
        need_postgresql()


@pytest.fixture(scope="session")
def postgresql_admin() -> Iterator[psycopg.Connection[Any]]:
    """One connection to the cluster's own database, that makes and drops the tests' ones."""
    with psycopg.connect(need_postgresql(), autocommit=True) as admin:
        yield admin


@pytest.fixture
def postgresql_url(postgresql_admin: psycopg.Connection[Any]) -> Iterator[str]:
    """The URL of a fresh, empty database for this test alone, dropped after it.

    A database per test, as a deployment has one. CREATE DATABASE copies template1 in
    0.02-0.06 s on an idle 2-core machine (0.5-0.9 s when other suites load it) and DROP
    takes 0.01 s. A schema per test (`options=-csearch_path=…` in the URL) would cost 5 ms,
    but the store passes `options` of its own to psycopg, which replace the URL's."""
    name = f"mm7soap_test_{uuid.uuid4().hex[:16]}"
    postgresql_admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(need_postgresql())._replace(path=f"/{name}").geturl()
    finally:
        drop_database(postgresql_admin, name)


def drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    """DROP … WITH (FORCE): connections the test left open must not keep its database alive.
    An autovacuum worker on it is the server's, which the test role may not end: it is gone
    in a moment, so the drop is tried again."""
    for attempt in range(50):
        try:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == 49:
                raise
            time.sleep(0.1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`Settings.database` of each back end in turn: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "mm7soap.db")
    # Asked for here rather than as an argument: the sqlite run needs no cluster.
    return str(request.getfixturevalue("postgresql_url"))


@pytest.fixture
def backend_settings(database: str) -> Settings:
    """The `settings` fixture, on each back end in turn."""
    return Settings(database=database, busy_timeout_ms=200)

"""/health answers within `health_timeout` whatever the database is doing: 503 and why while it
is locked, stuck, missing or broken, 200 again once a report could be stored."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress

import pytest

from mm7soap.health import THREAD_NAME
from tests.helpers import Response, call

# The real busy timeout: a write waits this long for another writer's lock (the fixture's is 0.2 s).
BUSY_TIMEOUT_MS = 5000
# What a loaded 2-core machine may add to the bound; well below the busy timeout the bug took.
MARGIN = 0.5


def probe(app) -> tuple[Response, float]:
    started = time.monotonic()
    response = call(app, method="GET", path="/health", content_type="")
    return response, time.monotonic() - started


@contextmanager
def locked(database: str, how: str = "IMMEDIATE") -> Iterator[None]:
    """Another process's writer holding the database's write lock."""
    blocker = sqlite3.connect(database, isolation_level=None)
    try:
        blocker.execute(f"BEGIN {how}")
        yield
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


def health_threads() -> int:
    return sum(thread.name == THREAD_NAME and thread.is_alive() for thread in threading.enumerate())


def assert_short_json_503(response: Response) -> str:
    """A 503 a load balancer and a person can read: JSON saying why, not a page or a traceback."""
    assert response.status == 503
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.body) < 300
    assert b"<" not in response.body and b"Traceback" not in response.body
    report = json.loads(response.body)
    assert report["status"] == "error" and report["database"] == "not writable"
    assert report["error"]
    return str(report["error"])


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_locked_database_is_503_within_the_timeout_then_200_once_released(make_app, settings, how):
    app = make_app(busy_timeout_ms=BUSY_TIMEOUT_MS)
    assert app.settings.health_timeout == 1.0  # the default
    with locked(settings.database, how):
        response, took = probe(app)
        assert took < 1.0 + MARGIN
        assert "health_timeout 1 s" in assert_short_json_503(response)
    response, _ = probe(app)
    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok", "database": "writable"}


def test_a_shorter_health_timeout_is_honoured(make_app, settings):
    app = make_app(busy_timeout_ms=BUSY_TIMEOUT_MS, health_timeout=0.2)
    with locked(settings.database):
        response, took = probe(app)
    assert took < 0.2 + MARGIN  # the default 1 s would not be
    assert "health_timeout 0.2 s" in assert_short_json_503(response)


def test_a_lock_shorter_than_the_busy_timeout_says_locked(make_app, settings):
    """With a busy timeout under the health timeout the check itself fails, and says why."""
    app = make_app(busy_timeout_ms=100, health_timeout=2.0)
    with locked(settings.database):
        response, took = probe(app)
    assert took < 2.0
    assert "locked" in assert_short_json_503(response)


def test_probes_against_a_stuck_database_share_one_thread(make_app, monkeypatch):
    """A check that never returns (a hung mount, a stalled fsync): every probe is 503 in time,
    and however many probes come, one thread waits on the database, not one each."""
    app = make_app(health_timeout=0.1)
    release = threading.Event()
    monkeypatch.setattr(app.store, "check_writable", lambda writes: release.wait(30))
    before = health_threads()
    try:
        for _ in range(5):
            response, took = probe(app)
            assert took < 0.1 + MARGIN
            assert_short_json_503(response)
        assert health_threads() == before + 1
    finally:
        release.set()
    response, _ = probe(app)  # joins the stuck check, now done, or starts a new one
    assert response.status == 200
    assert health_threads() == before


def open_files(path: str) -> int:
    """How many file descriptors of this process name `path` (one per SQLite connection)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # closed meanwhile
            found += os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(path)
    return found


def test_the_check_leaves_no_connection_open(app, settings):
    """Each check runs in a thread that ends: the connection it opened is closed with it.
    (SQLite keeps one closed connection's descriptor for reuse while others hold locks: so
    the count after the first check, which must not grow.)"""
    assert probe(app)[0].status == 200
    opened = open_files(settings.database)
    for _ in range(3):
        assert probe(app)[0].status == 200
    assert open_files(settings.database) == opened


def test_a_missing_database_file_is_503_saying_so(app, settings):
    assert probe(app)[0].status == 200
    os.rename(settings.database, settings.database + ".moved")
    response, _ = probe(app)
    assert "missing" in assert_short_json_503(response)
    os.rename(settings.database + ".moved", settings.database)
    assert probe(app)[0].status == 200


def test_an_unexpected_failure_is_a_503_with_its_reason_not_a_fault(app, monkeypatch, caplog):
    def broken(writes: object) -> None:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(app.store, "check_writable", broken)
    response, _ = probe(app)
    assert assert_short_json_503(response) == "RuntimeError: the disk caught fire"
    assert "the health check failed unexpectedly" in caplog.text


def checked_at(database: str) -> str | None:
    """When the last check write committed (readers are not blocked by a writer's lock)."""
    with closing(sqlite3.connect(database)) as conn:
        found = conn.execute("SELECT checked_at FROM health").fetchone()
    return None if found is None else str(found[0])


def test_closing_the_store_leaves_a_running_check_alone(make_app, settings):
    """A check outlives its probe; the app's store closing meanwhile (a test's teardown, an
    embedding application's shutdown) must not close the connection the check is using:
    the check goes on, and commits once the lock is released."""
    app = make_app(busy_timeout_ms=BUSY_TIMEOUT_MS, health_timeout=0.1)
    assert checked_at(settings.database) is None
    with locked(settings.database):
        assert probe(app)[0].status == 503
        app.store.close()
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join(10)
    assert checked_at(settings.database) is not None

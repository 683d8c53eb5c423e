"""The PostgreSQL test infrastructure itself (issue 20): tests/postgresql_cluster.py makes a real
cluster, and the fixtures of tests/conftest.py give each test a fresh database of it, skip
without one, and fail instead under MM7SOAP_REQUIRE_POSTGRESQL=1 (CI)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from mm7soap.settings import Settings
from tests import postgresql_cluster

ROOT = Path(__file__).parent.parent
REQUIRED = os.environ.get("MM7SOAP_REQUIRE_POSTGRESQL") == "1"
# Databases seen by test_each_test_has_its_own_database, in the order its two runs came.
SEEN: list[str] = []


def user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def test_fresh_database_is_empty_and_writable(postgresql_url: str) -> None:
    assert user_tables(postgresql_url) == []
    with psycopg.connect(postgresql_url) as connection:
        connection.execute("CREATE TABLE report (message_id text PRIMARY KEY)")
        connection.execute("INSERT INTO report VALUES ('4711')")
    # Committed: another connection sees it.
    with psycopg.connect(postgresql_url) as connection:
        assert connection.execute("SELECT message_id FROM report").fetchall() == [("4711",)]


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_has_its_own_database(run: str, postgresql_url: str, postgresql_admin: psycopg.Connection) -> None:
    # What the first run left behind must not be here, and its database must be gone.
    assert user_tables(postgresql_url) == []
    with psycopg.connect(postgresql_url) as connection:
        connection.execute("CREATE TABLE left_behind (run text)")
        SEEN.append(connection.execute("SELECT current_database()").fetchone()[0])
    assert SEEN[-1] != urlsplit(os.environ["MM7SOAP_TEST_POSTGRESQL_URL"]).path.lstrip("/")
    if run == "second" and len(SEEN) == 2:
        assert SEEN[0] != SEEN[1]
        existing = postgresql_admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SEEN[0],)).fetchall()
        assert existing == [], f"{SEEN[0]} was not dropped after its test"


def assert_the_password_matters(url: str) -> None:
    """TCP asks for the password (scram-sha-256): the wrong one is refused by the server."""
    parts = urlsplit(url)
    wrong = parts._replace(netloc=f"{parts.username}:not-{parts.password}@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10).close()
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT current_user").fetchone() == ("mm7soap",)


def test_the_password_matters(postgresql_url: str) -> None:
    assert_the_password_matters(postgresql_url)


def test_database_gives_each_back_end(
    database: str, backend_settings: Settings, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["database"]
    assert request.node.name == f"test_database_gives_each_back_end[{kind}]"
    assert backend_settings == Settings(database=database, busy_timeout_ms=200)
    if kind == "sqlite":
        assert Path(database).parent == request.getfixturevalue("tmp_path")
        assert not Path(database).exists()
        assert request.node.get_closest_marker("postgresql") is None
    else:
        assert database.startswith("postgresql://")
        assert user_tables(database) == []
        assert request.node.get_closest_marker("postgresql") is not None


@pytest.mark.postgresql
def test_the_cluster_role_may_create_databases() -> None:
    # Marked, without the fixtures: the mark alone makes it skip (or fail) with no cluster named.
    with psycopg.connect(os.environ["MM7SOAP_TEST_POSTGRESQL_URL"]) as connection:
        row = connection.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (True,)


# Run by inner_pytest: a sqlite run, and PostgreSQL tests of each kind (the database
# fixture's param, the postgresql_url fixture, the mark alone).
INNER_TESTS = [
    "test_database_gives_each_back_end",
    "test_fresh_database_is_empty_and_writable",
    "test_the_cluster_role_may_create_databases",
]


def inner_pytest(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """INNER_TESTS in a pytest of their own, with no cluster named unless `environment` names one."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MM7SOAP_")}
    module = Path(__file__).relative_to(ROOT)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *arguments]
    command += [f"{module}::{test}" for test in INNER_TESTS]
    return subprocess.run(
        command, cwd=ROOT, env=env | environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_without_a_cluster_postgresql_tests_skip_and_say_how_to_start_one() -> None:
    done = inner_pytest()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 3 skipped" in done.stdout
    assert "python -m tests.postgresql_cluster start /tmp/pg" in done.stdout


def test_without_a_cluster_postgresql_tests_fail_when_required() -> None:
    # -m postgresql: the mark selects every PostgreSQL test, and only them.
    done = inner_pytest("-m", "postgresql", MM7SOAP_REQUIRE_POSTGRESQL="1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 deselected, 3 errors" in done.stdout
    assert "MM7SOAP_REQUIRE_POSTGRESQL=1 but MM7SOAP_TEST_POSTGRESQL_URL is not set" in done.stdout


@pytest.fixture
def cluster_directory() -> Iterator[Path]:
    """A folder for a cluster of this test's own, under /tmp: the `postgres` user cannot
    reach pytest's tmp_path (under a 0700 folder of root's)."""
    try:
        postgresql_cluster.find_tool("initdb")
        postgresql_cluster.cluster_user()
    except postgresql_cluster.ClusterError as error:
        if REQUIRED:
            pytest.fail(f"MM7SOAP_REQUIRE_POSTGRESQL=1 but {error}")
        pytest.skip(str(error))
    directory = Path(tempfile.mkdtemp(prefix="mm7soap-pg-"))
    try:
        yield directory
        postgresql_cluster.stop(directory)
    finally:
        shutil.rmtree(directory)


def test_the_script_starts_stops_and_restarts_a_cluster(cluster_directory: Path) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "tests.postgresql_cluster", "start", str(cluster_directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    url = started.stdout.strip()
    assert started.stdout.count("\n") == 1 and url.startswith("postgresql://mm7soap:")
    assert (cluster_directory / "url").read_text(encoding="utf-8").strip() == url
    assert_the_password_matters(url)
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT current_database(), current_setting('fsync'), current_setting('synchronous_commit')"
        )
        assert row.fetchone() == ("mm7soap", "on", "on")
        connection.execute("CREATE TABLE kept (n int)")
        connection.execute("INSERT INTO kept VALUES (1)")

    postgresql_cluster.stop(cluster_directory)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()

    # Started again: the same URL, the data still there.
    assert postgresql_cluster.start(cluster_directory) == url
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT n FROM kept").fetchall() == [(1,)]
        connection.execute("INSERT INTO kept VALUES (2)")

    # Killed (its postmaster.pid left behind), then started again: crash recovery keeps every commit.
    os.kill(int((cluster_directory / "data" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while postgresql_cluster.running(cluster_directory, postgresql_cluster.cluster_user()):
        assert time.monotonic() < deadline, "the killed server did not go away"
        time.sleep(0.05)
    assert postgresql_cluster.start(cluster_directory) == url
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT n FROM kept ORDER BY n").fetchall() == [(1,), (2,)]

"""The PostgreSQL back end's pieces that need no server: the statements' placeholders, the
URL test, and the password kept out of everything printed (issue 20)."""

from __future__ import annotations

import pytest

from mm7soap.postgres import is_postgresql, options_after, redacted, translate
from mm7soap.settings import Settings


@pytest.mark.parametrize(
    ("sqlite", "psycopg"),
    [
        ("SELECT id FROM t WHERE a = ? AND b = ?", "SELECT id FROM t WHERE a = %s AND b = %s"),
        ("UPDATE t SET a = :a WHERE id = :id", "UPDATE t SET a = %(a)s WHERE id = %(id)s"),
        # In a string, a quoted name or a cast nothing is a placeholder; a literal % is doubled,
        # in a string too (psycopg reads every % of a statement with parameters).
        ("SELECT '?', ':x', 'it''s :y' FROM t WHERE a = ?", "SELECT '?', ':x', 'it''s :y' FROM t WHERE a = %s"),
        ('SELECT "a:b" FROM t WHERE c = :c', 'SELECT "a:b" FROM t WHERE c = %(c)s'),
        (
            "SELECT x::text FROM t WHERE y LIKE '5%' AND z = :z",
            "SELECT x::text FROM t WHERE y LIKE '5%%' AND z = %(z)s",
        ),
        ("SELECT 100 % 7", "SELECT 100 %% 7"),
        ("SELECT substr(a, 1, 10) || ':00Z' FROM t", "SELECT substr(a, 1, 10) || ':00Z' FROM t"),
    ],
)
def test_sqlite_placeholders_become_psycopgs(sqlite: str, psycopg: str) -> None:
    assert translate(sqlite) == psycopg


@pytest.mark.parametrize(
    ("database", "postgresql"),
    [
        ("postgresql://u:p@db:5432/mm7soap", True),
        ("postgres://u@db/mm7soap", True),
        ("POSTGRESQL://db/mm7soap", True),
        ("mm7soap.db", False),
        ("/var/lib/mm7soap/postgresql.db", False),
        (":memory:", False),
        ("postgresql.db", False),
    ],
)
def test_a_url_names_postgresql_and_a_path_sqlite(database: str, postgresql: bool) -> None:
    assert is_postgresql(database) is postgresql


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mm7soap:s3cr%40t@db.example:5432/mm7soap", "postgresql://mm7soap:***@db.example:5432/mm7soap"),
        ("postgresql://mm7soap@db/mm7soap", "postgresql://mm7soap@db/mm7soap"),
        ("postgresql://u:pw@[::1]:5432/x?sslmode=require", "postgresql://u:***@[::1]:5432/x?sslmode=require"),
        ("mm7soap.db", "mm7soap.db"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_settings_are_shown_without_any_secret() -> None:
    settings = Settings(
        database="postgresql://mm7soap:db-Pa55word@db/mm7soap",
        webhook_url="https://hook:hook-Pa55word@app.example/mm7",
        webhook_secret="whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        auth_password="mmsc-Pa55word",
    )
    shown = repr(settings)
    for secret in ("db-Pa55word", "hook-Pa55word", "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "mmsc-Pa55word"):
        assert secret not in shown
    assert "postgresql://mm7soap:***@db/mm7soap" in shown
    assert "busy_timeout_ms=5000" in shown  # the rest as before


def test_the_urls_own_options_are_kept_before_ours() -> None:
    url = "postgresql://u:p@db/mm7soap?options=-csearch_path%3Dmm7"
    assert options_after(url, "-c lock_timeout=200") == "-csearch_path=mm7 -c lock_timeout=200"
    assert options_after("postgresql://u:p@db/mm7soap", "-c lock_timeout=200") == "-c lock_timeout=200"

"""Test helpers that work on either store engine (issue 20): a test body written once runs on
SQLite and on PostgreSQL through the parametrised `database` fixture (tests/conftest.py).

A test file runs on both by overriding `settings` with `backend_settings`; a test about one
engine's own mechanics (a SQLite file, WAL, a PRAGMA) narrows `database` with `only_sqlite`
or `only_postgresql`.  The faults injected here (an INSERT refused, the write lock held by
another connection, a read-only connection) are each engine's way of making the same
failure, so that the property tested — 3000, no row, no event — is tested on both.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from mm7soap import postgres, postgres_schema, schema
from mm7soap.postgres import PgDatabase

# A test about one engine's own mechanics: `database` narrowed to that engine's run.
only_sqlite = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
only_postgresql = pytest.mark.parametrize(
    "database", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)

# What either engine raises for a broken constraint (a unique index, a foreign key).
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)


def on_postgresql(db: Any) -> bool:
    return isinstance(db, PgDatabase)


def schema_version(db: Any) -> int:
    """The count of migrations applied: SQLite's user_version, PostgreSQL's mm7soap_schema."""
    if on_postgresql(db):
        return int(db.execute("SELECT version FROM mm7soap_schema").fetchone()[0])
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def set_schema_version(db: Any, version: int) -> None:
    """Records `version` migrations as applied, as the engine keeps that count."""
    if on_postgresql(db):
        db.execute("UPDATE mm7soap_schema SET version = ?", [version])
    else:
        db.execute(f"PRAGMA user_version = {int(version)}")


def latest_version(db: Any) -> int:
    return len(postgres_schema.MIGRATIONS if on_postgresql(db) else schema.MIGRATIONS)


SQLITE_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def durability(db: Any) -> str:
    """Whether a commit on `db` waits for the disk: SQLite's `synchronous` by name, or
    PostgreSQL's `synchronous_commit` (on, off)."""
    if on_postgresql(db):
        return str(db.execute("SHOW synchronous_commit").fetchone()[0])
    return SQLITE_SYNCHRONOUS[int(db.execute("PRAGMA synchronous").fetchone()[0])]


@contextmanager
def other_connection(database: str) -> Iterator[Any]:
    """A connection of its own to `database`, as another process or instance would open:
    `.execute(sql)` gives a cursor of tuples on both engines."""
    if postgres.is_postgresql(database):
        with psycopg.connect(database, autocommit=True) as connection:
            yield connection
    else:
        with closing(sqlite3.connect(database, isolation_level=None)) as connection:
            yield connection


@contextmanager
def fail_inserts_into(db: Any, table: str, when: str = "") -> Iterator[None]:
    """Every INSERT into `table` (where `when`, an SQL condition on NEW, holds) fails as a
    full disk would, until the block ends: a trigger, made and dropped through `db`."""
    condition = f" WHEN ({when})" if when else ""
    if on_postgresql(db):
        db.execute(
            "CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW{condition} EXECUTE FUNCTION refuse_insert()"
        )
    else:
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table}{condition} BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    try:
        yield
    finally:
        db.execute(f"DROP TRIGGER refuse ON {table}" if on_postgresql(db) else "DROP TRIGGER refuse")
        if on_postgresql(db):
            db.execute("DROP FUNCTION refuse_insert()")


@contextmanager
def write_lock_held(database: str, table: str = "delivery_reports") -> Iterator[None]:
    """Another connection holds the lock a write of `table` needs until the block ends: SQLite's
    write lock (BEGIN IMMEDIATE), or on PostgreSQL the table itself (ACCESS EXCLUSIVE)."""
    with other_connection(database) as blocker:
        if postgres.is_postgresql(database):
            blocker.execute("BEGIN")
            blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        else:
            blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")


def set_read_only(db: Any, read_only: bool) -> None:
    """The store's connection made read-only, or writable again (SQLite's query_only,
    PostgreSQL's default_transaction_read_only): each write on it fails."""
    if on_postgresql(db):
        db.execute(f"SET default_transaction_read_only = {'on' if read_only else 'off'}")
    else:
        db.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")


@contextmanager
def traced(db: Any) -> Iterator[list[str]]:
    """The statements `db` runs in the block, as their text (sqlite3's trace callback; on
    PostgreSQL, its PgDatabase's `execute`, which every statement but executemany's goes through)."""
    statements: list[str] = []
    if not on_postgresql(db):
        db.conn.set_trace_callback(statements.append)
        try:
            yield statements
        finally:
            db.conn.set_trace_callback(None)
        return
    execute: Callable[..., Any] = db.execute

    def recorded(text: str, params: Any = None) -> Any:
        statements.append(text)
        return execute(text, params)

    db.execute = recorded
    try:
        yield statements
    finally:
        del db.execute  # the class's own again


@contextmanager
def fresh_postgresql_database(admin: psycopg.Connection[Any], cluster_url: str) -> Iterator[str]:
    """A new, empty database on the cluster, dropped after the block: for a fixture wider
    than one test (conftest's `postgresql_url` makes one per test)."""
    name = f"mm7soap_test_{uuid.uuid4().hex[:16]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(cluster_url)._replace(path=f"/{name}").geturl()
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

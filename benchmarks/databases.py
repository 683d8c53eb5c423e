"""PostgreSQL for the benchmarks (run.py --database, tiers.py): a fresh database per turn, made
in the cluster the URL names and dropped after it, and what that cluster is set to.

Every URL printed goes through mm7soap.postgres.redacted: a results file must not carry the
cluster's password.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from servers import BenchmarkError

from mm7soap.postgres import first_line, is_postgresql, redacted

PREFIX = "mm7soap_bench_"
# What decides what a commit costs: each must be `on` for the figures to mean durable commits.
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
DROP_ATTEMPTS = 20


def admin(cluster: str) -> psycopg.Connection[Any]:
    """A connection to the cluster's own database (the URL's), which makes and drops the others."""
    if not is_postgresql(cluster):
        raise BenchmarkError(f"not a postgresql:// URL: {redacted(cluster)}")
    try:
        return psycopg.connect(cluster, autocommit=True, connect_timeout=10, application_name="mm7soap-bench")
    except psycopg.Error as exc:
        raise BenchmarkError(f"cannot connect to {redacted(cluster)}: {first_line(exc)}") from None


def create_database(cluster: str) -> str:
    """The URL of a new, empty database in `cluster` (its role needs CREATEDB)."""
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    with admin(cluster) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise BenchmarkError(f"cannot create a database in {redacted(cluster)}: {first_line(exc)}") from None
    return urlsplit(cluster)._replace(path=f"/{name}").geturl()


def drop_database(cluster: str, url: str) -> None:
    """Drop a database `create_database` made; FORCE: a server killed mid-turn may leave sessions."""
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith(PREFIX):  # never the cluster's own database, nor anyone else's
        raise BenchmarkError(f"not a benchmark database: {redacted(url)}")
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with admin(cluster) as conn:
        for attempt in range(DROP_ATTEMPTS):
            try:
                conn.execute(drop)
                return
            except psycopg.errors.InsufficientPrivilege:
                # An autovacuum worker in it (PostgreSQL 15 lets no role but a superuser end
                # one): it is done in a moment, after the rows the turn wrote.
                if attempt == DROP_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)


def cluster_facts(cluster: str) -> dict[str, str]:
    """The server's version and durability settings, and its URL without the password."""
    with admin(cluster) as conn:
        facts = {"url": redacted(cluster), "version": str(conn.execute("SHOW server_version").fetchone()[0])}
        for setting in DURABILITY:
            facts[setting] = str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()[0])
    return facts


def describe(facts: dict[str, str]) -> str:
    """One line for a header: `PostgreSQL 16.4 at postgresql://u:***@h/db, fsync on, …`."""
    settings = ", ".join(f"{name} {facts[name]}" for name in DURABILITY)
    return f"PostgreSQL {facts['version']} at {facts['url']}, {settings}"

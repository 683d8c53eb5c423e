"""A throwaway PostgreSQL cluster for the tests and CI: a real server, nothing mocked.

    python -m tests.postgresql_cluster start DIR   # prints the URL, also written to DIR/url
    python -m tests.postgresql_cluster stop DIR

`start` runs initdb in DIR/data and starts the server on a free 127.0.0.1 port, with its Unix
socket in DIR; it makes a role `mm7soap` (a random password, LOGIN CREATEDB) and a database
`mm7soap` it owns. The socket trusts local users (only the owner of DIR can reach it); TCP asks
for the password with scram-sha-256, as a deployment would. fsync and synchronous_commit stay
on: durability is what the tests are about. PostgreSQL refuses to run as root, so as root the
cluster belongs to the `postgres` system user (Debian's package creates it) and its programs
run through `runuser`. `start` on a DIR that already holds a cluster starts it again, if needed,
and prints the same URL.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

ROLE = "mm7soap"
DATABASE = "mm7soap"
# The superuser initdb makes, whoever owns the cluster: the socket's trust lets us in as it.
SUPERUSER = "postgres"
START_TIMEOUT = 60


class ClusterError(RuntimeError):
    """A cluster could not be made, started or stopped; the message says why."""


def find_tool(name: str) -> str:
    """initdb and pg_ctl: from PATH, else the newest Debian installation (not on PATH there)."""
    found = shutil.which(name)
    if found:
        return found
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major_version)
    if not installed:
        raise ClusterError(
            f"{name} not found on PATH nor in /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
        )
    return installed[-1]


def _major_version(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def cluster_user() -> str | None:
    """Who runs the server: `postgres` when we are root, else ourselves (None: no runuser)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterError("as root, a `postgres` system user is needed to run PostgreSQL") from None
    return SUPERUSER


def as_user(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


def run(user: str | None, command: list[str], cwd: Path) -> None:
    # cwd: the cluster's user may not be allowed into ours (root's home), and initdb cares.
    done = subprocess.run(as_user(user, command), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_reachable(directory: Path, user: str | None) -> None:
    """As root the cluster's user must reach DIR (not under /root, say): a clear error now
    rather than initdb's."""
    if user is not None and subprocess.run(as_user(user, ["test", "-w", str(directory)]), check=False).returncode:
        raise ClusterError(f"{user} cannot write {directory}: every folder above it must be searchable by {user}")


def initialise(directory: Path, user: str | None) -> None:
    """initdb in DIR/data, then the server's settings in its postgresql.conf (so that a plain
    `pg_ctl start` after a stop, or after a test killed it, comes back the same)."""
    data = directory / "data"
    run(
        user,
        [
            find_tool("initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        directory,
    )
    settings = {
        "port": str(free_port()),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{directory}'",
        "max_connections": "200",
        "fsync": "on",
        "synchronous_commit": "on",
    }
    # Appended lines win over initdb's; the file belongs to the cluster's user and stays so.
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# tests/postgresql_cluster.py\n")
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())


def configured_port(directory: Path) -> int:
    port = 0
    for line in (directory / "data" / "postgresql.conf").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "port":
            port = int(value.split("#")[0].strip())
    return port


def running(directory: Path, user: str | None) -> bool:
    """pg_ctl status, rather than postmaster.pid: a server killed with SIGKILL leaves its
    pid file behind."""
    if not (directory / "data" / "PG_VERSION").exists():
        return False
    status = [find_tool("pg_ctl"), "-D", str(directory / "data"), "status"]
    return subprocess.run(as_user(user, status), cwd=directory, capture_output=True, check=False).returncode == 0


def create_role_and_database(directory: Path, port: int) -> str:
    """The role and database the tests use, over the Unix socket as the superuser."""
    password = secrets.token_urlsafe(18)  # URL-safe: the URL needs no quoting
    with psycopg.connect(host=str(directory), port=port, user=SUPERUSER, dbname="postgres", autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password))
        )
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE)))
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}"


def start(directory: Path) -> str:
    """Makes (unless DIR holds one) and starts the cluster in DIR; returns its URL."""
    directory = directory.resolve()
    user = cluster_user()
    directory.mkdir(parents=True, exist_ok=True)
    url_file = directory / "url"
    fresh = not (directory / "data" / "PG_VERSION").exists()
    if fresh:
        if user is not None:
            shutil.chown(directory, user, user)
        directory.chmod(0o700)  # the socket trusts whoever reaches it
        check_reachable(directory, user)
        initialise(directory, user)
    if not running(directory, user):
        log = directory / "postgresql.log"
        pg_ctl = [find_tool("pg_ctl"), "-D", str(directory / "data"), "-l", str(log)]
        run(user, [*pg_ctl, "-w", "-t", str(START_TIMEOUT), "start"], directory)
    if fresh or not url_file.exists():
        url_file.write_text(create_role_and_database(directory, configured_port(directory)) + "\n", encoding="utf-8")
    return url_file.read_text(encoding="utf-8").strip()


def stop(directory: Path) -> None:
    """Stops the cluster in DIR (fast: open sessions are ended); nothing to do if it is not running."""
    directory = directory.resolve()
    user = cluster_user()
    if running(directory, user):
        run(user, [find_tool("pg_ctl"), "-D", str(directory / "data"), "-m", "fast", "-w", "stop"], directory)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.postgresql_cluster start|stop DIR", file=sys.stderr)
        return 2
    try:
        if argv[0] == "start":
            print(start(Path(argv[1])))
        else:
            stop(Path(argv[1]))
    except ClusterError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

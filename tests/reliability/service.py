"""mm7soap under gunicorn as a separate process, for the reliability tests: started, posted
to over HTTP like an MMSC, killed, restarted, and its database read behind its back."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import template

ROOT = Path(__file__).parent.parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def delivery_report(transaction_id: str, message_id: str | None = None, status: str = "Retrieved") -> bytes:
    """A DeliveryReportReq as an MMSC sends it, one per MMS; ids make it unique."""
    return template(
        "delivery_report_template.xml",
        namespace=NAMESPACE,
        transaction_id=transaction_id,
        message_id=message_id or f"mid-{transaction_id}",
        version="6.8.0",
        status=status,
    )


@dataclass
class Answer:
    """What the MMSC got back: the HTTP status and the MM7 StatusCode (None: no MM7 answer)."""

    http_status: int
    status_code: str | None
    body: bytes

    @property
    def acknowledged(self) -> bool:
        return self.http_status == 200 and self.status_code == "1000"


def status_code(body: bytes) -> str | None:
    start = body.find(b"<StatusCode>")
    end = body.find(b"</StatusCode>")
    if start < 0 or end < 0:
        return None
    return body[start + len(b"<StatusCode>") : end].decode("ascii", "replace")


class Client:
    """One keep-alive connection, as an MMSC thread holds one; reconnects after any failure."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, path: str = "/mm7", content_type: str = "text/xml; charset=utf-8") -> Answer:
        """Raises OSError or http.client.HTTPException when no answer came (the MMSC retries)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request("POST", path, body, {"Content-Type": content_type, "SOAPAction": f'"{NAMESPACE}"'})
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return Answer(response.status, status_code(payload), payload)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Service:
    """gunicorn serving mm7soap on a free port of 127.0.0.1, with its production config."""

    database: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Run gunicorn without root's power to ignore file modes (CAP_DAC_OVERRIDE), so that a
    # read-only file is read-only to it too.
    honour_file_modes: bool = False

    def start(self) -> None:
        self.log_path = self.database.parent / f"gunicorn-{self.port}.log"
        env = {
            **os.environ,
            "MM7SOAP_DATABASE": str(self.database),
            "MM7SOAP_HOST": "127.0.0.1",
            "MM7SOAP_PORT": str(self.port),
            # gunicorn ≥ 25 opens a control socket, by default in $HOME: keep each run's apart.
            "XDG_RUNTIME_DIR": str(self.database.parent),
            **self.env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix(), str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy()
        self.wait_workers()

    def prefix(self) -> list[str]:
        if not self.honour_file_modes or os.geteuid() != 0:
            return []
        dropped = "-dac_override,-dac_read_search"
        return ["setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}"]

    @property
    def master(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> list[int]:
        """The master's children: gunicorn's workers."""
        return children(self.master)

    def wait_workers(self) -> None:
        wanted = int(self.env.get("MM7SOAP_WORKERS", "2"))
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.workers()) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if Client(self.port, timeout=2).get("/health")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not become healthy:\n{self.log_tail()}")

    def health(self) -> int:
        return Client(self.port, timeout=10).get("/health")[0]

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """SIGKILL to the master and its workers: a power cut, as far as the processes go."""
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def log_tail(self, lines: int = 40, requests: bool = True) -> str:
        """The log's last lines; without the request log's lines (one per MM7 request) when
        what went wrong is in the master's or the forwarder's own lines, seconds earlier."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        logged = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in logged if requests or " operation=" not in line][-lines:])

    def rows(self, table: str = "delivery_reports") -> list[tuple[str, str]]:
        """(transaction_id, message_id) of every stored row, read with a separate connection."""
        with closing(sqlite3.connect(self.database, timeout=10)) as conn:
            return conn.execute(f"SELECT transaction_id, message_id FROM {table}").fetchall()

    def integrity(self) -> str:
        with closing(sqlite3.connect(self.database, timeout=10)) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@contextmanager
def serving(database: Path, **env: str) -> Iterator[Service]:
    service = Service(database, dict(env))
    service.start()
    try:
        yield service
    finally:
        service.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie that nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int, database: Path) -> Counter[str]:
    """A process's open descriptors by what they are: "database" (the file, its WAL and
    shared memory), "socket", or "other" (pipes, logs, metrics files, ...)."""
    kinds: Counter[str] = Counter()
    database = database.resolve()  # as the kernel names the file
    folder = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(folder):
        try:
            target = os.readlink(folder / fd)
        except FileNotFoundError:  # closed since it was listed
            continue
        if target.startswith(str(database)):
            kinds["database"] += 1
        elif target.startswith("socket:"):
            kinds["socket"] += 1
        else:
            kinds["other"] += 1
    return kinds

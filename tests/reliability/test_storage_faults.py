"""Storage faults under a running gunicorn: a write lock held past the busy timeout, the
database swapped for a read-only copy, the file deleted, the file replaced (by garbage, and
by another good database), and the disk full.  While a fault lasts every report is answered
with a Server fault 3000 (never 1000) and /health is 503; once it clears the service stores
again, without a restart, and every report the MMSC re-sends is stored exactly once.

File modes do not bind root: as root the service runs without CAP_DAC_OVERRIDE (setpriv)
for the read-only fault.  A full disk is a small tmpfs, which only root can mount: that test
skips elsewhere, unless MM7SOAP_REQUIRE_FAULTS=1 (CI), which makes a skip a failure.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from tests.reliability.service import Answer, Client, Service, delivery_report, serving

REQUIRED = os.environ.get("MM7SOAP_REQUIRE_FAULTS") == "1"
BUSY_TIMEOUT_MS = "300"
RECOVERY_TIMEOUT = 15.0


def need(condition: bool, reason: str) -> None:
    if condition:
        return
    if REQUIRED:
        pytest.fail(f"MM7SOAP_REQUIRE_FAULTS=1 but {reason}")
    pytest.skip(reason)


def refused(service: Service, tag: str, count: int = 40, connections: int = 4) -> list[bytes]:
    """Posts `count` new reports during the fault over several connections (so that both
    workers and several threads meet it): each must be a Server fault 3000."""
    reports = [delivery_report(f"{tag}-{n}") for n in range(count)]

    def post_share(share: list[bytes]) -> list[Answer]:
        client = Client(service.port)
        try:
            return [client.post(body) for body in share]
        finally:
            client.close()

    with ThreadPoolExecutor(connections) as pool:
        shares = [reports[i::connections] for i in range(connections)]
        answers = [answer for done in pool.map(post_share, shares) for answer in done]
    for answer in answers:
        assert (answer.http_status, answer.status_code) == (500, "3000"), answer.body
        assert b"<faultcode>env:Server</faultcode>" in answer.body
    assert service.health() == 503
    return reports


def recovered(service: Service, resent: list[bytes], fault: str) -> float:
    """Seconds until /health is 200 again; then the refused reports, re-sent, are stored."""
    cleared = time.monotonic()
    while service.health() != 200:
        assert time.monotonic() - cleared < RECOVERY_TIMEOUT, service.log_tail()
        time.sleep(0.05)
    took = time.monotonic() - cleared
    client = Client(service.port)
    try:
        for body in resent:
            assert client.post(body).acknowledged
    finally:
        client.close()
    print(
        f"RELIABILITY storage fault, {fault}: {len(resent)} reports refused with 3000 (0 acknowledged),"
        f" /health 503; healthy {took:.2f} s after the fault cleared; all {len(resent)} re-sent and stored"
    )
    return took


def assert_stored_once(service: Service, tags: list[str]) -> None:
    rows = service.rows()
    assert len(rows) == len(set(rows))
    stored = {transaction_id for transaction_id, _ in rows}
    assert set(tags) <= stored
    assert service.integrity() == "ok"


def tags_of(reports: list[bytes]) -> list[str]:
    return [body.split(b'mustUnderstand="1">', 1)[1].split(b"<", 1)[0].decode() for body in reports]


def acknowledge(service: Service, tag: str) -> str:
    client = Client(service.port)
    try:
        assert client.post(delivery_report(tag)).acknowledged
    finally:
        client.close()
    return tag


def backup(database: Path, to: Path) -> None:
    """A consistent copy, as an operator takes one (the WAL's content included)."""
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(to)) as target:
        source.backup(target)


def remove_database(database: Path, suffixes: tuple[str, ...] = ("", "-wal", "-shm")) -> None:
    for suffix in suffixes:
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def replace_database(database: Path, new: Path) -> None:
    """Moves `new` into place as an operator should: the old file's WAL and shared memory
    go too, since SQLite would otherwise read the old WAL as the new file's."""
    os.replace(new, database)
    remove_database(database, ("-wal", "-shm"))


def prove_fault(
    service: Service, tag: str, described: str, inject: Callable[[], object], clear: Callable[[], object]
) -> None:
    """One report stored before the fault; while it lasts every report is refused with 3000
    and /health is 503; once cleared, healthy again without a restart, and every refused
    report, re-sent, is stored once beside the first."""
    before = acknowledge(service, f"{tag}-before")
    inject()
    reports = refused(service, tag)
    clear()
    recovered(service, reports, described)
    assert_stored_once(service, [before, *tags_of(reports)])


def test_a_write_lock_held_past_the_busy_timeout(tmp_path):
    with serving(tmp_path / "mm7soap.db", MM7SOAP_BUSY_TIMEOUT_MS=BUSY_TIMEOUT_MS) as service:
        before = acknowledge(service, "lock-before")
        blocker = sqlite3.connect(service.database, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            reports = refused(service, "lock")
            # Each connection posted 10 in turn.  An answer waits for the commit in progress
            # (its busy timeout) and then for its own, and no longer: the MMSC is not kept waiting.
            per_answer = (time.monotonic() - started) / 10
            assert per_answer < 2 * int(BUSY_TIMEOUT_MS) / 1000 + 0.5
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        recovered(service, reports, "write lock held past the busy timeout")
        assert_stored_once(service, [before, *tags_of(reports)])


def test_the_database_file_deleted_then_restored(tmp_path):
    with serving(tmp_path / "mm7soap.db") as service:

        def delete() -> None:
            backup(service.database, tmp_path / "backup.db")
            remove_database(service.database)

        def restore() -> None:
            # Not re-created behind the operator's back: a missing file may be an unmounted volume.
            assert not service.database.exists()
            shutil.move(tmp_path / "backup.db", service.database)

        prove_fault(service, "deleted", "file deleted, then restored", delete, restore)


def test_the_database_file_replaced_by_garbage_then_restored(tmp_path):
    with serving(tmp_path / "mm7soap.db") as service:

        def garble() -> None:
            backup(service.database, tmp_path / "backup.db")
            (tmp_path / "garbage").write_bytes(b"this is not a database" * 1000)
            replace_database(service.database, tmp_path / "garbage")

        def restore() -> None:
            replace_database(service.database, tmp_path / "backup.db")

        prove_fault(service, "garbage", "file replaced by garbage, then restored", garble, restore)


def test_a_replaced_database_gets_the_reports_that_follow(tmp_path):
    """A good database moved into place (a restored backup): nothing acknowledged after the
    swap goes to the old, unlinked file."""
    with serving(tmp_path / "mm7soap.db") as service:
        acknowledge(service, "old-file")
        with closing(sqlite3.connect(tmp_path / "new.db")) as new:
            new.execute("PRAGMA journal_mode = WAL")  # as an operator's empty file would be: no schema yet
        replace_database(service.database, tmp_path / "new.db")
        client = Client(service.port)
        try:
            tags = [f"new-file-{n}" for n in range(20)]
            for tag in tags:
                assert client.post(delivery_report(tag)).acknowledged
        finally:
            client.close()
        assert sorted(tid for tid, _ in service.rows()) == sorted(tags)
        assert service.integrity() == "ok"


def test_the_database_swapped_for_a_read_only_copy(tmp_path):
    need(os.geteuid() != 0 or shutil.which("setpriv") is not None, "root ignores file modes and setpriv is missing")
    service = Service(tmp_path / "mm7soap.db", honour_file_modes=True)
    service.start()

    def swap_for_read_only_copy() -> None:
        copy = tmp_path / "copy.db"
        backup(service.database, copy)
        copy.chmod(0o444)
        replace_database(service.database, copy)

    def make_writable() -> None:
        # SQLite made the WAL and shared-memory files with the database's mode: all three.
        for path in service.database.parent.glob(service.database.name + "*"):
            path.chmod(0o644)

    try:
        described = "file swapped for a read-only copy, then made writable"
        prove_fault(service, "read-only", described, swap_for_read_only_copy, make_writable)
    finally:
        service.stop()


@contextmanager
def small_filesystem(size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib`, mounted for the test: a disk that really fills (ENOSPC)."""
    need(os.geteuid() == 0, "mounting a small filesystem needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="mm7soap-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0777", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        need(False, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def fill(directory: Path) -> Path:
    """Writes a file until the filesystem has no room left (unbuffered: a buffer would
    fail again on close)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_the_disk_full(tmp_path):
    with small_filesystem(4096) as disk, serving(disk / "mm7soap.db") as service:
        prove_fault(service, "full", "disk full, then freed", lambda: fill(disk), lambda: (disk / "filler").unlink())

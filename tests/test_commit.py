"""Group commit: writes that arrive together share one commit, each is acknowledged only
after it, and a failure never lets a write through that was not committed."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mm7soap import errors
from mm7soap.commit import GroupCommit, Ticket
from mm7soap.settings import Settings
from mm7soap.store import Store


@pytest.fixture
def store(tmp_path: Path):
    with Store(Settings(database=str(tmp_path / "c.db"), busy_timeout_ms=1000)) as store:
        store.migrate()
        store.db.conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        yield store


def note(text: str | None):
    return lambda db: db.conn.execute("INSERT INTO notes (text) VALUES (?)", [text]).lastrowid


def notes(store: Store) -> list[str]:
    return [row[0] for row in store.db.conn.execute("SELECT text FROM notes ORDER BY id")]


def test_writes_waiting_together_share_one_commit(store, monkeypatch):
    group = store.writes
    batches: list[int] = []
    commit = GroupCommit.commit
    monkeypatch.setattr(GroupCommit, "commit", lambda self, batch: (batches.append(len(batch)), commit(self, batch)))
    with group.changed:
        group.leading = True  # a commit in progress: the next writes queue up behind it
    threads = [threading.Thread(target=group.run, args=(note(f"n{i}"),)) for i in range(5)]
    for thread in threads:
        thread.start()
    queued(group, 5)
    group.step_down()
    for thread in threads:
        thread.join()
    assert batches == [5]
    assert sorted(notes(store)) == [f"n{i}" for i in range(5)]


def queued(group: GroupCommit, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(group.pending) < count:
        assert time.monotonic() < deadline, "the writes did not queue up"
        time.sleep(0.001)


def test_a_committed_write_returns_while_the_next_commit_runs(store):
    """Its thread answers once the commit holding it is done, even when another thread has
    begun the next commit before it woke up."""
    group = store.writes
    with group.changed:
        group.leading = True  # a commit in progress: the write queues up behind it
    answered = threading.Thread(target=group.run, args=(note("in the first commit"),))
    answered.start()
    queued(group, 1)
    with group.changed:
        batch = group.lead()  # this test leads the next commit, with the queued write
    group.commit(batch)
    group.step_down()
    with group.changed:
        group.lead()  # and another at once, still running while the write's thread wakes
    answered.join(2)
    try:
        assert not answered.is_alive(), "a committed write waited for the next leader's commit"
    finally:
        group.step_down()
        answered.join()
    assert notes(store) == ["in the first commit"]


def test_a_failing_write_fails_alone(store):
    tickets = [Ticket(note("first")), Ticket(note(None)), Ticket(note("third"))]  # NOT NULL broken
    store.writes.commit(tickets)
    assert [t.done for t in tickets] == [True, True, True]
    assert tickets[0].error is None and tickets[2].error is None
    assert isinstance(tickets[1].error, errors.StoreError)
    assert notes(store) == ["first", "third"]


def rolled_back_by_sqlite(db):
    db.conn.execute("ROLLBACK")  # as SQLite does itself on a full disk or an I/O error
    raise sqlite3.OperationalError("database or disk is full")


def test_a_transaction_lost_fails_every_write_in_it(store):
    tickets = [Ticket(note("first")), Ticket(rolled_back_by_sqlite), Ticket(note("third"))]
    store.writes.commit(tickets)
    assert all(isinstance(t.error, errors.StoreError) for t in tickets)
    assert notes(store) == []


def test_an_interrupted_leader_acknowledges_nothing(store):
    def interrupted(db):
        raise KeyboardInterrupt

    tickets = [Ticket(note("first")), Ticket(interrupted)]
    with pytest.raises(KeyboardInterrupt):
        store.writes.commit(tickets)
    assert all(t.done and isinstance(t.error, errors.StoreError) for t in tickets)
    assert notes(store) == [] and not store.db.conn.in_transaction


def test_the_write_lock_of_another_process_is_waited_for_within_the_busy_timeout(store, tmp_path):
    other = sqlite3.connect(str(tmp_path / "c.db"), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.1, other.execute, args=("COMMIT",)).start()
    started = time.monotonic()
    store.writes.run(note("after the lock"))
    waited = time.monotonic() - started
    other.close()
    assert 0.09 < waited < 0.5  # taken soon after it was released, well within 1 s
    assert notes(store) == ["after the lock"]


def test_many_threads_every_write_committed_once(store):
    def writer(n: int) -> None:
        for i in range(20):
            store.writes.run(note(f"{n}-{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(notes(store)) == sorted(f"{n}-{i}" for n in range(8) for i in range(20))

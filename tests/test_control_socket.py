"""gunicorn's control socket (`gunicornc`): one per mm7soap instance, so that two instances on
one host do not take each other's away (gunicorn's default path is one per user)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mm7soap.serving import UNIX_PATH_MAX, control_socket, gunicorn_options
from mm7soap.settings import Settings
from tests.reliability.service import BIN, Service


def test_each_database_and_port_has_its_own_control_socket(tmp_path):
    one = gunicorn_options(Settings(database=str(tmp_path / "one.db"), port=8080))
    other_database = gunicorn_options(Settings(database=str(tmp_path / "two.db"), port=8080))
    other_port = gunicorn_options(Settings(database=str(tmp_path / "one.db"), port=8081))
    assert one["control_socket"] == str(tmp_path / "one.db.8080.ctl")
    assert other_database["control_socket"] == str(tmp_path / "two.db.8080.ctl")
    assert other_port["control_socket"] == str(tmp_path / "one.db.8081.ctl")
    assert not any(options.get("control_socket_disable") for options in (one, other_database, other_port))


def test_a_relative_database_names_an_absolute_socket(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert control_socket(Settings(database="mm7soap.db")) == {"control_socket": str(tmp_path / "mm7soap.db.8080.ctl")}


def test_no_control_socket_where_none_can_be(tmp_path):
    """A database in memory has no folder; a path past AF_UNIX's limit cannot be bound."""
    assert gunicorn_options(Settings(database=":memory:"))["control_socket_disable"] is True
    deep = tmp_path / ("d" * (UNIX_PATH_MAX - len(str(tmp_path)))) / "mm7soap.db"
    options = gunicorn_options(Settings(database=str(deep)))
    assert options["control_socket_disable"] is True and "control_socket" not in options


def master_at(path: str) -> int:
    """The pid of the gunicorn master that answers gunicornc on the control socket at `path`."""
    done = subprocess.run(
        [str(BIN / "gunicornc"), "-s", path, "-c", "show stats", "-j"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(json.loads(done.stdout)["pid"])


def test_two_instances_keep_their_own_control_sockets(tmp_path: Path):
    """Both databases in one folder, which the harness also makes $XDG_RUNTIME_DIR: with
    gunicorn's default path the second instance's start, and then its stop, took the first's."""
    first = Service(tmp_path / "first.db", {"MM7SOAP_WORKERS": "1"})
    second = Service(tmp_path / "second.db", {"MM7SOAP_WORKERS": "1"})
    paths = [control_socket(Settings(database=str(s.database), port=s.port))["control_socket"] for s in (first, second)]
    first.start()
    try:
        second.start()
        try:
            assert [master_at(path) for path in paths] == [first.master, second.master]
        finally:
            second.stop()
        assert not os.path.exists(paths[1])  # gunicorn removes its own at stop
        assert master_at(paths[0]) == first.master
        assert first.health() == 200
    finally:
        first.stop()
    assert not os.path.exists(paths[0])

"""How gunicorn's master starts the forwarder and the retention process (mm7soap/supervisor.py):
a worker forked meanwhile never holds up the start, and each dies with the master.

Each case runs in a process of its own: it forks, kills and waits on its children, which
the test process must not do with pytest's threads in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mm7soap.supervisor import MASTER_PID_ENV
from tests.reliability.service import alive

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork hooks and PR_SET_PDEATHSIG: Linux")


def python(code: str, **env: str | None) -> subprocess.Popen[str]:
    """`python -c code` in the repository, with `env` over the test's environment (None: unset)."""
    environment = {key: value for key, value in {**os.environ, **env}.items() if value is not None}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# The master's main thread forks a worker while the watch thread is inside Popen, between the
# pipe Popen reads its child's exec from and that exec: os.pipe is wrapped to wait there.
FORK_DURING_THE_START = """
    import os, sys, threading, time
    from mm7soap.settings import Settings
    from mm7soap.supervisor import ForwarderProcess

    class Started(ForwarderProcess):
        module = "mm7soap.supervisor"  # starts and ends at once: only the start matters here

    in_the_window = threading.Event()
    pipe = os.pipe

    def pipe_then_wait():
        fds = pipe()
        if threading.current_thread().name.endswith("-watch"):
            in_the_window.set()
            time.sleep(0.5)  # a fork now would copy the pipe's write end
        return fds

    os.pipe = pipe_then_wait
    process = Started(Settings())
    process.start()
    in_the_window.wait(10)
    began = time.monotonic()
    worker = os.fork()  # as gunicorn's master forks a worker
    if worker == 0:
        time.sleep(20)  # a worker lives on, with whatever descriptors it was forked with
        os._exit(0)
    while process.process is None and time.monotonic() - began < 15:
        time.sleep(0.01)
    print(process.process is not None, round(time.monotonic() - began, 2))
    process.stop()
    os.kill(worker, 9)
    os.waitpid(worker, 0)
"""


def test_a_worker_forked_while_the_forwarder_starts_does_not_hold_the_start_up():
    """Without the lock every fork takes, the worker kept the pipe and Popen waited for the
    worker's exit (20 s here, a worker's life in production): the forwarder then ran, but its
    watch thread never saw it start, so a killed forwarder was never started again."""
    child = python(FORK_DURING_THE_START)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    started, seconds = out.split()
    assert started == "True", err
    assert float(seconds) < 5.0, f"the start waited {seconds} s for the forked worker"


# What the forwarder and the retention process do first, then a line to show they ran on.
DIE_WITH_THE_MASTER = (
    "from mm7soap.supervisor import die_with_the_master; die_with_the_master(); print('ran on', flush=True)"
)

# A master that starts a child as the supervisor does, with its pid in the child's environment,
# and then waits to be killed.
CHILD = DIE_WITH_THE_MASTER + "; import time; time.sleep(60)"
MASTER = f"""
    import os, subprocess, sys, time
    from mm7soap.supervisor import MASTER_PID_ENV
    child = subprocess.Popen(
        [sys.executable, "-c", {CHILD!r}],
        env={{**os.environ, MASTER_PID_ENV: str(os.getpid())}},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "ran on\\n"
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_the_forwarder_gets_sigterm_when_its_master_is_killed():
    master = python(MASTER)
    child = 0
    try:
        child = int(master.stdout.readline())
        master.send_signal(signal.SIGKILL)
        master.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), "the child outlived its killed master"
    finally:
        master.kill()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)  # it holds the master's stderr: communicate() waits for it
        master.communicate()


# "1": the master died between the start and the child's request to the kernel (its parent
# is no longer that pid); nobody would signal it, so it ends itself.  None: `mm7soap forward`
# on a host of its own, nobody to die with, nothing asked.
@pytest.mark.parametrize(("master", "output"), [("1", ""), (None, "ran on\n")], ids=["gone", "none"])
def test_a_child_ends_at_once_when_its_master_is_gone_and_runs_on_without_one(master, output):
    child = python(DIE_WITH_THE_MASTER, **{MASTER_PID_ENV: master})
    out, err = child.communicate(timeout=30)
    assert (child.returncode, out) == (0, output), err

"""The forwarder beside gunicorn: one command still starts everything (issue 18).

When a webhook URL is set, gunicorn's master (`mm7soap serve`, or `gunicorn -c
gunicorn.conf.py`) starts `python -m mm7soap.forwarder` once it is ready, starts it again if
it dies (after a pause, so a forwarder that cannot start does not spin), and stops it when
the master exits.  It is a process of its own, so a slow receiver never takes a worker's CPU
or memory, and killing it loses nothing: its leased events are delivered after the lease.
`RetentionProcess` runs the hourly prune (mm7soap.retention) beside it the same way (issue 19).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from mm7soap.settings import Settings

log = logging.getLogger(__name__)

RESTART_PAUSE = 1.0
STOP_SECONDS = 15.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with_its_parent() -> Callable[[], None] | None:
    """What the forwarder runs before exec on Linux: the kernel sends it SIGTERM (it finishes
    its deliveries, then exits) when the thread that started it dies with the master.

    Without it a master killed on its own (the OOM killer, `kill -9` of one pid) left the
    forwarder running for ever, orphaned, with the old settings; gunicorn's workers notice
    their parent is gone and exit, the forwarder never did, and the restarted service started
    a second one beside it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    master, term = os.getpid(), int(signal.SIGTERM)

    def in_the_child() -> None:
        prctl(PR_SET_PDEATHSIG, term)
        if os.getppid() != master:  # the master died before the call: nobody would signal it
            os._exit(0)

    return in_the_child


class ForwarderProcess:
    # What runs beside the workers, as `python -m module` (RetentionProcess runs another).
    module = "mm7soap.forwarder"
    name = "forwarder"

    def __init__(self, settings: Settings, exited: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.environment = settings.environment()
        self.exited = exited  # told each exited forwarder's pid (its metrics are folded)
        self.stopping = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        # The environment as it is now: gunicorn's on_starting has added the metrics'
        # directory (PROMETHEUS_MULTIPROC_DIR) since __init__.
        self.environment = self.settings.environment()
        threading.Thread(target=self.watch, name=f"{self.name}-watch", daemon=True).start()

    def watch(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                self.process = subprocess.Popen(
                    [sys.executable, "-m", self.module],
                    env=self.environment,
                    preexec_fn=dies_with_its_parent(),  # one C call before exec: no lock taken
                )
            code = self.process.wait()  # 0 also when gunicorn's master reaped it first
            if self.exited is not None and not self.stopping.is_set():  # stopping: the master is exiting
                self.exited(self.process.pid)
            if not self.stopping.is_set():
                log.error("the %s stopped (exit %s); starting it again", self.name, code)
                self.stopping.wait(RESTART_PAUSE)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # it finishes the deliveries in flight
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()


class RetentionProcess(ForwarderProcess):
    """`python -m mm7soap.retention` beside the workers when `retention_days` is set (issue 19):
    it prunes what is older every hour, in short transactions, and is started, restarted and
    stopped as the forwarder is.  Killing it loses nothing: each batch is its own transaction."""

    module = "mm7soap.retention"
    name = "retention"

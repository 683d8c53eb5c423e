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


# The master's pid, in the environment of each process it starts: `die_with_the_master`.
MASTER_PID_ENV = "MM7SOAP_MASTER_PID"


def die_with_the_master() -> None:
    """First thing in the forwarder and the retention process: on Linux, the kernel sends it
    SIGTERM (it finishes what it is doing, then exits) when the master that started it dies.

    Without it a master killed on its own (the OOM killer, `kill -9` of one pid) left the
    forwarder running for ever, orphaned, with the old settings; gunicorn's workers notice
    their parent is gone and exit, the forwarder never did, and the restarted service started
    a second one beside it.  Asked here, after the exec, rather than by a `preexec_fn` between
    the fork and the exec: nothing of the threaded master's Python runs in the child, so it
    cannot deadlock there (subprocess's documentation), and the master's fork hooks (gunicorn's
    control socket is stopped and restarted by them) are not run for it."""
    master = os.environ.get(MASTER_PID_ENV)
    if not master or not sys.platform.startswith("linux"):
        return  # `mm7soap forward` on a host of its own: nobody to die with
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(master):  # the master died before the call: nobody would signal it
        raise SystemExit(0)


# gunicorn's master forks a worker from its main thread whenever one is needed (at the start,
# and for each worker that died), and a watch thread below may be starting a process at that
# moment.  subprocess.Popen reads a pipe until its child's exec closes the write end; a worker
# forked in between inherits that end and keeps it for its life, and Popen never returned.
# Seen in CI: the first forwarder ran, its watch thread waited in Popen, and when the forwarder
# was killed nobody started another (nor could `stop()` reach it).  Every fork in the process
# takes this lock first (os.register_at_fork), and a process is started while holding it.
# Reentrant, so a Popen that did run the fork hooks (a `preexec_fn`) could not deadlock on it.
spawning = threading.RLock()


def _renew_spawning() -> None:
    global spawning
    spawning = threading.RLock()  # the child's copy may be held by the forking thread


os.register_at_fork(
    before=lambda: spawning.acquire(), after_in_parent=lambda: spawning.release(), after_in_child=_renew_spawning
)


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
        self.environment = {**self.settings.environment(), MASTER_PID_ENV: str(os.getpid())}
        threading.Thread(target=self.watch, name=f"{self.name}-watch", daemon=True).start()

    def watch(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                with spawning:  # no worker forked between Popen's pipe and the child's exec
                    self.process = subprocess.Popen([sys.executable, "-m", self.module], env=self.environment)
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

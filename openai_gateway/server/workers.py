"""The main process of `server.workers > 1`: forks the workers, restarts one that dies, and
forwards SIGHUP and SIGTERM to them.

Each worker binds the same port with SO_REUSEPORT (the kernel spreads the connections) and
serves as a single process would; what a worker runs is given to the supervisor (`Worker`),
so this module knows processes and signals, not the app.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable

from ..config import ConfigError, Settings
from . import sdnotify

log = logging.getLogger("gateway")

#: A worker's exit status when it could not bind: restarting it would not help.
EXIT_CANNOT_LISTEN = 3

#: One worker's life: serve `settings` until stopped, call `on_ready` once accepting; returns
#: the worker's exit status (EXIT_CANNOT_LISTEN when the port could not be bound).
Worker = Callable[[Settings, Callable[[], None]], int]


class Supervisor:
    """Forks, watches and signals the workers.

    Its loop never sleeps longer than half a second or the watchdog interval: a dead worker's
    restart is scheduled (RESTART_DELAY later), not waited for, so WATCHDOG=1 keeps going out.
    `reread` reads the settings again on SIGHUP (None: nothing to re-read), for the workers
    started after it.
    """

    RESTART_DELAY = 1.0

    def __init__(self, settings: Settings, workers: int, *, worker: Worker,
                 reread: Callable[[], Settings] | None = None):
        self.settings = settings
        self.worker = worker
        self.reread = reread
        self.n = workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.restarts: dict[int, float] = {}  # worker index -> when to start it (monotonic)
        self.stopping = False
        self.failed = False
        self.ready_r, self.ready_w = os.pipe()

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(self.ready_r)
            # Only the main process speaks to systemd (NotifyAccess=main); readiness comes
            # through the pipe instead.
            os.environ.pop("NOTIFY_SOCKET", None)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1

            def ready() -> None:
                os.write(self.ready_w, b"r")

            try:
                code = self.worker(self.settings, ready)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index

    def _signal_all(self, sig: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        log.info("starting %d workers on port %d (SO_REUSEPORT)", self.n,
                 self.settings.server.port)
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, lambda *_: self._stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload())
        for i in range(self.n):
            self._spawn(i)
        ready, interval = 0, sdnotify.watchdog_interval()
        last_ping = 0.0
        while self.children or (self.restarts and not self.stopping):
            now = time.monotonic()
            self._restart_due(now)
            try:
                readable, _, _ = select.select([self.ready_r], [], [], self._timeout(now, interval))
            except InterruptedError:
                readable = []
            if readable:
                ready += len(os.read(self.ready_r, 64))
                if ready == self.n:
                    sdnotify.ready(f"serving with {self.n} workers")
            if interval and time.monotonic() - last_ping >= interval:
                sdnotify.notify("WATCHDOG=1")
                last_ping = time.monotonic()
            self._reap()
        log.info("all workers stopped")
        return 1 if self.failed else 0

    def _timeout(self, now: float, interval: float | None) -> float:
        """How long select() may wait: until the next keep-alive or scheduled restart."""
        timeout = min(interval or 0.5, 0.5)
        if self.restarts:
            timeout = min(timeout, max(min(self.restarts.values()) - now, 0.0))
        return timeout

    def _reap(self) -> None:
        """Collect exited workers (never blocks); schedule a restart for each."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == EXIT_CANNOT_LISTEN:  # the worker logged why; a restart would fail too
                self.failed = True
                self._stop()
                continue
            log.error("worker %d (pid %d) exited with status %d; restarting in %s s", index,
                      pid, code, self.RESTART_DELAY)
            self.restarts[index] = time.monotonic() + self.RESTART_DELAY

    def _restart_due(self, now: float) -> None:
        """Start the workers whose restart time has come."""
        for index, due in list(self.restarts.items()):
            if due <= now and not self.stopping:
                del self.restarts[index]
                self._spawn(index)

    def _reload(self) -> None:
        """Workers reload themselves; the supervisor keeps the new settings for respawns."""
        if self.reread is not None:
            try:
                self.settings = self.reread()
            except ConfigError:
                pass  # each worker logs the reasons and keeps its configuration
        self._signal_all(signal.SIGHUP)

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.restarts.clear()
            sdnotify.stopping()
            self._signal_all(signal.SIGTERM)

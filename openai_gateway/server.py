"""Process lifecycle: bind, tell systemd, serve, reload on SIGHUP, drain on SIGTERM, workers.

One process by default. With `server.workers = N` the main process forks N workers that each
bind the same port with SO_REUSEPORT (the kernel spreads connections), restarts a worker that
dies, and forwards SIGHUP and SIGTERM to them.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import select
import signal
import time

from aiohttp import web

from . import logs, sdnotify
from .app import create_app, mark_draining, reconfigure
from .headerguard import GuardedTCPSite
from .demo import DemoUpstream
from .settings import ConfigError, Settings, load, resolve_workers

log = logging.getLogger("gateway")

#: Garbage-collector thresholds while serving. The defaults (700, 10, 10) run a young
#: collection every ~2 requests and, as rate-limit entries and cached answers accumulate, full
#: collections that walk all of them: ~10% of the miss path's time in the bench. Requests free
#: almost everything by reference counting; cycles are still collected, just in larger batches.
#: A full collection every 200 young ones (10M allocations: seconds under load, minutes when
#: quiet) keeps cycles that reached the old generation from piling up (the soak checks it).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Start-up objects (modules, settings, the app) never become garbage: freeze them out of
    every future collection, then collect less often (see GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def warn_risky(s: Settings) -> None:
    """Start-up warnings for settings that work but are probably not what was meant."""
    if "*" in s.cors.allow_origins:
        log.warning('cors.allow_origins contains "*": any web page can spend this key\'s '
                    "budget through the gateway; list your front-end's origins instead")
    if not s.rate_limit.requests and not s.clients:
        log.warning("rate_limit.requests is empty: clients are not rate limited")


def reload(app: web.Application, config_path: str | None) -> bool:
    """SIGHUP: re-read the config file; a bad one is rejected and the old one kept."""
    if config_path is None:
        return False
    sdnotify.reloading()
    try:
        new = load(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload rejected, keeping the running configuration: %s", problem)
        sdnotify.ready("serving (reload rejected)")
        return False
    for key in reconfigure(app, new):
        log.warning("reload: %s changed but needs a restart to apply", key)
    logging.getLogger().setLevel(new.log.level.upper())
    log.info("configuration reloaded from %s", config_path)
    sdnotify.ready()
    return True


async def serve(settings: Settings, config_path: str | None = None, *, reuse_port: bool = False,
                on_ready=None, demo: DemoUpstream | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, let requests finish, close."""
    warn_risky(settings)
    app = create_app(settings)
    if demo is not None:
        demo.attach(app)  # --demo: the built-in upstream is served by this app's event loop
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    site = GuardedTCPSite(runner, settings.server.host, settings.server.port,
                          header_timeout=settings.server.header_timeout, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.server.host, settings.server.port,
                  exc.strerror or exc)
        await runner.cleanup()
        raise SystemExit(1) from None
    log.info("gateway listening on http://%s:%d, forwarding to %s", settings.server.host,
             settings.server.port, settings.upstream.base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, config_path)
    # Keep-alives come from this loop: if it blocks, they stop and systemd restarts us.
    watchdog = asyncio.ensure_future(sdnotify.watchdog_loop())
    tune_gc()
    if on_ready is not None:
        on_ready()
    else:
        sdnotify.ready()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests (up to %ss)",
                 settings.server.shutdown_timeout)
        sdnotify.stopping()
        mark_draining(app)
        watchdog.cancel()
        await runner.cleanup()
        logs.flush()
        log.info("stopped")


def run(settings: Settings, config_path: str | None, demo: DemoUpstream | None = None) -> None:
    workers = resolve_workers(settings.server.workers)
    if workers == 1:
        asyncio.run(serve(settings, config_path, demo=demo))
    else:
        Supervisor(settings, config_path, workers).run()


class Supervisor:
    """The main process of `server.workers > 1`: forks, watches and signals the workers."""

    RESTART_DELAY = 1.0

    def __init__(self, settings: Settings, config_path: str | None, workers: int):
        self.settings = settings
        self.config_path = config_path
        self.n = workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
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
            code = 0
            try:
                asyncio.run(serve(self.settings, self.config_path, reuse_port=True,
                                  on_ready=lambda: os.write(self.ready_w, b"r")))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = index

    def _signal_all(self, sig: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        log.info("starting %d workers on port %d (SO_REUSEPORT)", self.n,
                 self.settings.server.port)
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, lambda *_: self._stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload())
        for i in range(self.n):
            self._spawn(i)
        ready, interval = 0, sdnotify.watchdog_interval()
        last_ping = 0.0
        while self.children:
            timeout = min(interval or 0.5, 0.5)
            try:
                readable, _, _ = select.select([self.ready_r], [], [], timeout)
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

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is not None and not self.stopping:
                log.error("worker %d (pid %d) exited with status %d; restarting", index, pid,
                          os.waitstatus_to_exitcode(status))
                time.sleep(self.RESTART_DELAY)
                self._spawn(index)

    def _reload(self) -> None:
        """Workers reload themselves; the supervisor keeps the new settings for respawns."""
        if self.config_path is not None:
            try:
                self.settings = load(self.config_path)
            except ConfigError:
                pass  # each worker logs the reasons and keeps its configuration
        self._signal_all(signal.SIGHUP)

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            sdnotify.stopping()
            self._signal_all(signal.SIGTERM)

"""Process lifecycle: bind, tell systemd, serve, reload on SIGHUP, drain on SIGTERM, workers.

One process by default. With `server.workers = N` the main process forks N workers that each
bind the same port with SO_REUSEPORT (the kernel spreads connections), restarts a worker that
dies, and forwards SIGHUP and SIGTERM to them.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from ..app import create_app, mark_draining, reconfigure
from ..config.settings import ConfigError, ServerSettings, Settings, load, resolve_workers
from ..demo import DemoUpstream
from ..http.playground import own_origins
from ..observability import logs
from . import sdnotify
from .headguard import HeaderGuard

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
    for warning in s.warnings:  # remarks the loader made (unknown tier names, tool types ...)
        log.warning("config: %s", warning)


@dataclass(frozen=True)
class ConfigSource:
    """Where the running settings came from, so SIGHUP reads them again the same way: the
    file, then the command line's overrides (--host, --port, --log-level ...) on top."""

    path: str
    overrides: Callable[[Settings], Settings] = lambda s: s

    def load(self) -> Settings:
        return self.overrides(load(self.path))


def reload(app: web.Application, source: ConfigSource | None) -> bool:
    """SIGHUP: re-read the config file; a bad one is rejected and the old one kept."""
    if source is None:
        return False
    sdnotify.reloading()
    try:
        new = source.load()
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload rejected, keeping the running configuration: %s", problem)
        sdnotify.ready("serving (reload rejected)")
        return False
    for key in reconfigure(app, new):
        log.warning("reload: %s changed but needs a restart to apply", key)
    logging.getLogger().setLevel(new.log.level.upper())
    log.info("configuration reloaded from %s", source.path)
    sdnotify.ready()
    return True


class CannotListen(Exception):
    """The port could not be bound; the reason is already logged."""


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cannot_listen_reason(exc: OSError, port: int) -> str:
    """What to do about a failed bind, in the words of someone starting the gateway."""
    if exc.errno == errno.EADDRINUSE:
        return (f"address already in use: another program (perhaps another gateway) has port "
                f"{port}; stop it, or choose another port with --port N (or server.port)")
    if exc.errno == errno.EACCES:
        return (f"permission denied: port {port} needs privileges; use a port above 1024 "
                "(--port N) and let nginx take 80 and 443")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ("no interface of this machine has that address; use --host 127.0.0.1 "
                "(this machine only) or --host 0.0.0.0 (every interface)")
    if isinstance(exc, socket.gaierror):
        return "unknown host name; give an IP address with --host"
    return exc.strerror or str(exc)


async def listen(server: ServerSettings, factory, *, reuse_port: bool) -> asyncio.Server:
    """Bind the listening socket(s) without accepting yet (start_serving() does).

    Binding comes before the app starts, so a port in use fails before anything (the demo
    upstream, the playground's URL) is announced, and no URL is printed for a port we lack.
    """
    try:
        return await asyncio.get_running_loop().create_server(
            factory, server.host, server.port, backlog=1024, reuse_address=True,
            reuse_port=reuse_port or None, start_serving=False)
    except OSError as exc:
        log.error("cannot listen on %s: %s", _url(server.host, server.port)[7:],
                  cannot_listen_reason(exc, server.port))
        raise CannotListen from None


async def start(settings: Settings, app: web.Application, *,
                reuse_port: bool) -> tuple[web.AppRunner, asyncio.Server]:
    """The app's runner, set up, and its listening socket(s), accepting connections."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=settings.server.shutdown_timeout)
    timeout = settings.server.header_timeout

    def connection() -> HeaderGuard:
        """Each connection's protocol, wrapped in a HeaderGuard (slowloris). runner.server
        exists from runner.setup() on, which is before the first accept (start_serving)."""
        server = runner.server
        assert server is not None
        return HeaderGuard(server(), timeout)

    listener = await listen(settings.server, connection, reuse_port=reuse_port)
    try:
        await runner.setup()
        await listener.start_serving()
    except BaseException:
        listener.close()
        await runner.cleanup()
        raise
    return runner, listener


async def serve(settings: Settings, source: ConfigSource | None = None, *,
                reuse_port: bool = False, on_ready=None, demo: DemoUpstream | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, let requests finish, close."""
    warn_risky(settings)
    app = create_app(settings, demo=demo is not None)
    if demo is not None:
        demo.attach(app)  # --demo: the built-in upstream is served by this app's event loop
    runner, listener = await start(settings, app, reuse_port=reuse_port)
    port = listener.sockets[0].getsockname()[1]
    log.info("gateway listening on %s, forwarding to %s", _url(settings.server.host, port),
             settings.upstream.base_url)
    if settings.playground.enabled:
        log.info("playground: %s/", own_origins(replace(settings.server, port=port))[0])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app, source)
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
        listener.close()  # no new connections from here on
        mark_draining(app)
        watchdog.cancel()
        await runner.cleanup()
        logs.flush()
        log.info("stopped")


#: A worker's exit status when it could not bind: restarting it would not help.
EXIT_CANNOT_LISTEN = 3


def run(settings: Settings, source: ConfigSource | None,
        demo: DemoUpstream | None = None) -> int:
    """Serve until stopped; returns the exit status (0, or 1 when the port was not bound)."""
    workers = resolve_workers(settings.server.workers)
    if workers > 1:
        return Supervisor(settings, source, workers).run()
    try:
        asyncio.run(serve(settings, source, demo=demo))
    except CannotListen:
        return 1
    return 0


class Supervisor:
    """The main process of `server.workers > 1`: forks, watches and signals the workers.

    Its loop never sleeps longer than half a second or the watchdog interval: a dead worker's
    restart is scheduled (RESTART_DELAY later), not waited for, so WATCHDOG=1 keeps going out.
    """

    RESTART_DELAY = 1.0

    def __init__(self, settings: Settings, source: ConfigSource | None, workers: int):
        self.settings = settings
        self.source = source
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
            code = 0
            try:
                asyncio.run(serve(self.settings, self.source, reuse_port=True,
                                  on_ready=lambda: os.write(self.ready_w, b"r")))
            except CannotListen:
                code = EXIT_CANNOT_LISTEN
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
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
        if self.source is not None:
            try:
                self.settings = self.source.load()
            except ConfigError:
                pass  # each worker logs the reasons and keeps its configuration
        self._signal_all(signal.SIGHUP)

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.restarts.clear()
            sdnotify.stopping()
            self._signal_all(signal.SIGTERM)

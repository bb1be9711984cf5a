"""One serving process's life: bind, tell systemd, serve, reload on SIGHUP, drain on SIGTERM.

One process by default; with `server.workers = N`, `run` hands the port to a `Supervisor`
(workers.py) whose N forked workers each serve as this module does.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from ..app import create_app, reconfigure
from ..config import ConfigError, ServerSettings, Settings, load, resolve_workers
from ..http.health import mark_draining
from ..http.playground import own_origins
from ..observability import logs
from . import sdnotify
from .headguard import HeaderGuard
from .workers import EXIT_CANNOT_LISTEN, Supervisor

if TYPE_CHECKING:  # the demo is loaded by the command line, and only with --demo
    from ..demo import DemoUpstream

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
    file (None: none, the built-in defaults), then the command line's overrides (--host,
    --port, --log-level ...) on top."""

    path: str | None
    overrides: Callable[[Settings], Settings] = lambda s: s

    def load(self) -> Settings:
        return self.overrides(load(self.path))

    @property
    def name(self) -> str:
        return self.path if self.path is not None else "the built-in defaults"


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
    log.info("configuration reloaded from %s", source.name)
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
                reuse_port: bool = False, on_ready=None, demo: DemoUpstream | None = None,
                access: logs.AccessLog | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, let requests finish, close."""
    warn_risky(settings)
    access = access or logs.AccessLog()
    app = create_app(settings, demo=demo is not None, access=access)
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
        access.flush()
        log.info("stopped")


def run(settings: Settings, source: ConfigSource | None,
        demo: DemoUpstream | None = None, access: logs.AccessLog | None = None) -> int:
    """Serve until stopped; returns the exit status (0, or 1 when the port was not bound)."""
    workers = resolve_workers(settings.server.workers)
    if workers > 1:
        return Supervisor(settings, workers,
                          worker=partial(serve_worker, source=source, access=access),
                          reread=source.load if source is not None else None).run()
    try:
        asyncio.run(serve(settings, source, demo=demo, access=access))
    except CannotListen:
        return 1
    return 0


def serve_worker(settings: Settings, on_ready: Callable[[], None], *,
                 source: ConfigSource | None, access: logs.AccessLog | None = None) -> int:
    """One worker of a Supervisor: serves on the shared port (SO_REUSEPORT) until stopped;
    its exit status."""
    try:
        asyncio.run(serve(settings, source, reuse_port=True, on_ready=on_ready,
                          access=access))
    except CannotListen:
        return EXIT_CANNOT_LISTEN
    return 0

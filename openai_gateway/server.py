"""Process lifecycle: bind, serve, drain on SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import DRAINING, create_app
from .settings import Settings

log = logging.getLogger("gateway")


def warn_risky(s: Settings) -> None:
    """Start-up warnings for settings that work but are probably not what was meant."""
    if "*" in s.cors.allow_origins:
        log.warning('cors.allow_origins contains "*": any web page can spend this key\'s '
                    "budget through the gateway; list your front-end's origins instead")
    if not s.rate_limit.requests and not s.clients:
        log.warning("rate_limit.requests is empty: clients are not rate limited")
    if s.server.host not in ("127.0.0.1", "::1", "localhost") and s.server.trusted_proxies:
        log.info("listening on %s; X-Forwarded-For is believed only from %s", s.server.host,
                 ", ".join(s.server.trusted_proxies))


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, let requests finish, close."""
    warn_risky(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, backlog=1024)
    await site.start()
    log.info("gateway listening on http://%s:%d, forwarding to %s", settings.server.host,
             settings.server.port, settings.upstream.base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests (up to %ss)",
                 settings.server.shutdown_timeout)
        app[DRAINING].append(True)
        await runner.cleanup()
        log.info("stopped")

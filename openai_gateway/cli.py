"""The command line: run, --check, new-client-key. Exit codes: 0 ok, 2 bad configuration."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sys

from aiohttp import web

from . import logs
from .app import DRAINING, create_app
from .identity import hash_key
from .settings import ConfigError, Settings, load

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway.py",
        description="OpenAI API gateway for browser and mobile front-ends (the key stays here).",
        epilog="Also: 'gateway.py new-client-key NAME' prints a new client key and its hash.")
    p.add_argument("--config", default="config.toml",
                   help="TOML configuration file (default: ./config.toml)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, print the effective settings and exit")
    return p


def new_client_key(name: str) -> int:
    key = "gw-" + secrets.token_urlsafe(32)
    print(f"# Give this key to the client '{name}' (shown once, not stored):")
    print(key)
    print("# Add this to config.toml:")
    print(f'[[clients]]\nname = "{name}"\nkey_sha256 = "{hash_key(key)}"')
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "new-client-key":
        if len(argv) != 2 or not argv[1].strip():
            print("usage: gateway.py new-client-key NAME", file=sys.stderr)
            return 2
        return new_client_key(argv[1])
    args = _parser().parse_args(argv)
    try:
        settings = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(settings.redacted(), indent=2))
        print(f"{args.config}: OK", file=sys.stderr)
        return 0
    logs.configure(settings.log.level, settings.log.format, (settings.api_key,))
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # optional: the standard loop works, only slower
        pass
    asyncio.run(serve(settings))
    return 0


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

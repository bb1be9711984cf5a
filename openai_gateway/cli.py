"""The command line: serve (the default), --check, and subcommands such as new-client-key.

Exit codes: 0 ok, 1 could not serve (e.g. the port is taken), 2 bad configuration or usage.
A subcommand is one entry of COMMANDS: a function taking its own argv and returning the exit
status, with a one-line summary that `--help` lists.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from . import __version__
from .config import ConfigError, Settings, load
from .demo import DemoUpstream, demo_settings
from .errors import GatewayError, StorageUnavailable
from .identity.keys import hash_key
from .identity.minted import CLI, TokenMinter, choose_tier, key_minter
from .metering.budgets import Budgets
from .metering.limiter import StoragePolicy
from .metering.prices import usd
from .metering.rules import Rules
from .observability import logs
from .observability.metrics import Metrics
from .server.process import ConfigSource, run
from .store import open_store


def prog() -> str:
    """How the user called us: gateway.py, openai-gateway, gateway.pyz."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gateway.py"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a port number 1-65535")
    return int(text)


def _host(text: str) -> str:
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected an address or host name")
    return text


def add_config_option(p: argparse.ArgumentParser) -> None:
    """--config, for the serving command and any subcommand that reads the settings."""
    p.add_argument("--config", default="config.toml", metavar="PATH",
                   help="TOML configuration file (default: ./config.toml)")


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog(),
        description="OpenAI API gateway for browser and mobile front-ends (the key stays here).",
        epilog="commands:\n" + "\n".join(f"  {prog()} {name} {usage}\n      {summary}"
                                         for name, (usage, summary, _) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(p)
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, print the effective settings and exit")
    p.add_argument("--demo", action="store_true",
                   help="answer from a built-in demo upstream (no API key, no network) and "
                        "serve the playground at /")
    p.add_argument("--host", type=_host, metavar="ADDR",
                   help="listen on this address (overrides server.host)")
    p.add_argument("--port", type=_port, metavar="N",
                   help="listen on this port (overrides server.port)")
    p.add_argument("--log-format", choices=logs.FORMATS,
                   help="json, text (one line per request, for people) or auto (text on a "
                        "terminal); overrides log.format")
    p.add_argument("--log-level", choices=logs.LEVELS, help="overrides log.level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def overrides(args: argparse.Namespace) -> Callable[[Settings], Settings]:
    """The command line's settings on top of the file's (applied again on every reload)."""
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    log = {k: v for k, v in (("format", args.log_format), ("level", args.log_level))
           if v is not None}

    def apply(s: Settings) -> Settings:
        return replace(s, server=replace(s.server, **server), log=replace(s.log, **log))

    return apply


def serve_command(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    source = ConfigSource(args.config, overrides(args))
    try:
        settings = source.overrides(load(args.config, demo=args.demo))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        if not args.check and any(p.startswith("upstream.api_key_env:") for p in exc.problems):
            print(f"hint: to try the gateway without a key, run it with --demo "
                  f"({prog()} --demo): a built-in demo upstream answers and the playground "
                  "opens at /", file=sys.stderr)
        return 2
    demo = DemoUpstream() if args.demo else None
    if demo is not None:
        settings = demo_settings(settings, demo.base_url)
    if args.check:
        print(json.dumps(settings.redacted(), indent=2))
        for warning in settings.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.config}: OK", file=sys.stderr)
        return 0
    access = logs.configure(settings.log.level, settings.log.format, settings.secrets,
                            hash_secret=settings.log_hash_secret.encode() or None)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # optional: the standard loop works, only slower
        pass
    # No SIGHUP reload in demo mode: the file alone does not describe the demo's settings.
    return run(settings, None if demo else source, demo, access)


# --- subcommands --------------------------------------------------------------------------


def new_client_key(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{prog()} new-client-key", usage="%(prog)s NAME",
                                description="Print a new client key and its config block.")
    # The name goes into TOML and logs: keep it to a plain identifier.
    p.add_argument("name", metavar="NAME", type=_client_name,
                   help="the client's name (letters, digits, _ . -; at most 64)")
    args = p.parse_args(argv)
    key = "gw-" + secrets.token_urlsafe(32)
    print(f"# Give this key to the client '{args.name}' (shown once, not stored):")
    print(key)
    print("# Add this to config.toml:")
    print(f'[[clients]]\nname = "{args.name}"\nkey_sha256 = "{hash_key(key)}"')
    return 0


def _client_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError("letters, digits, _ . -; at most 64")
    return text


def _settings(config: str) -> Settings | None:
    """The file's settings for a subcommand (no upstream key needed), or None after printing
    the problems."""
    try:
        return load(config, demo=True)  # demo: these commands never call the upstream
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return None


def mint_token(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog()} mint-token",
        usage="%(prog)s --user U [--tier T] [--ttl S] [--client NAME] [--config PATH]",
        description="Print a token signed with auth.tokens' secret, as POST /gateway/tokens "
                    "would mint it (any gateway process holding the secret accepts it). A "
                    "user is a user of its minter: without --client, the users of this "
                    "command are their own, apart from every client key's.")
    add_config_option(p)
    p.add_argument("--user", required=True, help="the user the token is for (its subject)")
    p.add_argument("--tier", help="the user's tier: one of the config's [tiers.NAME]")
    p.add_argument("--ttl", type=int, help="seconds until it expires (at most auth.tokens.max_ttl)")
    p.add_argument("--client", metavar="NAME",
                   help="mint as the [[clients]] key NAME would: for that key's user U, with "
                        "only the tiers the key may mint")
    args = p.parse_args(argv)
    settings = _settings(args.config)
    if settings is None:
        return 2
    if not settings.token_secret:
        print(f"error: {args.config}: auth.tokens.secret_env is not set, so this gateway "
              "mints no tokens; set it to the name of an environment variable holding a "
              "random secret (at least 32 bytes) and export that variable here",
              file=sys.stderr)
        return 2
    key = next((c for c in settings.clients if c.name == args.client), None)
    if args.client is not None and key is None:
        print(f"error: {args.config}: no [[clients]] named {args.client!r} (known: "
              f"{', '.join(c.name for c in settings.clients) or 'none'})", file=sys.stderr)
        return 2
    tier, minted_by, whose = args.tier, CLI, ""
    minter = TokenMinter(secret=settings.token_secret, max_ttl=settings.auth.tokens.max_ttl)
    try:
        if key is not None:  # as POST /gateway/tokens with this key would
            tier = choose_tier(tier, own=key.tier, allowed=key.mintable_tiers)
            minted_by, whose = key_minter(key.name), f" of client {key.name}"
        token, expires_at = minter.mint(args.user, tier, args.ttl, minted_by=minted_by,
                                        tiers=tuple(settings.tiers) or None)
    except GatewayError as exc:  # a 400 or 403 of POST /gateway/tokens
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(token)
    when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"# user {args.user}{whose}, tier {tier or '(default limits)'}, expires at "
          f"{when} ({expires_at})", file=sys.stderr)
    return 0


def spend(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog()} spend", usage="%(prog)s [--config PATH]",
        description="Print today's and this month's gateway-wide spend and what is left under "
                    "[budget], read from the shared storage.")
    add_config_option(p)
    args = p.parse_args(argv)
    settings = _settings(args.config)
    if settings is None:
        return 2
    url = settings.rate_limit_storage
    if not url.is_shared:
        print("error: storage.url is memory://: the spend lives inside the running gateway "
              "process and cannot be read from here. Ask the process instead: GET /metrics "
              "(from a trusted address) and read gateway_budget_remaining_usd and "
              "gateway_spend_usd_total.", file=sys.stderr)
        return 1
    rules = Rules(settings.rate_limit, settings.budget)
    if not rules.gateway:
        print("no gateway-wide ceiling: [budget] daily_usd and monthly_usd are 0, so nothing "
              "counts the gateway's total (see gateway_spend_usd_total in /metrics)")
        return 0
    try:
        report = asyncio.run(_read_spend(settings, rules))
    except StorageUnavailable:
        print(f"error: could not read the storage at {url.kind}; is it running?",
              file=sys.stderr)
        return 1
    period = {"daily": "today", "monthly": "this month"}
    for name, row in report.items():
        print(f"{period.get(name, name)}: spent ${usd(row['spent_micro'])} of "
              f"${usd(row['limit_micro'])}, ${usd(row['remaining_micro'])} left "
              f"(all of it again in {row['reset_seconds'] / 3600:.1f} h at most)")
    return 0


async def _read_spend(settings: Settings, rules: Rules) -> dict[str, dict]:
    """The gateway-wide ceilings as the shared store counts them (its password included)."""
    store = open_store(settings.rate_limit_storage, timeout=max(settings.storage.timeout, 2.0),
                       password=settings.storage_password)
    try:
        budgets = Budgets(store, StoragePolicy("open", Metrics()), ident=lambda caller: caller.id)
        budgets.configure(rules)
        return await budgets.gateway_spend()
    finally:
        await store.close()


#: name -> (usage, summary, function(argv) -> exit status). Checked before the serving
#: options, so a subcommand owns everything after its name.
COMMANDS: dict[str, tuple[str, str, Callable[[list[str]], int]]] = {
    "new-client-key": ("NAME", "print a new client key and its config block", new_client_key),
    "mint-token": ("--user U [--tier T] [--ttl S] [--client NAME]", "print a token for a "
                   "user, signed with auth.tokens' secret", mint_token),
    "spend": ("", "print today's and this month's gateway-wide spend and what is left", spend),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][2](argv[1:])
    return serve_command(argv)

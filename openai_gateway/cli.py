"""The command line: serve (the default), --check, and the commands (init, mint-token ...).

Exit codes: 0 ok, 1 could not serve or act (the port is taken, a file cannot be written, the
gateway cannot be reached), 2 bad configuration or usage.

The options that choose the settings (--config, --log-level, --log-format) go before or after
a command's name alike. Without --config the file is ./config.toml, and without that file every
key takes its default (the gateway says so). A command is one entry of COMMANDS: a summary for
--help, its own arguments, and a function of the parsed arguments returning the exit status;
it reads only the tables of the file and the secrets it uses, so a part of the file that is not
its business (another issuer's secret, the server's JWKS file) never stops it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .config import ConfigError, Settings, load, reference
from .config.secrets import DEMO_SECRETS, SECRETS
from .errors import GatewayError, StorageUnavailable
from .identity.keys import hash_key
from .identity.minted import CLI, TokenMinter, choose_tier, key_minter
from .metering.budgets import Budgets
from .metering.limiter import StoragePolicy
from .metering.prices import usd
from .metering.rules import Rules
from .metering.tally import NO_TIER, SpendTally, spend_report
from .observability import logs
from .observability.metrics import Metrics
from .server.process import ConfigSource, run
from .store import open_store

log = logging.getLogger("gateway")
#: The file read without --config, from the current directory, when it exists.
DEFAULT_CONFIG = "config.toml"


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


def add_settings_options(p: argparse.ArgumentParser, default) -> None:
    """--config, --log-format, --log-level: on the main parser (default None) and on every
    command's (default SUPPRESS, so a value given before the command's name stays)."""
    p.add_argument("--config", default=default, metavar="PATH",
                   help=f"TOML configuration file (default: ./{DEFAULT_CONFIG} when there is "
                        "one, else every key at its default)")
    p.add_argument("--log-format", choices=logs.FORMATS, default=default,
                   help="json, text (one line per request, for people) or auto (text on a "
                        "terminal); overrides log.format")
    p.add_argument("--log-level", choices=logs.LEVELS, default=default,
                   help="overrides log.level")


def add_listen_options(p: argparse.ArgumentParser, default, host: str, port: str) -> None:
    p.add_argument("--host", type=_host, metavar="ADDR", default=default, help=host)
    p.add_argument("--port", type=_port, metavar="N", default=default, help=port)


@dataclass(frozen=True)
class Command:
    summary: str
    #: Adds the command's own arguments to its parser.
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The main parser, and each command's."""
    p = argparse.ArgumentParser(
        prog=prog(), usage="%(prog)s [options] [COMMAND [options]]",
        description="OpenAI API gateway for browser and mobile front-ends (the key stays here). "
                    "Without a command it serves.")
    add_settings_options(p, None)
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, print the effective settings and exit")
    p.add_argument("--demo", action="store_true",
                   help="answer from a built-in demo upstream (no API key, no network) and "
                        "serve the playground at /")
    add_listen_options(p, None, "listen on this address (overrides server.host)",
                       "listen on this port (overrides server.port)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                description=f"{prog()} COMMAND --help says more")
    subs = {}
    for name, command in COMMANDS.items():
        sub = subs[name] = commands.add_parser(name, help=command.summary,
                                               description=command.summary,
                                               prog=f"{prog()} {name}")
        add_settings_options(sub, argparse.SUPPRESS)
        command.arguments(sub)
    return p, subs


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; a word the command does not take is that command's usage error."""
    p, subs = parsers()
    args, extra = p.parse_known_args(argv)
    if extra:
        owner = subs[args.command] if args.command is not None else p
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def config_path(given: str | None) -> str | None:
    """The file to read: --config's; without it ./config.toml when there is one; else None
    (every key at its default)."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def no_file_note() -> str:
    """The start-up line of a gateway running without a configuration file."""
    return (f"no configuration file (no --config, and no {DEFAULT_CONFIG} in {os.getcwd()}): "
            "running on the built-in defaults (every key at its default; limits, budgets and "
            f"the cache in memory); `{prog()} init` writes them to {DEFAULT_CONFIG} to edit, "
            "--config PATH reads another file")


def print_problems(exc: ConfigError, path: str | None) -> None:
    """One `config error:` line per problem (a missing file's says how to write one)."""
    for problem in exc.problems:
        if path is not None and problem == f"{path}: file not found":
            problem += f" (`{prog()} init {path}` writes one with every key at its default)"
        print(f"config error: {problem}", file=sys.stderr)


def key_file_problems(settings: Settings) -> list[str]:
    """Each issuer's jwks_file read as it will be at start: a file that holds no key set is a
    configuration error, for --check too, not a traceback at start."""
    files = [(n, i.jwks_file) for n, i in enumerate(settings.auth.issuers) if i.jwks_file]
    if not files:
        return []
    from .identity.jwks import key_file_problem  # PyJWT: loaded only for a key file

    return [f"auth.issuers[{n}].jwks_file: got {file!r}, expected a JWKS file with a usable "
            f"signing key ({why})" for n, file in files
            if (why := key_file_problem(file)) is not None]


def overrides(args: argparse.Namespace) -> Callable[[Settings], Settings]:
    """The command line's settings on top of the file's (applied again on every reload)."""
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    log_ = {k: v for k, v in (("format", args.log_format), ("level", args.log_level))
            if v is not None}

    def apply(s: Settings) -> Settings:
        return replace(s, server=replace(s.server, **server), log=replace(s.log, **log_))

    return apply


def serve_command(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    source = ConfigSource(path, overrides(args))
    try:
        settings = source.overrides(load(path, secrets=DEMO_SECRETS if args.demo else SECRETS))
    except ConfigError as exc:
        print_problems(exc, path)
        if not args.check and any(p.startswith("upstream.api_key_env:") for p in exc.problems):
            print(f"hint: to try the gateway without a key, run it with --demo "
                  f"({prog()} --demo): a built-in demo upstream answers and the playground "
                  "opens at /", file=sys.stderr)
        return 2
    demo = None
    if args.demo:  # the demo upstream is loaded only for a demo
        from .demo import DemoUpstream, demo_settings

        demo = DemoUpstream()
        settings = demo_settings(settings, demo.base_url)
    problems = key_file_problems(settings)
    if problems:
        print_problems(ConfigError(problems), path)
        return 2
    if args.check:
        print(json.dumps(settings.redacted(), indent=2))
        for warning in settings.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if path is None:
            print(no_file_note(), file=sys.stderr)
        print(f"{source.name}: OK", file=sys.stderr)
        return 0
    access = logs.configure(settings.log.level, settings.log.format, settings.secrets,
                            hash_secret=settings.log_hash_secret.encode() or None)
    if path is None:
        log.info(no_file_note())
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # optional: the standard loop works, only slower
        pass
    # No SIGHUP reload in demo mode: the file alone does not describe the demo's settings.
    return run(settings, None if demo else source, demo, access)


# --- commands ----------------------------------------------------------------------------


def command_settings(args: argparse.Namespace, sections: Collection[str],
                     secrets: Collection[str]) -> Settings | None:
    """The tables of the file a command uses and the secrets it needs (no upstream key), or
    None after printing the problems."""
    path = config_path(args.config)
    try:
        return load(path, sections=sections, secrets=secrets)
    except ConfigError as exc:
        print_problems(exc, path)
        return None


def where(args: argparse.Namespace) -> str:
    """The configuration a message is about: its file, or the built-in defaults."""
    return config_path(args.config) or "the built-in defaults (no config file)"


def init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=DEFAULT_CONFIG, metavar="PATH",
                   help=f"where to write it (default: ./{DEFAULT_CONFIG}; - prints it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def init(args: argparse.Namespace) -> int:
    text = reference.toml()
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    if os.path.exists(args.path) and not args.force:
        print(f"error: {args.path} exists; it is kept (--force overwrites it)", file=sys.stderr)
        return 2
    try:
        Path(args.path).write_text(text)
    except OSError as exc:
        print(f"error: cannot write {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    found = " (read from this directory without --config)" if args.path == DEFAULT_CONFIG \
        else f"; serve with {prog()} --config {args.path}"
    print(f"wrote {args.path}: every key at its default, each explained{found}. Check it with "
          f"{prog()} --config {args.path} --check", file=sys.stderr)
    return 0


def new_client_key_arguments(p: argparse.ArgumentParser) -> None:
    # The name goes into TOML and logs: keep it to a plain identifier.
    p.add_argument("name", metavar="NAME", type=_client_name,
                   help="the client's name (letters, digits, _ . -; at most 64)")


def new_client_key(args: argparse.Namespace) -> int:
    key = "gw-" + secrets.token_urlsafe(32)
    print(f"# Give this key to the client '{args.name}' (shown once, not stored):")
    print(key)
    print("# Add this to the configuration file:")
    print(f'[[clients]]\nname = "{args.name}"\nkey_sha256 = "{hash_key(key)}"')
    return 0


def _client_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError("letters, digits, _ . -; at most 64")
    return text


def mint_token_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("A user is a user of its minter: without --client, the users of this command "
                "are their own, apart from every client key's. Reads [auth.tokens], [tiers] "
                "and [[clients]] of the file, and auth.tokens' secret.")
    p.add_argument("--user", required=True, help="the user the token is for (its subject)")
    p.add_argument("--tier", help="the user's tier: one of the config's [tiers.NAME]")
    p.add_argument("--ttl", type=int, help="seconds until it expires (at most auth.tokens.max_ttl)")
    p.add_argument("--client", metavar="NAME",
                   help="mint as the [[clients]] key NAME would: for that key's user U, with "
                        "only the tiers the key may mint")


def mint_token(args: argparse.Namespace) -> int:
    settings = command_settings(args, ("auth.tokens", "tiers", "clients"), ("token_secret",))
    if settings is None:
        return 2
    if not settings.token_secret:
        print(f"error: {where(args)}: auth.tokens.secret_env is not set, so this gateway "
              "mints no tokens; set it to the name of an environment variable holding a "
              "random secret (at least 32 bytes) and export that variable here",
              file=sys.stderr)
        return 2
    key = next((c for c in settings.clients if c.name == args.client), None)
    if args.client is not None and key is None:
        print(f"error: {where(args)}: no [[clients]] named {args.client!r} (known: "
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


def spend_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("With memory:// storage the counters live in the running gateway, so this asks "
                "it (GET /gateway/spend, from this machine: a trusted peer); with memcached or "
                "Redis it reads the store itself, gateway running or not. Reads [server], "
                "[storage], [rate_limit], [budget] and [tiers] of the file, and the storage's "
                "password.")
    add_listen_options(p, argparse.SUPPRESS,
                       "the running gateway's address, with memory:// (default server.host)",
                       "its port (default server.port)")


#: What `spend` says when nothing counts the spend by period.
NO_CEILING = ("no gateway-wide ceiling: [budget] daily_usd and monthly_usd are 0, and the "
              "gateway counts its spend by day and month only under one (set one; meanwhile "
              "gateway_spend_usd_total in /metrics has each process's spend since it started)")


class CannotAsk(Exception):
    """The running gateway could not be asked; the text says why and what to do."""


def spend(args: argparse.Namespace) -> int:
    settings = command_settings(args, ("server", "storage", "rate_limit", "budget", "tiers"),
                                ("storage_password",))
    if settings is None:
        return 2
    if not (settings.budget.daily_usd > 0 or settings.budget.monthly_usd > 0):
        print(NO_CEILING)
        return 0
    try:
        if settings.rate_limit_storage.is_shared:
            report = asyncio.run(_read_spend(settings))
        else:
            report = ask_for_spend(settings, getattr(args, "host", None),
                                   getattr(args, "port", None))
    except StorageUnavailable:
        print(f"error: could not read the storage at {settings.rate_limit_storage}; is it "
              "running?", file=sys.stderr)
        return 1
    except CannotAsk as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not report["budget"]:
        print(NO_CEILING)
        return 0
    print_spend(report)
    return 0


def print_spend(report: dict) -> None:
    """The report in dollars, every digit: six decimals, as counted (micro-dollars)."""
    for key, period in (("today", "date"), ("this_month", "month")):
        row = report[key]
        print(f"{key.replace('_', ' ')}, {row[period]} (UTC): ${usd(row['spent_micro'])}")
        for tier, micro in row["tiers"].items():
            print(f"  {'no tier' if tier == NO_TIER else 'tier ' + tier}: ${usd(micro)}")
    window = {"daily": "the last day", "monthly": "the last 30 days"}
    for name, row in report["ceilings"].items():
        print(f"budget.{name}_usd: ${usd(row['spent_micro'])} of ${usd(row['limit_micro'])} "
              f"spent in {window.get(name, name)} (a sliding window; answers still running "
              f"count their reservation), ${usd(row['remaining_micro'])} left, all of it "
              f"again within {row['reset_seconds'] / 3600:.1f} h")


def ask_for_spend(settings: Settings, host: str | None, port: int | None) -> dict:
    """GET /gateway/spend of the gateway this configuration runs (memory:// storage)."""
    host = host or settings.server.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    base = f"http://[{host}]" if ":" in host else f"http://{host}"
    url = f"{base}:{port or settings.server.port}/gateway/spend"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 403:
            raise CannotAsk(f"{url} answered 403: only server.trusted_proxies peers may ask "
                            "(run this on the gateway's machine, where 127.0.0.1 is one)") \
                from None
        raise CannotAsk(f"{url} answered {exc.code}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CannotAsk(f"could not reach the gateway at {url} ({reason}): with memory:// "
                        "storage the spend lives in the running gateway; is it running there? "
                        "--host and --port say where it listens") from None


async def _read_spend(settings: Settings) -> dict:
    """The report from the shared store itself (its password included)."""
    store = open_store(settings.rate_limit_storage, timeout=max(settings.storage.timeout, 2.0),
                       password=settings.storage_password)
    try:
        policy = StoragePolicy("open", Metrics())
        budgets = Budgets(store, policy, ident=lambda caller: caller.id)
        rules = Rules(settings.rate_limit, settings.budget)
        budgets.configure(rules)
        tally = SpendTally(store, policy)
        tally.configure(settings.tiers, on=bool(rules.gateway))
        return await spend_report(budgets, tally)
    finally:
        await store.close()


def fake_upstream_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("The fake OpenAI API the tests use: chat, completions, responses, embeddings, "
                "moderations and the model list, speech, transcriptions, translations, images "
                "and the realtime API, in OpenAI's formats with usage, no key checked. Point "
                "upstream.base_url at it to try a configuration, or to run a front-end's own "
                "tests, without a key or a network.")
    add_listen_options(p, argparse.SUPPRESS, "listen on this address (default 127.0.0.1)",
                       "listen on this port (default 8081)")
    p.add_argument("--model", action="append", metavar="NAME", dest="models",
                   help="a model GET /v1/models lists (repeat it; default: gpt-4o-mini, "
                        "gpt-4o, text-embedding-3-small, omni-moderation-latest)")
    p.add_argument("--pace", type=float, default=0.0, metavar="SECONDS",
                   help="pause after each streamed word, like a model (default 0)")


def fake_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .demo import FakeOpenAI
    from .demo.fake_realtime import FakeRealtime
    from .server.process import cannot_listen_reason

    host, port = getattr(args, "host", None) or "127.0.0.1", getattr(args, "port", None) or 8081
    logs.configure(args.log_level or "info", args.log_format or "auto", ())

    class Paced(FakeOpenAI):
        def pace(self, request: web.Request) -> float:
            return args.pace

    fake = Paced(realtime=FakeRealtime())
    if args.models:
        fake.models = tuple(args.models)
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    app = fake.app()

    async def announce(app: web.Application) -> None:
        log.info("fake OpenAI API at %s/v1 (not a real model: any key, no network; models: "
                 "%s); point upstream.base_url at it", url, ", ".join(fake.models))

    app.on_startup.append(announce)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None,
                    handler_cancellation=True)
    except OSError as exc:
        log.error("cannot listen on %s: %s", url[7:], cannot_listen_reason(exc, port))
        return 1
    log.info("fake upstream at %s/v1 stopped", url)
    return 0


#: name -> the command. --help lists them in this order.
COMMANDS: dict[str, Command] = {
    "init": Command("write the commented default configuration to PATH (./config.toml)",
                    init_arguments, init),
    "new-client-key": Command("print a new client key and its [[clients]] block",
                              new_client_key_arguments, new_client_key),
    "mint-token": Command("print a token for a user, signed with auth.tokens' secret",
                          mint_token_arguments, mint_token),
    "spend": Command("print today's and this month's spend: the gateway's and each tier's",
                     spend_arguments, spend),
    "fake-upstream": Command("serve a fake OpenAI API (no key, no network) to point "
                             "upstream.base_url at", fake_upstream_arguments, fake_upstream),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        return serve_command(args)
    if args.check or args.demo:
        print(f"{prog()}: --check and --demo are for serving, not for {args.command}",
              file=sys.stderr)
        return 2
    return COMMANDS[args.command].run(args)

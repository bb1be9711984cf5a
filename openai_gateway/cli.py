"""The command line: run, --check, new-client-key. Exit codes: 0 ok, 2 bad configuration."""
from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import sys

from . import logs
from .demo import DemoUpstream, demo_settings
from .identity import hash_key
from .server import run
from .settings import ConfigError, load

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
    p.add_argument("--demo", action="store_true",
                   help="answer from a built-in demo upstream (no API key, no network) and "
                        "serve the playground at /")
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
        # The name goes into TOML and logs: keep it to a plain identifier.
        if len(argv) != 2 or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", argv[1]):
            print("usage: gateway.py new-client-key NAME  (letters, digits, _ . -; at most 64)",
                  file=sys.stderr)
            return 2
        return new_client_key(argv[1])
    args = _parser().parse_args(argv)
    try:
        settings = load(args.config, demo=args.demo)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    demo = DemoUpstream() if args.demo else None
    if demo is not None:
        settings = demo_settings(settings, demo.base_url)
    if args.check:
        print(json.dumps(settings.redacted(), indent=2))
        print(f"{args.config}: OK", file=sys.stderr)
        return 0
    logs.configure(settings.log.level, settings.log.format, settings.secrets)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # optional: the standard loop works, only slower
        pass
    # No SIGHUP reload in demo mode: the file alone does not describe the demo's settings.
    run(settings, None if demo else args.config, demo)
    return 0

"""Secrets, read from the environment or systemd credentials, never from the file.

The settings name where each secret is (`upstream.api_key_env`, `auth.tokens.secret_env` ...);
`read_secrets` reads them all once, at load, and reports each missing or short one under the
key that names it, with the file's other problems.
"""
from __future__ import annotations

import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from .access import MIN_HMAC_SECRET, AuthSettings
from .loader import Problems
from .serving import LogSettings, StorageSettings, UpstreamSettings


class Names(Protocol):
    """The sections that name secrets (a Settings, which is built before they are read)."""

    @property
    def upstream(self) -> UpstreamSettings: ...
    @property
    def auth(self) -> AuthSettings: ...
    @property
    def storage(self) -> StorageSettings: ...
    @property
    def log(self) -> LogSettings: ...


#: Every secret a Settings holds, by its field: what a command may ask `read_secrets` for.
SECRETS = frozenset({"api_key", "fallback_keys", "issuer_secrets", "token_secret",
                     "token_previous_secret", "captcha_secret", "storage_password",
                     "log_hash_secret"})
#: Demo mode's: all but the upstream's keys (the built-in demo upstream takes none).
DEMO_SECRETS = SECRETS - {"api_key", "fallback_keys"}


def read_secret(env_name: str, environ: typing.Mapping[str, str]) -> str | None:
    """The secret in `$CREDENTIALS_DIRECTORY/<env_name>` (systemd LoadCredential), else in
    the environment variable `env_name`; None when neither holds one."""
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / env_name
        if path.is_file():
            return path.read_text().strip() or None
    return (environ.get(env_name) or "").strip() or None


class _Environment:
    """Reads the secrets the settings name, reporting each missing one under its key."""

    def __init__(self, environ: typing.Mapping[str, str], p: Problems):
        self.environ, self.p = environ, p

    def secret(self, key: str, env_name: str, what: str, *, min_length: int = 0) -> str:
        if not env_name:
            return ""
        value = read_secret(env_name, self.environ)
        if value is None:
            self.p.note(key, f"environment variable {env_name} is not set (nor a systemd "
                             f"credential of that name); expected {what}")
            return ""
        if len(value.encode()) < min_length:
            self.p.note(key, f"the secret in {env_name} has {len(value.encode())} bytes, "
                             f"expected at least {min_length} (RFC 7518 section 3.2)")
        return value


def read_secrets(s: Names, environ: typing.Mapping[str, str], p: Problems, *,
                 only: Collection[str] = SECRETS) -> dict[str, Any]:
    """The secrets `s` names, by the Settings field each fills ("" where none is named), for
    the fields in `only`: a command reads the secrets it uses, and no other (the others keep
    their empty default)."""
    env = _Environment(environ, p)
    out: dict[str, Any] = {}
    if "api_key" in only:
        out["api_key"] = env.secret("upstream.api_key_env", s.upstream.api_key_env,
                                    "the upstream key")
    if "fallback_keys" in only:
        key = out.get("api_key", "")
        out["fallback_keys"] = tuple(
            env.secret(f"upstream.fallbacks[{i}].api_key_env", fb.api_key_env, "a key")
            if fb.api_key_env else key for i, fb in enumerate(s.upstream.fallbacks))
    if "issuer_secrets" in only:
        out["issuer_secrets"] = tuple(
            env.secret(f"auth.issuers[{i}].secret_env", issuer.secret_env,
                       "the issuer's secret", min_length=MIN_HMAC_SECRET)
            for i, issuer in enumerate(s.auth.issuers))
    tokens = s.auth.tokens
    named = {
        "token_secret": ("auth.tokens.secret_env", tokens.secret_env,
                         "the token signing secret", MIN_HMAC_SECRET),
        "token_previous_secret": ("auth.tokens.previous_secret_env",
                                  tokens.previous_secret_env,
                                  "the previous token signing secret", MIN_HMAC_SECRET),
        "captcha_secret": ("auth.sessions.captcha_secret_env",
                           s.auth.sessions.captcha_secret_env, "the captcha secret", 0),
        "storage_password": ("storage.password_env", s.storage.password_env,
                             "the storage password", 0),
        "log_hash_secret": ("log.hash_secret_env", s.log.hash_secret_env, "the log hash key",
                            0),
    }
    for name, (key, env_name, what, min_length) in named.items():
        if name in only:
            out[name] = env.secret(key, env_name, what, min_length=min_length)
    return out

"""Typed, frozen settings loaded once from TOML and validated as a whole.

`load(path)` returns `Settings` or raises `ConfigError` carrying one line per problem ("key: got
X, expected Y"), every problem of the file in one run, so a bad file never starts a
half-working server. Every field has a safe default; `config.toml` documents each one.

Values are parsed here, once, into what components use: limits into `limits.RateLimitItem`s
(shortest window first), dollar budgets into `SpendLimit`s, storage URLs into `StorageURL`s
(`Settings.rate_limit_storage` / `cache_storage` are the effective ones), choices into
`Literal` strings, tables of named entries ([tiers.NAME], [prices]) into read-only mappings.
Secrets come from the environment or systemd credentials, never from the file: they live in
`repr=False` fields, are left out of `redacted()`, and are all in `secrets` (log redaction).

The sections live in `serving.py` and `access.py` (re-exported here), the reading of secrets
in `secrets.py`. The loader is our own (`loader.py`, about 200 lines), not pydantic v2:
pydantic would replace just that file, but it would add a compiled dependency (pydantic-core)
that `make dist`'s single-file zipapp cannot carry to a bare python3, about 200 ms of imports
at every start, and a translation layer to keep our messages (key, bad value, expectation);
limits, budgets and storage URLs would still need their own converters.
"""
from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace

from limits import RateLimitItem

from .access import (
    TIER_NAME,
    TIER_NAME_EXPECTED,
    AuthSettings,
    BudgetSettings,
    ClientSettings,
    IssuerSettings,
    PriceSettings,
    SessionSettings,
    TierSettings,
    TokenSettings,
)
from .limits import SpendLimit, as_limits, as_spend, limit_text
from .loader import Problems, build, subkey
from .realtime import RealtimeSettings
from .secrets import SECRETS, read_secrets
from .serving import (
    DEFAULT_ROUTES,
    CacheSettings,
    CorsSettings,
    FallbackSettings,
    LogSettings,
    MetricsSettings,
    PlaygroundSettings,
    RateLimitSettings,
    RuleSettings,
    ServerSettings,
    StorageSettings,
    UpstreamSettings,
    ValidationSettings,
)
from .storage import StorageURL

#: What `from .settings import ...` offers: every section, the value parsers, the entry points.
__all__ = [
    "DEFAULT_ROUTES", "AuthSettings", "BudgetSettings", "CacheSettings", "ClientSettings",
    "ConfigError", "CorsSettings", "FallbackSettings", "IssuerSettings", "LogSettings",
    "MetricsSettings", "PlaygroundSettings", "PriceSettings", "RateLimitSettings",
    "RealtimeSettings", "RuleSettings", "ServerSettings", "SessionSettings", "Settings",
    "SpendLimit", "StorageSettings", "StorageURL", "TierSettings", "TokenSettings",
    "UpstreamSettings", "ValidationSettings", "as_limits", "as_spend", "load", "parse",
    "resolve_workers",
]


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _secret():
    """A secret from the environment: never a file key (repr=False), never printed."""
    return field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    """The whole configuration: one field per section of the file, then the secrets read from
    the environment (repr=False: not file keys, never printed)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: Tiers: named sets of limits, budgets and models for a kind of user (a client key's
    #: tier, a token's tier claim, sessions' tier); each key replaces the general value.
    tiers: Mapping[str, TierSettings] = field(default_factory=lambda: types.MappingProxyType({}))
    #: Gateway-issued client keys, for server-side clients (new-client-key prints one).
    clients: tuple[ClientSettings, ...] = ()
    #: US dollars per 1M tokens by model: rows here override or add to the shipped table
    #: (OpenAI's list prices, dated; see docs/budgets.md).
    prices: Mapping[str, PriceSettings] = field(
        default_factory=lambda: types.MappingProxyType({}))
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    playground: PlaygroundSettings = field(default_factory=PlaygroundSettings)
    #: The upstream key, never read from the file.
    api_key: str = _secret()
    #: The keys of upstream.fallbacks, in order (the primary's where api_key_env is "").
    fallback_keys: tuple[str, ...] = field(default=(), repr=False)
    #: auth.issuers[i].secret_env's secret, in issuer order ("" for a JWKS issuer).
    issuer_secrets: tuple[str, ...] = field(default=(), repr=False)
    token_secret: str = _secret()
    token_previous_secret: str = _secret()
    captcha_secret: str = _secret()
    storage_password: str = _secret()
    log_hash_secret: str = _secret()
    #: Remarks for the operator (unknown tier names ...); not errors.
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def rate_limit_storage(self) -> StorageURL:
        """The limiter's storage: rate_limit.storage_url, else storage.url."""
        return self.rate_limit.storage_url or self.storage.url

    @property
    def cache_storage(self) -> StorageURL:
        """The cache's storage: cache.storage_url, else storage.url."""
        return self.cache.storage_url or self.storage.url

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for log redaction."""
        return tuple(k for k in (self.api_key, *self.fallback_keys, *self.issuer_secrets,
                                 self.token_secret, self.token_previous_secret,
                                 self.captcha_secret, self.storage_password,
                                 self.log_hash_secret) if k)

    def redacted(self) -> dict:
        """The effective settings as JSON-ready data (limits, budgets, URLs as text), no secret."""
        return _plain(self)

    def check(self, at: str, p: Problems) -> None:
        """Relations between sections (each section checked its own values)."""
        _check_workers(self, p)
        if (self.rate_limit.strategy == "moving-window"
                and self.rate_limit_storage.kind == "memcached"):
            p.note("rate_limit.strategy",
                   'got "moving-window", expected "auto" or "sliding-window-counter" with '
                   "memcached storage (memcached keeps no moving window; memory:// and "
                   "redis:// do)")
        _check_clients(self.clients, p)
        _check_auth(self, p)
        _check_tiers(self, p)
        _check_realtime(self, p)


def _check_workers(s: Settings, p: Problems) -> None:
    w = s.server.workers
    if not (w == "auto" or 1 <= int(w) <= 256) or resolve_workers(w) == 1:
        return
    if not s.server.allow_unshared_workers and "memory" in (
            s.rate_limit_storage.kind, s.cache_storage.kind):
        p.note("server.workers", f"got {w!r} with memory:// storage, expected shared storage "
               "(each process would keep its own rate limits and cache) or "
               "server.allow_unshared_workers = true")


def _check_clients(clients: tuple[ClientSettings, ...], p: Problems) -> None:
    seen, names = set(), set()
    for i, c in enumerate(clients):
        h = c.key_sha256.lower()
        if h and h in seen:
            p.note(f"clients[{i}].key_sha256", "duplicate of an earlier client")
        seen.add(h)
        # Two keys of one name would be one caller ("key:NAME"): one set of limits and
        # budgets, and one namespace of minted users.
        p.expect(not c.name or c.name not in names, f"clients[{i}].name", c.name,
                 "a name no earlier client has (limits, budgets and minted users are keyed "
                 "by it)")
        names.add(c.name)


def _check_auth(s: Settings, p: Problems) -> None:
    """[auth] settings that cannot work together, each named with the key it needs."""
    a = s.auth
    if a.sessions.captcha_verify_url and not a.tokens.secret_env:
        p.note("auth.sessions.captcha_verify_url",
               'set while auth.tokens.secret_env is "", expected auth.tokens.secret_env too '
               "(sessions are tokens the gateway signs; without its secret there is no "
               "/gateway/session)")
    if not (s.clients or a.issuers or a.tokens.secret_env):
        for key, value, on in (("anonymous", "false", not a.anonymous),
                               ("require_client_key", "true", a.require_client_key)):
            if on:
                p.note(f"auth.{key}", f"{value} while no caller can be identified, expected "
                       "[[clients]], [[auth.issuers]] or auth.tokens.secret_env (every "
                       "request would be refused with 401)")
    sessions, max_ttl = a.sessions, a.tokens.max_ttl
    if sessions.captcha_verify_url and a.tokens.secret_env and 0 < max_ttl < sessions.ttl:
        p.warnings.append(f"auth.sessions.ttl: {sessions.ttl} is above auth.tokens.max_ttl "
                          f"({max_ttl}); sessions live {max_ttl} seconds")


def _check_tiers(s: Settings, p: Problems) -> None:
    for name in s.tiers:
        p.expect(bool(TIER_NAME.fullmatch(name)), subkey("tiers", name), name,
                 TIER_NAME_EXPECTED)
    # An unknown tier name is not an error: the runtime falls back to the general values.
    uses = [(f"clients[{i}].tier", c.tier) for i, c in enumerate(s.clients)]
    if s.auth.sessions.captcha_verify_url:  # sessions on
        uses.insert(0, ("auth.sessions.tier", s.auth.sessions.tier))
    known = ', '.join(s.tiers) or 'none'
    for key, tier in uses:
        if tier is not None and tier not in s.tiers:
            p.warnings.append(f"{key}: tier {tier!r} is not defined in [tiers] (known: "
                              f"{known}); its users get the general limits")
    # A remark, not an error, like every unknown tier name: the entry fails closed, since
    # POST /gateway/tokens refuses a tier [tiers] does not define (when it defines any).
    outcome = "the key cannot mint it" if s.tiers else "its users get the general limits"
    for i, c in enumerate(s.clients):
        for j, tier in enumerate(c.mint_tiers or ()):
            if tier not in s.tiers and TIER_NAME.fullmatch(tier):
                p.warnings.append(f"clients[{i}].mint_tiers[{j}]: tier {tier!r} is not defined "
                                  f"in [tiers] (known: {known}); {outcome}")


def _check_realtime(s: Settings, p: Problems) -> None:
    """Realtime client secrets are signed with auth.tokens' secret; without one each process
    draws its own key, which only the process that signed a secret can verify (docs/realtime.md).
    One process needs no secret; several on this port do."""
    w = s.server.workers
    if s.auth.tokens.secret_env or not (w == "auto" or 1 <= int(w) <= 256):
        return
    if resolve_workers(w) > 1:
        p.warnings.append(
            f"auth.tokens.secret_env: not set while server.workers is {w!r}: realtime client "
            "secrets are then signed with a random key per process, and a secret minted by one "
            "process is refused (401) by the others; set auth.tokens.secret_env")


def _plain(value):
    """Settings as JSON-ready data: limits, budgets and URLs as text, secrets left out."""
    if isinstance(value, RateLimitItem):
        return limit_text(value)
    if isinstance(value, SpendLimit):
        return value.text
    if isinstance(value, StorageURL):
        return str(value)
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def resolve_workers(workers: int | str) -> int:
    """server.workers as a number of processes: "auto" is one per CPU."""
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


# --- entry points --------------------------------------------------------------------------


def parse(data: dict, environ: typing.Mapping[str, str] | None = None, *,
          secrets: Collection[str] = SECRETS) -> Settings:
    """Build and validate settings from a parsed TOML document, secrets from `environ`.

    secrets: the Settings fields of the secrets to read (`secrets.SECRETS`: all of them;
    `DEMO_SECRETS`: all but the upstream's keys); the others stay empty and are not needed."""
    environ = os.environ if environ is None else environ
    p = Problems()
    settings = build(Settings, data, "", p)
    found = read_secrets(settings, environ, p, only=secrets)
    if p.lines:
        raise ConfigError(p.lines)
    return replace(settings, **found, warnings=tuple(p.warnings))


def load(path: str | os.PathLike | None, environ: typing.Mapping[str, str] | None = None, *,
         secrets: Collection[str] = SECRETS, sections: Collection[str] | None = None
         ) -> Settings:
    """Read and validate a TOML file; `path` None: no file, every key at its default.

    sections: read only these tables of the file ("tiers", "auth.tokens" ...; None: all), for
    a command that uses a part of it: the rest of the file, right or wrong, is not its
    business (serving and --check read it all). secrets: as for `parse`."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    if sections is not None:
        data = select(data, sections)
    return parse(data, environ, secrets=secrets)


def select(data: dict, sections: Collection[str]) -> dict:
    """The named tables of a TOML document (dotted: "auth.tokens"), nothing else."""
    out: dict = {}
    for section in sections:
        head, _, rest = section.partition(".")
        if head not in data:
            continue
        if rest and isinstance(data[head], dict):
            inner = select(data[head], [rest])
            if inner:
                out.setdefault(head, {}).update(inner)
        else:
            out[head] = data[head]
    return out

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

The loader is our own (`loader.py`, about 200 lines), not pydantic v2: pydantic would replace
just that file, but it would add a compiled dependency (pydantic-core) that `make dist`'s
single-file zipapp cannot carry to a bare python3, about 200 ms of imports at every start, and
a translation layer to keep our messages (key, bad value, expectation); limits, budgets and
storage URLs would still need their own converters.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute

from .limitspec import (
    LIMIT_EXPECTED,
    SPEND_EXPECTED,
    SpendLimit,
    limit_text,
    parse_limit,
    parse_spend,
)
from .loader import CONVERTERS, Problems, build, subkey
from .storage import EXPECTED as STORAGE_EXPECTED
from .storage import StorageError, StorageURL, parse_storage_url

#: The routes the gateway can forward (the brief's HTTP surface). Anything else is 404.
Route = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                "/v1/moderations", "/v1/models"]
#: Forwarded by default: all of them.
DEFAULT_ROUTES: tuple[Route, ...] = typing.get_args(Route)
#: JWS algorithms a JWT issuer may be allowed (RFC 7518 section 3.1); "none" is not one of them.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                    "PS512", "ES256", "ES384", "ES512", "EdDSA"]
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output (256 bits for HS256).
MIN_HMAC_SECRET = 32
#: Tool types and service tiers OpenAI documents; others are allowed with a warning (new ones
#: appear between releases of this gateway, and a typo would otherwise go unnoticed).
KNOWN_TOOLS = ("function", "custom", "web_search", "web_search_preview", "file_search",
               "image_generation", "code_interpreter", "mcp", "computer_use_preview",
               "local_shell", "shell", "apply_patch")
KNOWN_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_EXPECTED = "a name of letters, digits, _ . - (at most 64)"

Limits = tuple[RateLimitItem, ...]
Spend = tuple[SpendLimit, ...]


def _storage(text: str) -> StorageURL:
    if not isinstance(text, str):
        raise ValueError(STORAGE_EXPECTED)
    try:
        return parse_storage_url(text)
    except StorageError as exc:
        raise ValueError(str(exc)) from None


CONVERTERS.update({
    RateLimitItem: (parse_limit, LIMIT_EXPECTED, "limits"),
    SpendLimit: (parse_spend, SPEND_EXPECTED, "dollar budgets"),
    StorageURL: (_storage, STORAGE_EXPECTED, "storage URLs"),
})


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value coercion at construction --------------------------------------------------------
# The loader hands over parsed values. Code that builds settings directly (tests, the demo's
# defaults) may pass text instead: it is parsed by the same strict parsers (like attrs'
# `converter=`), and limits are put shortest window first either way.


def as_limits(values) -> Limits:
    items = (parse_limit(v) if isinstance(v, str) else v for v in values)
    # Shortest window first: a request refused by the minute never touches the day's count.
    return tuple(sorted(items, key=RateLimitItem.get_expiry))


def as_spend(values) -> Spend:
    return tuple(parse_spend(v) if isinstance(v, str) else v for v in values)


def as_storage(value) -> StorageURL | None:
    if isinstance(value, str):
        return parse_storage_url(value) if value else None
    return value


def _coerce(obj, **converters) -> None:
    for name, convert in converters.items():
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, convert(value))  # frozen: only in __post_init__


def _is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _https_or_loopback(url: str) -> bool:
    """https://, or http:// to this machine (127.0.0.0/8, ::1, localhost): fetched secrets and
    tokens must not cross a network in clear text."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if not u.hostname or u.scheme not in ("http", "https"):
        return False
    if u.scheme == "https" or u.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(u.hostname).is_loopback
    except ValueError:
        return False


# --- sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Peers allowed to set X-Forwarded-For (IPs or CIDRs); () trusts none.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    max_body_bytes: int = 1_048_576
    #: Seconds a client may take to send its request body (slow uploads get 408).
    body_timeout: float = 30.0
    #: Seconds for the request head, leading blank lines included, on every keep-alive request.
    header_timeout: float = 10.0
    #: Seconds a client may read nothing of an answer before it is dropped.
    write_timeout: float = 30.0
    #: Seconds in-flight requests and streams get to finish after SIGTERM.
    shutdown_timeout: float = 30.0
    #: Processes serving one port (SO_REUSEPORT): an integer or "auto" (one per core).
    workers: int | Literal["auto"] = 1
    #: Allow workers > 1 with memory:// storage (each process then has its own limits/cache).
    allow_unshared_workers: bool = False
    #: IPv6 clients are keyed by this prefix length (anyone holds a whole /64).
    ipv6_prefix: int = 64
    #: A compressed request body (Content-Encoding): "refuse" = 415, "inflate" = inflate it,
    #: bounded by max_body_bytes.
    compressed_bodies: Literal["refuse", "inflate"] = "refuse"

    def check(self, at: str, p: Problems) -> None:
        p.expect(0 < self.port < 65536, f"{at}.port", self.port, "1-65535")
        for i, proxy in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                p.note(f"{at}.trusted_proxies[{i}]", f"got {proxy!r}, expected an IP or CIDR")
        w = self.workers
        p.expect(w == "auto" or 1 <= int(w) <= 256, f"{at}.workers", w,
                 'an integer from 1 to 256 or "auto"')
        p.positive(self, at, "max_body_bytes", "body_timeout", "header_timeout",
                   "write_timeout", "shutdown_timeout")
        p.expect(1 <= self.ipv6_prefix <= 128, f"{at}.ipv6_prefix", self.ipv6_prefix, "1-128")


@dataclass(frozen=True)
class FallbackSettings:
    """Another OpenAI-compatible upstream (or the same one with another key) for failover."""

    base_url: str = ""
    #: "" = the primary's key.
    api_key_env: str = ""

    def check(self, at: str, p: Problems) -> None:
        p.expect(_is_http_url(self.base_url), f"{at}.base_url", self.base_url, "an http(s) URL")


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str = "https://api.openai.com/v1"
    #: Name of the environment variable (or systemd credential) holding the key.
    api_key_env: str = "OPENAI_API_KEY"
    #: The forwarded routes; each maps to the same path below base_url (minus "/v1").
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    connect_timeout: float = 10.0
    #: Until the upstream's response headers arrive.
    first_byte_timeout: float = 120.0
    #: Longest silence between two chunks of a body (no total timeout: streams may be long).
    idle_timeout: float = 120.0
    #: Extra attempts on connect errors, 429 and 5xx, only before the client got a byte.
    retries: int = 2
    retry_backoff: float = 0.25
    max_connections: int = 10000
    #: A larger upstream answer (non-stream) is refused with 502 rather than held in memory.
    max_response_bytes: int = 64 * 1024 * 1024
    #: Tried in order after the primary fails (connect error, 429, 5xx), before the first byte.
    fallbacks: tuple[FallbackSettings, ...] = ()

    def check(self, at: str, p: Problems) -> None:
        p.expect(_is_http_url(self.base_url), f"{at}.base_url", self.base_url, "an http(s) URL")
        p.positive(self, at, "connect_timeout", "first_byte_timeout", "idle_timeout",
                   "max_connections", "max_response_bytes")
        p.expect(self.retries >= 0, f"{at}.retries", self.retries, ">= 0")
        p.expect(self.retry_backoff >= 0, f"{at}.retry_backoff", self.retry_backoff, ">= 0")


@dataclass(frozen=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ("http://localhost:5173",)
    max_age: int = 600

    def check(self, at: str, p: Problems) -> None:
        for i, origin in enumerate(self.allow_origins):
            p.expect(origin == "*" or _is_origin(origin), f"{at}.allow_origins[{i}]", origin,
                     '"*" or an origin like "https://app.example.com" (scheme and host, no path)')
        p.expect(self.max_age >= 0, f"{at}.max_age", self.max_age, ">= 0")


def _is_origin(text: str) -> bool:
    """scheme://host[:port] and nothing else: what a browser sends in `Origin` (RFC 6454)."""
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (u.scheme in ("http", "https") and bool(u.hostname) and "@" not in u.netloc
            and text == f"{u.scheme}://{u.netloc}")


@dataclass(frozen=True)
class StorageSettings:
    url: StorageURL = StorageURL("memory")
    #: "open": serve and log when storage fails; "closed": answer 503.
    on_error: Literal["open", "closed"] = "open"
    #: Seconds any storage call may take before it counts as failed.
    timeout: float = 0.5
    #: The variable holding the Redis password ("" = none); never in the URL.
    password_env: str = ""

    def __post_init__(self):
        _coerce(self, url=as_storage)

    def check(self, at: str, p: Problems) -> None:
        p.positive(self, at, "timeout")


@dataclass(frozen=True)
class RuleSettings:
    """A tighter limit for one route and/or model (applies in addition to the client's)."""

    route: str = ""
    model: str = ""
    requests: Limits = ()
    tokens: Limits = ()

    def __post_init__(self):
        _coerce(self, requests=as_limits, tokens=as_limits)

    def check(self, at: str, p: Problems) -> None:
        if not self.route and not self.model:
            p.note(at, "expected a route, a model or both", fields=("route", "model"))


@dataclass(frozen=True)
class RateLimitSettings:
    requests: Limits = (RateLimitItemPerMinute(60), RateLimitItemPerDay(1000))
    tokens: Limits = ()
    #: Per-client dollar budgets (cost of each answer, from its usage and [prices]).
    spend: Spend = ()
    #: "auto": moving-window on memory and redis, sliding-window-counter on memcached.
    strategy: Literal["auto", "moving-window", "sliding-window-counter"] = "auto"
    #: Overrides storage.url for the limiter (None, "" in the file: storage.url).
    storage_url: StorageURL | None = None
    rules: tuple[RuleSettings, ...] = ()

    def __post_init__(self):
        _coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend,
                storage_url=as_storage)


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    ttl: int = 3600
    #: Bound of the in-memory cache (LRU); memcached bounds itself.
    max_bytes: int = 64 * 1024 * 1024
    #: Larger answers are not cached (memcached's default item limit is 1 MB).
    max_item_bytes: int = 1_000_000
    routes: tuple[str, ...] = (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/moderations",
    )
    #: Cache answers sampled with temperature > 0 (or unset, which means 1)? Off: such answers
    #: are meant to vary, so replaying one would be a wrong answer.
    sampled: bool = False
    #: Overrides storage.url for the cache (None, "" in the file: storage.url).
    storage_url: StorageURL | None = None

    def __post_init__(self):
        _coerce(self, storage_url=as_storage)

    def check(self, at: str, p: Problems) -> None:
        p.expect(self.ttl > 0, f"{at}.ttl", self.ttl, "a positive integer (seconds)")
        p.positive(self, at, "max_bytes", "max_item_bytes")


@dataclass(frozen=True)
class ValidationSettings:
    allowed_models: tuple[str, ...] = ("gpt-4o-mini",)
    max_input_chars: int = 10_000
    #: The output cap; also sent upstream when the client sends no output limit.
    max_tokens: int = 4096
    #: Caps n and best_of.
    max_n: int = 4
    max_messages: int = 200
    #: Tool types a request may declare (hosted tools cost extra or reach outside the gateway).
    allowed_tools: tuple[str, ...] = ("function",)
    allowed_service_tiers: tuple[str, ...] = ("auto", "default")
    #: False: /v1/responses goes upstream with store=false and stored-state features are refused.
    stored_state: bool = False

    def check(self, at: str, p: Problems) -> None:
        p.positive(self, at, "max_input_chars", "max_tokens", "max_n", "max_messages")
        for name, known in (("allowed_tools", KNOWN_TOOLS),
                            ("allowed_service_tiers", KNOWN_SERVICE_TIERS)):
            for i, value in enumerate(getattr(self, name)):
                p.expect(bool(value.strip()), f"{at}.{name}[{i}]", value, "a non-empty string")
                if value.strip() and value not in known:
                    p.warnings.append(f"{at}.{name}[{i}]: {value!r} is not one OpenAI "
                                      f"documents ({', '.join(known)})")


@dataclass(frozen=True)
class IssuerSettings:
    """A login provider whose JWTs identify the app's users (exactly one key source)."""

    #: The token's iss must equal this.
    issuer: str = ""
    #: aud must contain this ("" = not checked).
    audience: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    #: HS* tokens: the variable holding the shared secret.
    secret_env: str = ""
    #: The allowlist (required); "none" is never accepted.
    algorithms: tuple[Algorithm, ...] = ()
    #: The claim naming the user's tier ("" = none: the default tier).
    tier_claim: str = ""
    #: Seconds of clock skew allowed on exp and nbf.
    leeway: int = 30
    #: Seconds: an unknown kid refetches the JWKS at most this often.
    jwks_cooldown: float = 30.0

    def check(self, at: str, p: Problems) -> None:
        p.expect(bool(self.issuer), f"{at}.issuer", self.issuer, "the issuer (the tokens' iss)")
        one_source = self._check_source(at, p)
        p.expect(bool(self.algorithms), f"{at}.algorithms", list(self.algorithms),
                 "a non-empty list of algorithms")
        for i, alg in enumerate(self.algorithms if one_source else ()):
            hmac = alg in HMAC_ALGORITHMS
            if hmac and not self.secret_env:
                p.note(f"{at}.algorithms[{i}]", f"got {alg!r}, expected an algorithm for a "
                       "JWKS (RS*, PS*, ES*, EdDSA): HS* needs secret_env")
            elif not hmac and self.secret_env:
                p.note(f"{at}.algorithms[{i}]", f"got {alg!r}, expected HS256, HS384 or "
                       "HS512 with secret_env (public-key algorithms need jwks_url or jwks_file)")
        p.expect(self.leeway >= 0, f"{at}.leeway", self.leeway, ">= 0 (seconds)")
        p.positive(self, at, "jwks_cooldown")

    def _check_source(self, at: str, p: Problems) -> bool:
        """Exactly one key source, and a usable one; True when there is exactly one."""
        sources = [k for k in ("jwks_url", "jwks_file", "secret_env") if getattr(self, k)]
        if len(sources) != 1:
            p.note(at, f"got {', '.join(sources) or 'no key source'}, expected exactly one of "
                       "jwks_url, jwks_file or secret_env",
                   fields=("jwks_url", "jwks_file", "secret_env"))
        if self.jwks_url:
            p.expect(_https_or_loopback(self.jwks_url), f"{at}.jwks_url", self.jwks_url,
                     "an https:// URL (http:// only to 127.0.0.0/8, ::1 or localhost)")
        if self.jwks_file:
            p.expect(Path(self.jwks_file).is_file(), f"{at}.jwks_file", self.jwks_file,
                     "a readable JWKS file")
        return len(sources) == 1


@dataclass(frozen=True)
class TokenSettings:
    """Tokens the gateway signs itself (POST /gateway/tokens, mint-token)."""

    #: The variable holding the signing secret ("" = off).
    secret_env: str = ""
    #: The previous secret, still accepted for verification while tokens signed with it live.
    previous_secret_env: str = ""
    #: Seconds: the longest lifetime a minted token may ask for.
    max_ttl: int = 3600

    def check(self, at: str, p: Problems) -> None:
        p.positive(self, at, "max_ttl")
        if self.previous_secret_env and not self.secret_env:
            p.note(f"{at}.previous_secret_env", "set without secret_env, expected both or "
                                                "secret_env alone")


@dataclass(frozen=True)
class SessionSettings:
    """Captcha-checked sessions for apps with no backend (POST /gateway/session)."""

    #: The captcha provider's siteverify URL ("" = off).
    captcha_verify_url: str = ""
    captcha_secret_env: str = ""
    #: The tier of session tokens (an unknown tier falls back at run time, with a warning).
    tier: str = "free"
    #: Seconds a session token lives.
    ttl: int = 900
    #: Session creations allowed per client address.
    requests: Limits = (RateLimitItemPerHour(10),)

    def __post_init__(self):
        _coerce(self, requests=as_limits)

    def check(self, at: str, p: Problems) -> None:
        if self.captcha_verify_url:
            p.expect(_https_or_loopback(self.captcha_verify_url), f"{at}.captcha_verify_url",
                     self.captcha_verify_url,
                     "an https:// URL (http:// only to 127.0.0.0/8, ::1 or localhost)")
            p.expect(bool(self.captcha_secret_env), f"{at}.captcha_secret_env",
                     self.captcha_secret_env, "the variable holding the captcha secret")
        p.positive(self, at, "ttl")


@dataclass(frozen=True)
class AuthSettings:
    #: False: a request with no verified identity (client key or user token) gets 401.
    anonymous: bool = True
    require_client_key: bool = False
    issuers: tuple[IssuerSettings, ...] = ()
    tokens: TokenSettings = field(default_factory=TokenSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)

    def check(self, at: str, p: Problems) -> None:
        seen = set()
        for i, issuer in enumerate(self.issuers):
            if issuer.issuer in seen:
                p.note(f"{at}.issuers[{i}].issuer", "duplicate of an earlier issuer")
            seen.add(issuer.issuer)


@dataclass(frozen=True)
class TierSettings:
    """A tier's values replace the [rate_limit] / [validation] ones for its users (None: not
    set, the general value applies)."""

    requests: Limits | None = None
    tokens: Limits | None = None
    spend: Spend | None = None
    models: tuple[str, ...] | None = None

    def __post_init__(self):
        _coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend)


@dataclass(frozen=True)
class ClientSettings:
    """A gateway-issued client key (only its SHA-256 is stored)."""

    name: str = ""
    key_sha256: str = ""
    requests: Limits | None = None
    tokens: Limits | None = None
    models: tuple[str, ...] | None = None
    #: "client": cache entries are private to this key; "shared": shared with everyone.
    cache_scope: Literal["client", "shared"] = "client"
    #: A [tiers.NAME] (None: none; an unknown name falls back at run time, with a warning).
    tier: str | None = None
    spend: Spend | None = None

    def __post_init__(self):
        _coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend)

    def check(self, at: str, p: Problems) -> None:
        if not self.name:
            p.note(f"{at}.name", "expected a non-empty name")
        h = self.key_sha256.lower()
        p.expect(len(h) == 64 and all(ch in "0123456789abcdef" for ch in h),
                 f"{at}.key_sha256", self.key_sha256,
                 "64 hex digits (python gateway.py new-client-key NAME prints one)")


@dataclass(frozen=True)
class PriceSettings:
    """US dollars per 1M tokens for one model."""

    input: float
    cached_input: float
    output: float

    @staticmethod
    def prepare(table: dict) -> dict:
        """cached_input defaults to input (a provider with no cache discount)."""
        if "cached_input" not in table and "input" in table:
            return {**table, "cached_input": table["input"]}
        return table

    def check(self, at: str, p: Problems) -> None:
        for name in ("input", "cached_input", "output"):
            value = getattr(self, name)
            p.expect(value >= 0, f"{at}.{name}", value, ">= 0 (US dollars per 1M tokens)")


@dataclass(frozen=True)
class BudgetSettings:
    """Ceilings for the whole gateway, every client together (0 = none)."""

    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    #: Warn in the log when this share of a ceiling is spent.
    warn_at: float = 0.8

    def check(self, at: str, p: Problems) -> None:
        for name in ("daily_usd", "monthly_usd"):
            value = getattr(self, name)
            p.expect(value >= 0, f"{at}.{name}", value, ">= 0 (0 = no ceiling)")
        p.expect(0 < self.warn_at <= 1, f"{at}.warn_at", self.warn_at, "0 < x <= 1")


@dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "json", "text", or "auto" (text on a terminal, JSON otherwise).
    format: Literal["auto", "json", "text"] = "auto"
    #: Log a keyed hash of the client address instead of the address.
    hash_client: bool = False
    #: The variable holding the hash key ("" = a random key per start: hashes do not match
    #: across restarts or workers).
    hash_secret_env: str = ""


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True


@dataclass(frozen=True)
class PlaygroundSettings:
    #: Serve the playground page at GET / (on by default only with --demo).
    enabled: bool = False


def _secret():
    """A secret from the environment: never a file key (repr=False), never printed."""
    return field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: [tiers.NAME] tables by name.
    tiers: Mapping[str, TierSettings] = field(default_factory=lambda: types.MappingProxyType({}))
    clients: tuple[ClientSettings, ...] = ()
    #: Price overrides by model name (shipped defaults live with the cost code).
    prices: Mapping[str, PriceSettings] = field(
        default_factory=lambda: types.MappingProxyType({}))
    budget: BudgetSettings = field(default_factory=BudgetSettings)
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
                   "memcached storage (limits implements moving window only on memory, redis "
                   "and mongodb)")
        _check_clients(self.clients, p)
        for name in self.tiers:
            p.expect(bool(NAME.fullmatch(name)), subkey("tiers", name), name, NAME_EXPECTED)
        sessions = self.auth.sessions
        for key, tier in (("auth.sessions.tier", sessions.tier if sessions.captcha_verify_url
                           else None),
                          *((f"clients[{i}].tier", c.tier) for i, c in enumerate(self.clients))):
            if tier is not None and tier not in self.tiers:
                p.warnings.append(f"{key}: tier {tier!r} is not defined in [tiers] (known: "
                                  f"{', '.join(self.tiers) or 'none'}); its users get the "
                                  "general limits")


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
    seen = set()
    for i, c in enumerate(clients):
        h = c.key_sha256.lower()
        if h and h in seen:
            p.note(f"clients[{i}].key_sha256", "duplicate of an earlier client")
        seen.add(h)


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


# --- the environment -----------------------------------------------------------------------


def resolve_workers(workers: int | str) -> int:
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


def read_api_key(env_name: str, environ: typing.Mapping[str, str]) -> str | None:
    """The key from `$CREDENTIALS_DIRECTORY/<env_name>` (systemd LoadCredential) or the env."""
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
        value = read_api_key(env_name, self.environ)
        if value is None:
            self.p.note(key, f"environment variable {env_name} is not set (nor a systemd "
                             f"credential of that name); expected {what}")
            return ""
        if len(value.encode()) < min_length:
            self.p.note(key, f"the secret in {env_name} has {len(value.encode())} bytes, "
                             f"expected at least {min_length} (RFC 7518 section 3.2)")
        return value


def _read_secrets(s: Settings, env: _Environment, demo: bool) -> dict:
    out: dict = {}
    # demo: the built-in demo upstream takes no key (`demo.demo_settings` sets its own).
    if not demo:
        out["api_key"] = key = env.secret("upstream.api_key_env", s.upstream.api_key_env,
                                          "the upstream key")
        out["fallback_keys"] = tuple(
            env.secret(f"upstream.fallbacks[{i}].api_key_env", fb.api_key_env, "a key")
            if fb.api_key_env else key for i, fb in enumerate(s.upstream.fallbacks))
    out["issuer_secrets"] = tuple(
        env.secret(f"auth.issuers[{i}].secret_env", issuer.secret_env, "the issuer's secret",
                   min_length=MIN_HMAC_SECRET) for i, issuer in enumerate(s.auth.issuers))
    tokens = s.auth.tokens
    out["token_secret"] = env.secret("auth.tokens.secret_env", tokens.secret_env,
                                     "the token signing secret", min_length=MIN_HMAC_SECRET)
    out["token_previous_secret"] = env.secret(
        "auth.tokens.previous_secret_env", tokens.previous_secret_env,
        "the previous token signing secret", min_length=MIN_HMAC_SECRET)
    out["captcha_secret"] = env.secret("auth.sessions.captcha_secret_env",
                                       s.auth.sessions.captcha_secret_env, "the captcha secret")
    out["storage_password"] = env.secret("storage.password_env", s.storage.password_env,
                                         "the storage password")
    out["log_hash_secret"] = env.secret("log.hash_secret_env", s.log.hash_secret_env,
                                        "the log hash key")
    return out


# --- entry points --------------------------------------------------------------------------


def parse(data: dict, environ: typing.Mapping[str, str] | None = None, *,
          demo: bool = False) -> Settings:
    """Build and validate settings from a parsed TOML document, secrets from `environ`.

    demo: the upstream key is neither needed nor read."""
    environ = os.environ if environ is None else environ
    p = Problems()
    settings = build(Settings, data, "", p)
    secrets = _read_secrets(settings, _Environment(environ, p), demo)
    if p.lines:
        raise ConfigError(p.lines)
    return replace(settings, **secrets, warnings=tuple(p.warnings))


def load(path: str | os.PathLike, environ: typing.Mapping[str, str] | None = None, *,
         demo: bool = False) -> Settings:
    """Read and validate a TOML file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return parse(data, environ, demo=demo)



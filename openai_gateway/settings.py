"""Typed, frozen settings loaded once from TOML and validated as a whole.

`load(path)` returns `Settings` or raises `ConfigError` carrying one line per problem
("key: got X, expected Y"), so a bad file never starts a half-working server. Every field
below has a safe default; `config.toml` documents each one.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from limits import parse_many

#: The routes the gateway forwards by default (the brief's HTTP surface). Anything else is 404.
DEFAULT_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/models",
)


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Peers allowed to set X-Forwarded-For (IPs or CIDRs); () trusts none.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    max_body_bytes: int = 1_048_576
    #: Seconds a client may take to send its request body (slow uploads get 408).
    body_timeout: float = 30.0
    #: Seconds a new connection may take to send its request line and headers (slowloris).
    header_timeout: float = 10.0
    #: Seconds in-flight requests and streams get to finish after SIGTERM.
    shutdown_timeout: float = 30.0
    #: Processes serving one port (SO_REUSEPORT): an integer or "auto" (one per core).
    workers: int | str = 1
    #: Allow workers > 1 with memory:// storage (each process then has its own limits/cache).
    allow_unshared_workers: bool = False
    #: Seconds a client may read nothing of an answer before it is dropped.
    write_timeout: float = 30.0
    #: IPv6 clients are keyed by this prefix length (anyone holds a /64).
    ipv6_prefix: int = 64
    #: Request bodies with a Content-Encoding: "refuse" (415) or "inflate" (bounded).
    compressed_bodies: str = "refuse"


@dataclass(frozen=True)
class FallbackSettings:
    """Another OpenAI-compatible upstream (or the same one with another key) for failover."""

    base_url: str = ""
    #: "" = the primary's key.
    api_key_env: str = ""


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str = "https://api.openai.com/v1"
    #: Name of the environment variable (or systemd credential) holding the key.
    api_key_env: str = "OPENAI_API_KEY"
    #: The forwarded routes; each maps to the same path below base_url (minus "/v1").
    routes: tuple[str, ...] = DEFAULT_ROUTES
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


@dataclass(frozen=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ("http://localhost:5173",)
    max_age: int = 600


@dataclass(frozen=True)
class StorageSettings:
    url: str = "memory://"
    #: "open": serve and log when storage fails; "closed": answer 503.
    on_error: str = "open"
    #: Seconds any storage call may take before it counts as failed.
    timeout: float = 0.5


@dataclass(frozen=True)
class RuleSettings:
    """A tighter limit for one route and/or model (applies in addition to the client's)."""

    route: str = ""
    model: str = ""
    requests: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimitSettings:
    requests: tuple[str, ...] = ("60/minute", "1000/day")
    tokens: tuple[str, ...] = ()
    #: "auto": moving-window on memory, sliding-window-counter on memcached.
    strategy: str = "auto"
    #: Overrides storage.url for the limiter ("" = use storage.url).
    storage_url: str = ""
    rules: tuple[RuleSettings, ...] = ()


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
    storage_url: str = ""


@dataclass(frozen=True)
class ValidationSettings:
    allowed_models: tuple[str, ...] = ("gpt-4o-mini",)
    max_input_chars: int = 10_000
    max_tokens: int = 4096
    max_n: int = 4
    max_messages: int = 200
    #: Tool types a request may declare; hosted tools cost extra or reach outside the gateway.
    allowed_tools: tuple[str, ...] = ("function",)
    allowed_service_tiers: tuple[str, ...] = ("auto", "default")
    #: false: /v1/responses goes upstream with store=false; stored responses, conversations,
    #: prompts, files and background runs are refused (they live in the account, shared).
    stored_state: bool = False


@dataclass(frozen=True)
class AuthSettings:
    require_client_key: bool = False


@dataclass(frozen=True)
class ClientSettings:
    """A gateway-issued client key (only its SHA-256 is stored)."""

    name: str = ""
    key_sha256: str = ""
    requests: tuple[str, ...] | None = None
    tokens: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    #: "client": cache entries are private to this key; "shared": shared with everyone.
    cache_scope: str = "client"


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    #: "json", "text", or "auto" (text on a terminal, JSON otherwise).
    format: str = "auto"
    #: Log a hash of the client address instead of the address.
    hash_client: bool = False


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True


@dataclass(frozen=True)
class PlaygroundSettings:
    #: Serve the playground page at GET / (on by default only with --demo).
    enabled: bool = False


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
    clients: tuple[ClientSettings, ...] = ()
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    playground: PlaygroundSettings = field(default_factory=PlaygroundSettings)
    #: The upstream key, never printed (repr=False) and never read from the file.
    api_key: str = field(default="", repr=False)
    #: The keys of upstream.fallbacks, in order ("" = the primary's).
    fallback_keys: tuple[str, ...] = field(default=(), repr=False)

    def redacted(self) -> dict:
        """The effective settings as a dict, safe to print (no secret)."""
        d = dataclasses.asdict(self)
        d.pop("api_key")
        d.pop("fallback_keys")
        return d

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(k for k in (self.api_key, *self.fallback_keys) if k)


# --- generic typed conversion -------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return "a list of " + plural.get(inner, "tables")
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]


def _convert(value, tp, key: str, problems: list[str]):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, problems)
        for option in inner:  # scalar alternatives such as int | str: the first that fits
            if isinstance(value, option) and not isinstance(value, bool):
                return value
        problems.append(f"{key}: got {value!r}, expected {_type_name(tp)}")
        return None
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{key}: got {value!r}, expected {_type_name(tp)}")
            return ()
        inner = typing.get_args(tp)[0]
        return tuple(_convert(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: got {value!r}, expected a table")
            return tp()
        return _build(tp, value, key, problems)
    ok = (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        or (tp is float and isinstance(value, int) and not isinstance(value, bool))
    )
    if not ok:
        problems.append(f"{key}: got {value!r}, expected {_type_name(tp)}")
        return None
    return float(value) if tp is float else value


def _build(cls, table: dict, prefix: str, problems: list[str]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name not in ("api_key", "fallback_keys")}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            problems.append(f"{full}: unknown key (known: {', '.join(sorted(names))})")
            continue
        converted = _convert(value, hints[key], full, problems)
        if converted is not None:
            kwargs[key] = converted
    return cls(**kwargs)


# --- semantic checks ----------------------------------------------------------------------


def _check_limits(key: str, items, problems: list[str]) -> None:
    for i, text in enumerate(items or ()):
        try:
            parse_many(text)
        except ValueError:
            problems.append(
                f"{key}[{i}]: got {text!r}, expected a limit like \"60/minute\" or \"1000/day\""
            )


def _check(s: Settings, problems: list[str]) -> None:
    from .storage import StorageError, parse_storage_url  # local: storage imports us

    if not 0 < s.server.port < 65536:
        problems.append(f"server.port: got {s.server.port}, expected 1-65535")
    for i, p in enumerate(s.server.trusted_proxies):
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            problems.append(f"server.trusted_proxies[{i}]: got {p!r}, expected an IP or CIDR")
    w = s.server.workers
    if not ((isinstance(w, int) and 1 <= w <= 256) or w == "auto"):
        problems.append(f"server.workers: got {w!r}, expected an integer from 1 to 256 or \"auto\"")
    elif resolve_workers(w) > 1 and not s.server.allow_unshared_workers and any(
            (url or s.storage.url) == "memory://"
            for url in (s.rate_limit.storage_url, s.cache.storage_url)):
        problems.append(
            f"server.workers: got {w!r} with memory:// storage, expected memcached storage "
            "(each process would keep its own rate limits and cache) or "
            "server.allow_unshared_workers = true")
    for name in ("body_timeout", "header_timeout", "shutdown_timeout"):
        if getattr(s.server, name) <= 0:
            problems.append(f"server.{name}: got {getattr(s.server, name)}, expected > 0")
    if s.server.max_body_bytes <= 0:
        problems.append(f"server.max_body_bytes: got {s.server.max_body_bytes}, expected > 0")
    if not s.upstream.base_url.startswith(("http://", "https://")):
        problems.append(f"upstream.base_url: got {s.upstream.base_url!r}, expected an http(s) URL")
    for i, r in enumerate(s.upstream.routes):
        if r not in DEFAULT_ROUTES:
            problems.append(
                f"upstream.routes[{i}]: got {r!r}, expected one of {', '.join(DEFAULT_ROUTES)}"
            )
    for name in ("connect_timeout", "first_byte_timeout", "idle_timeout"):
        if getattr(s.upstream, name) <= 0:
            problems.append(f"upstream.{name}: got {getattr(s.upstream, name)}, expected > 0")
    for i, fb in enumerate(s.upstream.fallbacks):
        if not fb.base_url.startswith(("http://", "https://")):
            problems.append(f"upstream.fallbacks[{i}].base_url: got {fb.base_url!r}, "
                            "expected an http(s) URL")
    if s.upstream.max_response_bytes <= 0:
        problems.append(f"upstream.max_response_bytes: got {s.upstream.max_response_bytes}, "
                        "expected > 0")
    if s.upstream.retries < 0:
        problems.append(f"upstream.retries: got {s.upstream.retries}, expected >= 0")
    for i, o in enumerate(s.cors.allow_origins):
        if o != "*" and not _is_origin(o):
            problems.append(
                f"cors.allow_origins[{i}]: got {o!r}, expected \"*\" or an origin like "
                "\"https://app.example.com\" (scheme and host, no path)"
            )
    if s.storage.on_error not in ("open", "closed"):
        problems.append(f"storage.on_error: got {s.storage.on_error!r}, expected \"open\" or \"closed\"")
    if s.storage.timeout <= 0:
        problems.append(f"storage.timeout: got {s.storage.timeout}, expected > 0")
    for key, url in (
        ("storage.url", s.storage.url),
        ("rate_limit.storage_url", s.rate_limit.storage_url),
        ("cache.storage_url", s.cache.storage_url),
    ):
        if url:
            try:
                parse_storage_url(url)
            except StorageError as exc:
                problems.append(f"{key}: got {url!r}, expected {exc}")
    _check_limits("rate_limit.requests", s.rate_limit.requests, problems)
    _check_limits("rate_limit.tokens", s.rate_limit.tokens, problems)
    for i, rule in enumerate(s.rate_limit.rules):
        _check_limits(f"rate_limit.rules[{i}].requests", rule.requests, problems)
        _check_limits(f"rate_limit.rules[{i}].tokens", rule.tokens, problems)
        if not rule.route and not rule.model:
            problems.append(f"rate_limit.rules[{i}]: expected a route, a model or both")
    if s.rate_limit.strategy not in ("auto", "moving-window", "sliding-window-counter"):
        problems.append(
            f"rate_limit.strategy: got {s.rate_limit.strategy!r}, expected \"auto\", "
            "\"moving-window\" or \"sliding-window-counter\""
        )
    limiter_url = s.rate_limit.storage_url or s.storage.url
    if s.rate_limit.strategy == "moving-window" and limiter_url.startswith("memcached"):
        problems.append(
            "rate_limit.strategy: got \"moving-window\", expected \"auto\" or "
            "\"sliding-window-counter\" with memcached storage (limits implements moving "
            "window only on memory, redis and mongodb)"
        )
    if s.cache.ttl <= 0:
        problems.append(f"cache.ttl: got {s.cache.ttl}, expected a positive integer (seconds)")
    if s.cache.max_bytes <= 0 or s.cache.max_item_bytes <= 0:
        problems.append("cache.max_bytes / cache.max_item_bytes: expected positive integers")
    v = s.validation
    for name in ("max_input_chars", "max_tokens", "max_n", "max_messages"):
        if getattr(v, name) <= 0:
            problems.append(f"validation.{name}: got {getattr(v, name)}, expected > 0")
    seen = set()
    for i, c in enumerate(s.clients):
        if not c.name:
            problems.append(f"clients[{i}].name: expected a non-empty name")
        h = c.key_sha256.lower()
        if len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h):
            problems.append(
                f"clients[{i}].key_sha256: got {c.key_sha256!r}, expected 64 hex digits "
                "(python gateway.py new-client-key NAME prints one)"
            )
        if h in seen:
            problems.append(f"clients[{i}].key_sha256: duplicate of an earlier client")
        seen.add(h)
        _check_limits(f"clients[{i}].requests", c.requests, problems)
        _check_limits(f"clients[{i}].tokens", c.tokens, problems)
        if c.cache_scope not in ("client", "shared"):
            problems.append(
                f"clients[{i}].cache_scope: got {c.cache_scope!r}, expected \"client\" or \"shared\""
            )
    if s.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(f"log.level: got {s.log.level!r}, expected debug, info, warning or error")
    if s.log.format not in ("auto", "json", "text"):
        problems.append(f"log.format: got {s.log.format!r}, expected \"auto\", \"json\" or \"text\"")


def _is_origin(text: str) -> bool:
    """scheme://host[:port] and nothing else: what a browser sends in `Origin` (RFC 6454)."""
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (u.scheme in ("http", "https") and bool(u.hostname) and "@" not in u.netloc
            and text == f"{u.scheme}://{u.netloc}")


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


def parse(data: dict, environ: typing.Mapping[str, str] | None = None, *,
          demo: bool = False) -> Settings:
    """Build and validate settings from a parsed TOML document.

    demo: the upstream key is neither needed nor used (`demo.demo_settings` points the
    gateway at the built-in demo upstream, which takes none)."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    settings = _build(Settings, data, "", problems)
    if not problems:
        _check(settings, problems)
        key = read_api_key(settings.upstream.api_key_env, environ)
        if demo:
            pass
        elif key is None:
            problems.append(
                f"upstream.api_key_env: environment variable {settings.upstream.api_key_env} "
                "is not set (nor a systemd credential of that name); expected the upstream key"
            )
        else:
            fallback_keys = []
            for i, fb in enumerate(settings.upstream.fallbacks):
                fb_key = read_api_key(fb.api_key_env, environ) if fb.api_key_env else key
                if fb_key is None:
                    problems.append(f"upstream.fallbacks[{i}].api_key_env: environment variable "
                                    f"{fb.api_key_env} is not set; expected a key")
                fallback_keys.append(fb_key or "")
            settings = dataclasses.replace(settings, api_key=key,
                                           fallback_keys=tuple(fallback_keys))
    if problems:
        raise ConfigError(problems)
    return settings


def load(path: str | os.PathLike, environ: typing.Mapping[str, str] | None = None, *,
         demo: bool = False) -> Settings:
    """Read and validate a TOML file. A missing default file means all defaults."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return parse(data, environ, demo=demo)

"""The serving sections of the config file: [server], [upstream], [cors], [storage],
[rate_limit], [cache], [validation], [log], [metrics], [playground].

Each is a frozen dataclass whose fields are the file's keys, with their defaults, and whose
`check(key, problems)` validates its own values when the loader builds it (relations between
sections are checked by `settings.Settings`). Limits, budgets and storage URLs given as text
(tests, the demo's defaults) are parsed at construction by the same strict parsers.
"""
from __future__ import annotations

import ipaddress
import re
import typing
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItemPerDay, RateLimitItemPerMinute

from .limits import LimitItems, Spend, as_limits, as_spend
from .loader import Problems, coerce
from .storage import StorageURL, parse_storage_url

#: The routes the gateway can forward (the brief's HTTP surface). Anything else is 404.
Route = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                "/v1/moderations", "/v1/models", "/v1/audio/speech", "/v1/audio/transcriptions",
                "/v1/audio/translations", "/v1/images/generations", "/v1/images/edits",
                "/v1/realtime/client_secrets", "/v1/realtime/calls", "/v1/realtime"]
#: The realtime routes (pipeline.realtime): a client secret, a WebRTC call, a WebSocket.
REALTIME_ROUTES = frozenset({"/v1/realtime/client_secrets", "/v1/realtime/calls",
                             "/v1/realtime"})
#: Forwarded by default: all of them.
DEFAULT_ROUTES: tuple[Route, ...] = typing.get_args(Route)
#: Tool types and service tiers OpenAI documents; others are allowed with a warning (new ones
#: appear between releases of this gateway, and a typo would otherwise go unnoticed).
KNOWN_TOOLS = ("function", "custom", "web_search", "web_search_preview", "file_search",
               "image_generation", "code_interpreter", "mcp", "computer_use_preview",
               "local_shell", "shell", "apply_patch")
KNOWN_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
#: Values OpenAI documents for the voice and pictures allowlists (spec of 2026-08 and SDK 3.57);
#: others are allowed with a warning, like tools.
KNOWN_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                "shimmer", "verse", "marin", "cedar")
KNOWN_SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
KNOWN_TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
KNOWN_IMAGE_QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
KNOWN_IMAGE_FORMATS = ("png", "jpeg", "webp", "gif", "svg")
#: Allowlists whose every value is one of OpenAI's (a typo would allow nothing).
_CLOSED_LISTS = {"speech_stream_formats": ("audio", "sse"),
                 "timestamp_granularities": ("segment", "word"),
                 "image_backgrounds": ("auto", "opaque", "transparent"),
                 "image_moderation": ("auto", "low")}
#: An image size: "auto", or WIDTHxHEIGHT.
IMAGE_SIZE = re.compile(r"auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4}")


def as_storage(value) -> StorageURL | None:
    """A storage URL; "" (not set) is None."""
    if isinstance(value, str):
        return parse_storage_url(value) if value else None
    return value


def _is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class ServerSettings:
    """Where the gateway listens and how it treats connections."""

    #: Listen address (--host overrides it); keep loopback behind nginx.
    host: str = "127.0.0.1"
    #: Listen port (--port overrides it).
    port: int = 8080
    #: Peers allowed to set X-Forwarded-For (IPs or CIDRs); [] trusts none.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    #: Larger request bodies get 413.
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

    #: The fallback's OpenAI-compatible base URL.
    base_url: str = ""
    #: "" = the primary's key.
    api_key_env: str = ""

    def check(self, at: str, p: Problems) -> None:
        p.expect(_is_http_url(self.base_url), f"{at}.base_url", self.base_url, "an http(s) URL")


@dataclass(frozen=True)
class UpstreamSettings:
    """The OpenAI-compatible API the gateway forwards to, and how."""

    #: Any OpenAI-compatible API (OpenAI, Azure, Groq, Together, vLLM, Ollama ...).
    base_url: str = "https://api.openai.com/v1"
    #: Name of the environment variable (or systemd credential) holding the key.
    api_key_env: str = "OPENAI_API_KEY"
    #: The forwarded routes; each maps to the same path below base_url (minus "/v1").
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    #: Seconds to open a connection to the upstream.
    connect_timeout: float = 10.0
    #: Until the upstream's response headers arrive.
    first_byte_timeout: float = 120.0
    #: Longest silence between two chunks of a body (no total timeout: streams may be long).
    idle_timeout: float = 120.0
    #: Both of the above on the voice and pictures routes: an image takes minutes, and so may
    #: the transcription of a long recording, before its first byte or between two events.
    media_timeout: float = 300.0
    #: Extra attempts on connect errors, 429 and 5xx, only before the client got a byte.
    retries: int = 2
    #: Seconds before the first retry, doubled each time (the upstream's Retry-After wins, at most
    #: 10 s).
    retry_backoff: float = 0.25
    #: Pooled connections to the upstream (one per open stream: keep it below half of LimitNOFILE).
    max_connections: int = 10000
    #: A larger upstream answer (non-stream) is refused with 502 rather than held in memory.
    max_response_bytes: int = 64 * 1024 * 1024
    #: Tried in order after the primary fails (connect error, 429, 5xx), before the first byte.
    fallbacks: tuple[FallbackSettings, ...] = ()

    def check(self, at: str, p: Problems) -> None:
        p.expect(_is_http_url(self.base_url), f"{at}.base_url", self.base_url, "an http(s) URL")
        p.positive(self, at, "connect_timeout", "first_byte_timeout", "idle_timeout",
                   "media_timeout", "max_connections", "max_response_bytes")
        p.expect(self.retries >= 0, f"{at}.retries", self.retries, ">= 0")
        p.expect(self.retry_backoff >= 0, f"{at}.retry_backoff", self.retry_backoff, ">= 0")


@dataclass(frozen=True)
class CorsSettings:
    """Which web pages may call the gateway from a browser."""

    #: Exact origins (scheme, host, port); "*" works and is warned about at start.
    allow_origins: tuple[str, ...] = ("http://localhost:5173",)
    #: Seconds a browser may cache a preflight answer.
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
    """Where rate limits, budgets and the cache live."""

    #: "memory://" (this process), "memcached://h:p[,h:p...]" (a cluster) or "redis://h:p[/db]"
    #: ("rediss://" for TLS): shared by rate limits, budgets and the cache.
    url: StorageURL = StorageURL("memory")
    #: "open": serve and log when storage fails; "closed": answer 503.
    on_error: Literal["open", "closed"] = "open"
    #: Seconds any storage call may take before it counts as failed.
    timeout: float = 0.5
    #: The variable holding the Redis password ("" = none); never in the URL.
    password_env: str = ""

    def __post_init__(self):
        coerce(self, url=as_storage)

    def check(self, at: str, p: Problems) -> None:
        p.positive(self, at, "timeout")


@dataclass(frozen=True)
class RuleSettings:
    """A tighter limit for one route and/or model (applies in addition to the client's)."""

    #: The route it applies to ("" = every route).
    route: str = ""
    #: The model it applies to ("" = every model).
    model: str = ""
    #: Request limits, in addition to the caller's own.
    requests: LimitItems = ()
    #: Token budgets, in addition to the caller's own.
    tokens: LimitItems = ()

    def __post_init__(self):
        coerce(self, requests=as_limits, tokens=as_limits)

    def check(self, at: str, p: Problems) -> None:
        if not self.route and not self.model:
            p.note(at, "expected a route, a model or both", fields=("route", "model"))


@dataclass(frozen=True)
class RateLimitSettings:
    """Per-caller request limits, token budgets and dollar budgets."""

    #: Per caller: "N/period", "N per period" or "N/M periods" (second, minute, hour, day, month,
    #: year); [] = no request limit.
    requests: LimitItems = (RateLimitItemPerMinute(60), RateLimitItemPerDay(1000))
    #: Per-caller token budgets, e.g. ["20000/minute", "200000/day"], charged from the upstream's
    #: usage.
    tokens: LimitItems = ()
    #: Per-client dollar budgets (cost of each answer, from its usage and [prices]).
    spend: Spend = ()
    #: "auto": moving-window on memory and redis, sliding-window-counter on memcached.
    strategy: Literal["auto", "moving-window", "sliding-window-counter"] = "auto"
    #: Overrides storage.url for the limiter ("" = storage.url).
    storage_url: StorageURL | None = None
    #: Tighter limits for a route and/or a model, in addition to the caller's own.
    rules: tuple[RuleSettings, ...] = ()

    def __post_init__(self):
        coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend,
                storage_url=as_storage)


@dataclass(frozen=True)
class CacheSettings:
    """The exact-match cache of answers."""

    #: Cache successful answers of the cached routes.
    enabled: bool = True
    #: Seconds an answer stays cached.
    ttl: int = 3600
    #: Bound of the in-memory cache (LRU); memcached bounds itself.
    max_bytes: int = 64 * 1024 * 1024
    #: Larger answers are not cached (memcached's default item limit is 1 MB).
    max_item_bytes: int = 1_000_000
    #: The cached routes.
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
    #: Overrides storage.url for the cache ("" = storage.url).
    storage_url: StorageURL | None = None

    def __post_init__(self):
        coerce(self, storage_url=as_storage)

    def check(self, at: str, p: Problems) -> None:
        p.expect(self.ttl > 0, f"{at}.ttl", self.ttl, "a positive integer (seconds)")
        p.positive(self, at, "max_bytes", "max_item_bytes")


@dataclass(frozen=True)
class ValidationSettings:
    """What one request may ask for (the request policy)."""

    #: Models a request may name; [] = any model.
    allowed_models: tuple[str, ...] = ("gpt-4o-mini",)
    #: Characters of everything the model reads, summed over the request.
    max_input_chars: int = 10_000
    #: The output cap; also sent upstream when the client sends no output limit.
    max_tokens: int = 4096
    #: Caps n and best_of (and the images of one image request).
    max_n: int = 4
    #: Chat messages per request.
    max_messages: int = 200
    #: Tool types a request may declare (hosted tools cost extra or reach outside the gateway).
    allowed_tools: tuple[str, ...] = ("function",)
    #: service_tier values a request may send; also "flex", "scale", "priority" (priced
    #: differently).
    allowed_service_tiers: tuple[str, ...] = ("auto", "default")
    #: False: /v1/responses goes upstream with store=false and stored-state features are refused.
    stored_state: bool = False
    #: Image parts per request (0: none); each is reserved at up to the model's largest figure.
    #: Also the images one image edit reads.
    max_images: int = 10
    #: One multipart upload (an audio file, images to edit), in bytes: larger is 413 and never
    #: forwarded. OpenAI's own limit for audio files is 25 MB.
    max_upload_bytes: int = 26_214_400
    #: Speech: voices (names, or custom voice ids), `response_format`s and `stream_format`s.
    speech_voices: tuple[str, ...] = KNOWN_VOICES
    speech_formats: tuple[str, ...] = KNOWN_SPEECH_FORMATS
    speech_stream_formats: tuple[str, ...] = ("audio", "sse")
    #: Transcriptions and translations: `response_format`s and `timestamp_granularities[]`.
    transcription_formats: tuple[str, ...] = KNOWN_TRANSCRIPTION_FORMATS
    timestamp_granularities: tuple[str, ...] = ("segment", "word")
    #: Images: sizes (OpenAI's fixed ones; add WIDTHxHEIGHT sizes for gpt-image-2), qualities,
    #: backgrounds, moderation levels ("low" filters less, and what it lets through is the
    #: account's to answer for) and output formats (gif and svg are previews, priced apart).
    image_sizes: tuple[str, ...] = ("auto", "1024x1024", "1536x1024", "1024x1536", "256x256",
                                    "512x512", "1792x1024", "1024x1792")
    image_qualities: tuple[str, ...] = ("auto", "low", "medium", "high", "standard", "hd")
    image_backgrounds: tuple[str, ...] = ("auto", "opaque", "transparent")
    image_moderation: tuple[str, ...] = ("auto",)
    image_formats: tuple[str, ...] = ("png", "jpeg", "webp")

    def check(self, at: str, p: Problems) -> None:
        p.positive(self, at, "max_input_chars", "max_tokens", "max_n", "max_messages",
                   "max_upload_bytes")
        p.expect(self.max_images >= 0, f"{at}.max_images", self.max_images, ">= 0 (0 = no images)")
        open_lists: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("allowed_tools", KNOWN_TOOLS), ("allowed_service_tiers", KNOWN_SERVICE_TIERS),
            ("speech_voices", KNOWN_VOICES), ("speech_formats", KNOWN_SPEECH_FORMATS),
            ("transcription_formats", KNOWN_TRANSCRIPTION_FORMATS),
            ("image_qualities", KNOWN_IMAGE_QUALITIES), ("image_formats", KNOWN_IMAGE_FORMATS))
        for name, known in open_lists:
            for i, value in enumerate(getattr(self, name)):
                p.expect(bool(value.strip()), f"{at}.{name}[{i}]", value, "a non-empty string")
                if value.strip() and value not in known:
                    p.warnings.append(f"{at}.{name}[{i}]: {value!r} is not one OpenAI "
                                      f"documents ({', '.join(known)})")
        for name, known in _CLOSED_LISTS.items():
            for i, value in enumerate(getattr(self, name)):
                p.expect(value in known, f"{at}.{name}[{i}]", value, "one of " + ", ".join(known))
        for i, value in enumerate(self.image_sizes):
            p.expect(bool(IMAGE_SIZE.fullmatch(value)), f"{at}.image_sizes[{i}]", value,
                     '"auto" or WIDTHxHEIGHT, like "1024x1024"')


@dataclass(frozen=True)
class LogSettings:
    """The access log and the gateway's other lines, on stderr."""

    #: debug, info, warning or error (--log-level overrides it).
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
    """Prometheus metrics."""

    #: Serve GET /metrics, only to server.trusted_proxies peers.
    enabled: bool = True


@dataclass(frozen=True)
class PlaygroundSettings:
    """The chat page at / (the reference front-end)."""

    #: Serve the playground page at GET / (on by default only with --demo).
    enabled: bool = False



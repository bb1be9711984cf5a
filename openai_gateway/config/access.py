"""Who may call and what they may spend: [auth] (issuers, tokens, sessions), [tiers.NAME],
[[clients]], [prices], [budget].

Each is a frozen dataclass whose fields are the file's keys, with their defaults, and whose
`check(key, problems)` validates its own values when the loader builds it. Only the names of
the environment variables holding secrets are here; `secrets.read_secrets` reads them.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItemPerHour

from .limits import LimitItems, Spend, as_limits, as_spend
from .loader import Problems, coerce, subkey

#: JWS algorithms a JWT issuer may be allowed (RFC 7518 section 3.1); "none" is not one of them.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                    "PS512", "ES256", "ES384", "ES512", "EdDSA"]
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output (256 bits for HS256).
MIN_HMAC_SECRET = 32
TIER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TIER_NAME_EXPECTED = "a name of letters, digits, _ . - (at most 64)"
#: A host name as a captcha provider reports the page's (RFC 1123 labels; IDNs as punycode).
HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


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


@dataclass(frozen=True)
class IssuerSettings:
    """A login provider whose JWTs identify the app's users (exactly one key source)."""

    #: The token's iss must equal this.
    issuer: str = ""
    #: aud must contain this ("" = not checked).
    audience: str = ""
    #: The provider's key set (https; http only to loopback).
    jwks_url: str = ""
    #: Or a key set in a local file (a JWKS document).
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
    #: The variable holding the captcha secret (required when sessions are on).
    captcha_secret_env: str = ""
    #: The tier of session tokens (an unknown tier falls back at run time, with a warning).
    tier: str = "free"
    #: Seconds a session token lives.
    ttl: int = 900
    #: Session creations allowed per client address (IPv6: per server.ipv6_prefix).
    requests: LimitItems = (RateLimitItemPerHour(10),)
    #: The site host names whose captcha answers count ([] = not checked).
    hostnames: tuple[str, ...] = ()

    def __post_init__(self):
        coerce(self, requests=as_limits)

    def check(self, at: str, p: Problems) -> None:
        for i, host in enumerate(self.hostnames):
            p.expect(bool(HOSTNAME.fullmatch(host)), f"{at}.hostnames[{i}]", host,
                     "a host name such as app.example.com (no scheme, port or path)")
        if self.captcha_verify_url:
            p.expect(_https_or_loopback(self.captcha_verify_url), f"{at}.captcha_verify_url",
                     self.captcha_verify_url,
                     "an https:// URL (http:// only to 127.0.0.0/8, ::1 or localhost)")
            p.expect(bool(self.captcha_secret_env), f"{at}.captcha_secret_env",
                     self.captcha_secret_env, "the variable holding the captcha secret")
        p.positive(self, at, "ttl")


@dataclass(frozen=True)
class AuthSettings:
    """Who may call: [[auth.issuers]], [auth.tokens] and [auth.sessions] are the ways to know
    a caller beyond its address."""

    #: False: a request with no verified identity (client key or user token) gets 401.
    anonymous: bool = True
    #: True: a bearer that is not a known client key (nor a verified token) gets 401.
    require_client_key: bool = False
    #: Login providers whose JWTs identify the app's users.
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

    #: Replaces rate_limit.requests for the tier's users.
    requests: LimitItems | None = None
    #: Replaces rate_limit.tokens.
    tokens: LimitItems | None = None
    #: Replaces rate_limit.spend (US dollars).
    spend: Spend | None = None
    #: Replaces validation.allowed_models.
    models: tuple[str, ...] | None = None

    def __post_init__(self):
        coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend)


@dataclass(frozen=True)
class ClientSettings:
    """A gateway-issued client key (only its SHA-256 is stored)."""

    #: Its identity (key:NAME) in limits, budgets, logs and the users it mints; unique.
    name: str = ""
    #: The SHA-256 of the key, printed by new-client-key (the key itself is never stored).
    key_sha256: str = ""
    #: Replaces rate_limit.requests for this client.
    requests: LimitItems | None = None
    #: Replaces rate_limit.tokens.
    tokens: LimitItems | None = None
    #: Replaces validation.allowed_models.
    models: tuple[str, ...] | None = None
    #: "client": cache entries are private to this key; "shared": shared with everyone.
    cache_scope: Literal["client", "shared"] = "client"
    #: A [tiers.NAME] (None: none; an unknown name falls back at run time, with a warning).
    tier: str | None = None
    #: Replaces rate_limit.spend.
    spend: Spend | None = None
    #: The tiers this key's tokens may have (POST /gateway/tokens). None: its own tier only,
    #: or any configured tier when it has none; []: it mints no tokens.
    mint_tiers: tuple[str, ...] | None = None

    def __post_init__(self):
        coerce(self, requests=as_limits, tokens=as_limits, spend=as_spend)

    @property
    def mintable_tiers(self) -> tuple[str, ...] | None:
        """The tiers this key may mint, with the default applied (None: any tier)."""
        if self.mint_tiers is not None:
            return self.mint_tiers
        return (self.tier,) if self.tier else None

    def check(self, at: str, p: Problems) -> None:
        if not self.name:
            p.note(f"{at}.name", "expected a non-empty name")
        for i, tier in enumerate(self.mint_tiers or ()):
            p.expect(bool(TIER_NAME.fullmatch(tier)), f"{at}.mint_tiers[{i}]", tier,
                     TIER_NAME_EXPECTED)
        h = self.key_sha256.lower()
        p.expect(len(h) == 64 and all(ch in "0123456789abcdef" for ch in h),
                 f"{at}.key_sha256", self.key_sha256,
                 "64 hex digits (python gateway.py new-client-key NAME prints one)")


@dataclass(frozen=True)
class PriceSettings:
    """US dollars per 1M tokens for one model. Audio and image tokens have their own rates
    where the model bills them apart (None: the text rate, `input` or `output`). A voice or
    picture model may bill other units instead or as well: US dollars a minute of audio,
    per 1M characters, per image by "quality/size"; `image_tokens` are the image output
    tokens one image costs, by "quality/size" (they bound the reservation)."""

    #: Input tokens.
    input: float
    #: Cached input tokens (default: input).
    cached_input: float
    #: Output tokens, reasoning included (default: audio_output).
    output: float
    #: Audio input tokens (default: input).
    audio_input: float | None = None
    #: Image input tokens (default: input).
    image_input: float | None = None
    #: Audio output tokens (default: output).
    audio_output: float | None = None
    #: The model reasons before it writes (hidden output tokens): a stream stopped early is
    #: charged its whole reservation. Unset: as the shipped table says of the model, else false.
    reasoning: bool | None = None
    #: Cached audio input, where the model prices it apart from cached text (realtime models);
    #: unset (None): the lower of cached_input and audio_input (prices.Price).
    cached_audio_input: float | None = None
    #: US dollars a minute of input audio (whisper-1).
    per_minute: float | None = None
    #: US dollars per 1M input characters (tts-1).
    per_million_chars: float | None = None
    #: US dollars an image, by "quality/WIDTHxHEIGHT" (DALL-E).
    per_image: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: Unset: as the shipped table says of the model.
    image_tokens: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def prepare(table: dict) -> dict:
        """The effective rates: cached_input defaults to input (a provider with no cache
        discount), output to audio_output (a model that only speaks), audio_input and
        image_input to input, audio_output to output (cached_audio_input: see its field).
        A row with no token rate but a unit rate (whisper-1 by the minute, tts-1 by the
        character, DALL-E by the image) bills no tokens."""
        table = dict(table)
        if not TOKEN_RATES & table.keys() and UNIT_RATES & table.keys():
            table.update(input=0.0, output=0.0)
        if "cached_input" not in table and "input" in table:
            table["cached_input"] = table["input"]
        if "output" not in table and "audio_output" in table:
            table["output"] = table["audio_output"]
        for name, text in (("audio_input", "input"), ("image_input", "input"),
                           ("audio_output", "output")):
            value = table.get(text)
            if name not in table and type(value) in (int, float):  # a bad one is named once
                table[name] = value
        return table

    def check(self, at: str, p: Problems) -> None:
        for name in ("input", "cached_input", "output", "audio_input", "image_input",
                     "audio_output", "cached_audio_input"):
            value = getattr(self, name)
            if value is not None:
                p.expect(value >= 0, f"{at}.{name}", value, ">= 0 (US dollars per 1M tokens)")
        if self.cached_audio_input is not None and self.audio_input is not None:
            p.expect(self.cached_audio_input <= self.audio_input, f"{at}.cached_audio_input",
                     self.cached_audio_input,
                     f"at most audio_input ({self.audio_input}): cached tokens are never dearer")
        p.expect(self.cached_input <= self.input, f"{at}.cached_input", self.cached_input,
                 f"at most input ({self.input}): cached tokens are never dearer")
        for name, unit in (("per_minute", "a minute"), ("per_million_chars", "per 1M characters")):
            value = getattr(self, name)
            if value is not None:
                p.expect(value >= 0, f"{at}.{name}", value, f">= 0 (US dollars {unit})")
        for name, table, low in (("per_image", self.per_image, 0),
                                 ("image_tokens", self.image_tokens, 1)):
            for key, value in table.items():
                where = subkey(f"{at}.{name}", key)
                p.expect(bool(IMAGE_KEY.fullmatch(key)), where, key,
                         'a key "quality/WIDTHxHEIGHT", like "hd/1024x1024"')
                p.expect(value >= low, where, value, f">= {low}")


#: The keys of a price row that are token rates, and those that are other units.
TOKEN_RATES = frozenset({"input", "cached_input", "output", "audio_input", "image_input",
                         "audio_output", "cached_audio_input"})
UNIT_RATES = frozenset({"per_minute", "per_million_chars", "per_image"})
#: A per-image key: quality and size.
IMAGE_KEY = re.compile(r"[a-z]+/[1-9][0-9]*x[1-9][0-9]*")


@dataclass(frozen=True)
class BudgetSettings:
    """Ceilings for the whole gateway, every client together (0 = none)."""

    #: US dollars a day (a sliding 24 hours); 0 = no ceiling.
    daily_usd: float = 0.0
    #: US dollars a month (a sliding 30 days); 0 = no ceiling.
    monthly_usd: float = 0.0
    #: Warn in the log when this share of a ceiling is spent.
    warn_at: float = 0.8

    def check(self, at: str, p: Problems) -> None:
        for name in ("daily_usd", "monthly_usd"):
            value = getattr(self, name)
            p.expect(value >= 0, f"{at}.{name}", value, ">= 0 (0 = no ceiling)")
        p.expect(0 < self.warn_at <= 1, f"{at}.warn_at", self.warn_at, "0 < x <= 1")



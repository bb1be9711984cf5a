"""An issuer's public keys (a JWKS), kept fresh without letting a token hammer the provider.

Keys come from a URL (fetched with the gateway's own aiohttp session, never blocking the
loop) or a file. A token naming a key id we do not hold triggers at most one refetch per
`cooldown`: an attacker's random `kid`s cost the provider one request per cooldown, not one
each. A fetch that fails keeps the keys already held in service; `ready` says whether any are.

A key the provider stops publishing is dropped at the next fetch and marked no longer `held`;
tokens remembered as verified with it (`caller.VerifiedCache`) end with it.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
from jwt import PyJWK, PyJWTError

from .remote import TooLarge, read_limited

log = logging.getLogger("gateway.auth")

#: A JWKS is a few KB (Google's: 2 keys, 1.5 KB); more than this is not one.
MAX_JWKS_BYTES = 512 * 1024
#: Key types a JWKS may contribute. "oct" (a shared secret) is never taken from a key set: a
#: published symmetric key lets anyone sign; HS* issuers use `secret_env` instead.
PUBLIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
#: Bounds on the background refresh interval, whatever Cache-Control says.
MIN_REFRESH, MAX_REFRESH = 60.0, 86400.0
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


class JwksError(Exception):
    """The key set could not be fetched or parsed; the keys already held stay in service."""


class SigningKey:
    """One JWK and the verifiers built from it, one per algorithm (PyJWK binds one).

    `held` is True while the key is in its issuer's key set; a fetch that no longer finds it
    sets it False, for good (a key published again is a new SigningKey).
    """

    __slots__ = ("kid", "data", "alg", "held", "_bound")

    def __init__(self, data: dict, first: PyJWK):
        self.kid: str | None = first.key_id
        self.data = data
        self.held = True
        #: The algorithm the JWK itself names (RFC 7517 section 4.4); None = any its type can do.
        self.alg: str | None = data.get("alg") if isinstance(data.get("alg"), str) else None
        self._bound: dict[str, PyJWK | None] = {first.algorithm_name: first}

    def bound(self, alg: str) -> PyJWK | None:
        """This key as a verifier for `alg`, or None when it cannot be one.

        A key that names its algorithm serves only that one; otherwise PyJWK decides whether
        the type fits (an RSA key asked for HS256 - algorithm confusion - does not).
        """
        if self.alg is not None and self.alg != alg:
            return None
        if alg not in self._bound:
            try:
                self._bound[alg] = PyJWK(self.data, alg)
            except PyJWTError:
                self._bound[alg] = None
        return self._bound[alg]


def parse_jwks(raw: bytes) -> list[SigningKey]:
    """The usable signing keys of a JWKS document; raises JwksError when there are none."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JwksError("the key set is not JSON") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise JwksError('the key set has no "keys" list')
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in PUBLIC_KEY_TYPES:
            continue
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key (RFC 7517 section 4.2) never verifies a signature
        try:
            keys.append(SigningKey(entry, PyJWK(entry)))
        except PyJWTError:
            continue  # one malformed or unsupported key must not hide the others
    if not keys:
        raise JwksError("the key set holds no usable signing key")
    return keys


def key_file_problem(file: str) -> str | None:
    """Why a jwks_file cannot serve as an issuer's key set (read as the issuer reads it at
    start), or None: --check and the start say so as a configuration error."""
    try:
        parse_jwks(Path(file).read_bytes())
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except JwksError as exc:
        return str(exc)
    return None


class KeySet:
    """Keys by id. `key(kid, alg)` is the per-token lookup; `running()` keeps them fresh.

    `session` returns the gateway's ClientSession (it exists only once the app runs).
    """

    def __init__(self, *, url: str = "", file: str = "",
                 session: Callable[[], aiohttp.ClientSession] | None = None,
                 cooldown: float = 30.0, refresh: float = 600.0, timeout: float = 5.0):
        if bool(url) == bool(file):
            raise ValueError("a key set needs exactly one of a URL or a file")
        if url and session is None:
            raise ValueError("a key set with a URL needs the gateway's HTTP session")
        self.url, self.file = url, file
        self._session = session
        self.cooldown, self.refresh, self.timeout = cooldown, refresh, timeout
        self._keys: list[SigningKey] = []
        self._lock = asyncio.Lock()
        #: When an unknown kid last caused a fetch (scheduled refreshes do not count: a key
        #: rotated in just after one is still picked up at once).
        self._last_refetch = -float("inf")
        #: The last successful answer's Cache-Control max-age, if it had one.
        self.max_age: float | None = None
        if file:
            try:
                self._keys = parse_jwks(Path(file).read_bytes())
            except (OSError, JwksError) as exc:
                raise ValueError(f"jwks_file {file}: {exc}") from None

    @property
    def ready(self) -> bool:
        """True once at least one key is held."""
        return bool(self._keys)

    def key(self, kid: str | None, alg: str) -> tuple[SigningKey, PyJWK] | None:
        """The key for a token's header and its verifier for `alg`; None when no held key
        fits.

        Without a `kid` the token gets a key only when exactly one held key fits: with
        several we would be guessing, and trying each would multiply the cost of a forgery.
        """
        fits = [(k, b) for k in self._keys if kid is None or k.kid == kid
                if (b := k.bound(alg)) is not None]
        return fits[0] if len(fits) == 1 or (fits and kid is not None) else None

    async def key_or_refetch(self, kid: str | None, alg: str
                             ) -> tuple[SigningKey, PyJWK] | None:
        """`key()`, refetching the set once per cooldown when the key is unknown (rotation)."""
        found = self.key(kid, alg)
        if found is not None or not self.url:
            return found
        async with self._lock:  # concurrent unknown kids share one fetch
            found = self.key(kid, alg)
            if found is None and time.monotonic() - self._last_refetch >= self.cooldown:
                self._last_refetch = time.monotonic()
                await self.fetch()
                found = self.key(kid, alg)
        return found

    async def fetch(self) -> bool:
        """Fetch the set now; True when it replaced the held keys. A failure of any kind
        (down, slow, HTTP error, not a key set) keeps the held keys and is logged."""
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with self._session().get(self.url, timeout=timeout,
                                           allow_redirects=False) as resp:
                if resp.status != 200:
                    raise JwksError(f"HTTP {resp.status}")
                raw = await read_limited(resp, MAX_JWKS_BYTES)
                max_age = _max_age(resp.headers.get("Cache-Control", ""))
            self._hold(parse_jwks(raw))
        except Exception as exc:  # any failure at all: keep serving the held keys
            held = f"keeping {len(self._keys)} held key(s)" if self._keys else "no keys held"
            log.warning("JWKS fetch from %s failed (%s); %s", self.url, _describe(exc), held)
            return False
        self.max_age = max_age
        log.info("JWKS from %s: %d key(s)", self.url, len(self._keys))
        return True

    def _hold(self, fetched: list[SigningKey]) -> None:
        """Hold `fetched` instead of the current keys. A key still published stays the same
        object (its verified tokens stay remembered, its verifiers stay built); a key gone
        from the set is no longer `held`."""
        kept = [next((old for old in self._keys if old.data == new.data), new)
                for new in fetched]
        for old in self._keys:
            if all(old is not k for k in kept):
                old.held = False
        self._keys = kept

    @asynccontextmanager
    async def running(self):
        """Fetch at start (a failure is logged; `ready` stays False), then refresh in the
        background every `refresh` seconds, or as the server's Cache-Control max-age says."""
        if not self.url:
            yield self
            return
        ok = await self.fetch()
        task = asyncio.get_running_loop().create_task(self._refresh_loop(ok))
        try:
            yield self
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def next_refresh(self, ok: bool) -> float:
        """Seconds until the next scheduled fetch: soon after a failure, else the server's
        max-age (Google's is hours) or `refresh`, within MIN_REFRESH..MAX_REFRESH."""
        if not ok:
            return max(self.cooldown, 1.0)
        return min(max(self.max_age or self.refresh, MIN_REFRESH), MAX_REFRESH)

    async def _refresh_loop(self, ok: bool) -> None:
        while True:
            await asyncio.sleep(self.next_refresh(ok))
            async with self._lock:
                ok = await self.fetch()


def _max_age(cache_control: str) -> float | None:
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


def _describe(exc: BaseException) -> str:
    """What went wrong, in words that hold nothing from the answer (no body, no key)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) if isinstance(exc, JwksError | TooLarge) else type(exc).__name__

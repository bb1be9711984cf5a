"""Who a bearer token says the caller is: a verified user, None (not a JWT), or a 401.

`BearerResolver.resolve(authorization)` is the per-request path. A bearer shaped like a JWT
(three dot-separated segments whose first is base64url JSON) must verify - a login
provider's token or one the gateway minted - or the request is refused with 401
`invalid_token`; it never silently becomes anonymous. Anything else (a browser's dummy key,
a client key the caller checked first) is None, and the caller falls back to address.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from ..errors import InvalidToken
from .minted import ISSUER as MINTED_ISSUER
from .minted import MINTED_BY, TokenMinter

if TYPE_CHECKING:  # PyJWT loads only where an issuer is configured (auth.py)
    from .issuers import Issuer
    from .jwks import SigningKey

#: Tokens above this are refused before any parsing: real ones are 0.5-2 KB, and a huge one
#: is an attempt to make every request pay for decoding it.
MAX_TOKEN_BYTES = 8192
#: Verified tokens remembered at most (about 300 bytes each): a repeated token then costs a
#: hash and a dict lookup instead of a signature check.
DEFAULT_CACHE_SIZE = 10_000
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified identity. `id` keys limits, budgets, cache scope and logs.

    kind: "user" (a provider's or a minted token) or "session" (a captcha-checked session).
    id: see `caller_id`: the subject (often an e-mail address) never leaves the process.
    tier: the token's tier, None when it names none.
    label: where the identity comes from, for logs: the issuer, "gateway" or "session".
    expires_at: the token's exp (Unix seconds).
    """

    kind: str
    id: str
    tier: str | None
    label: str
    expires_at: int


def caller_id(kind: str, iss: str, sub: str, minted_by: str | None = None) -> str:
    """"<kind>:" + the first 24 hex digits of a SHA-256: of `iss|sub` for a provider's token
    (and a minted one from before `minted_by` existed), of the JSON array
    `[iss, minted_by, sub]` for a minted token, so a user id is one user per minter.

    JSON quotes each part, so no minter and subject (both may hold "|") spell another pair,
    and its leading "[" keeps it apart from every `iss|sub` (issuers are URLs; the gateway's
    own is "openai-gateway").
    """
    text = f"{iss}|{sub}".encode() if minted_by is None else orjson.dumps([iss, minted_by, sub])
    return f"{kind}:{hashlib.sha256(text).hexdigest()[:24]}"


def _segment(segment: str) -> dict | None:
    """A base64url segment holding a JSON object, decoded; None for anything else."""
    if len(segment) > MAX_TOKEN_BYTES or not _B64URL.fullmatch(segment):
        return None
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def jwt_header(token: str) -> dict | None:
    """The unverified header when `token` is a JWT (RFC 7519 section 7.2: three dot-separated
    segments, the first base64url-encoded JSON), else None."""
    if token.count(".") != 2:
        return None
    return _segment(token[:token.index(".")])


class VerifiedCache:
    """SHA-256 of a token -> its Verified, until the token's exp or until the key that verified
    it leaves its issuer's key set, whichever comes first; the oldest entry goes first.

    A hit costs a dict lookup, the clock and one attribute of the key (`SigningKey.held`,
    which a JWKS fetch clears when the key is gone): nothing is allocated.
    """

    def __init__(self, size: int = DEFAULT_CACHE_SIZE, clock: Callable[[], float] = time.time):
        self.size, self._clock = size, clock
        # OrderedDict: O(1) eviction of the oldest (a dict would rescan the holes it leaves).
        self._entries: OrderedDict[bytes, tuple[Verified, SigningKey | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> Verified | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        caller, key = entry
        if caller.expires_at <= self._clock() or (key is not None and not key.held):
            del self._entries[digest]
            return None
        return caller

    def put(self, digest: bytes, caller: Verified, key: SigningKey | None = None) -> None:
        """`key`: the key set's key that verified the token (None: a secret, which lasts as
        long as the process)."""
        if self.size <= 0:
            return
        while len(self._entries) >= self.size:
            self._entries.popitem(last=False)  # the oldest first
        self._entries[digest] = (caller, key)


class BearerResolver:
    """Built once from `[[auth.issuers]]` and `[auth.tokens]`; `resolve` per request.

    `known_tiers`: configured tier names, used to pick a tier out of a list claim.
    """

    def __init__(self, *, issuers: Sequence[Issuer] = (), minter: TokenMinter | None = None,
                 known_tiers: Collection[str] = (), cache_size: int = DEFAULT_CACHE_SIZE,
                 clock: Callable[[], float] = time.time, own: TokenMinter | None = None):
        """`own`: the signer of the gateway's realtime client secrets, for a gateway without
        `minter` (no `auth.tokens`): a token of the gateway's own issuer is then checked with
        it (a realtime secret is refused, saying so) and any other JWT is read as before,
        anonymous when no issuer is configured."""
        self.issuers = {i.issuer: i for i in issuers}
        if len(self.issuers) != len(issuers):
            raise ValueError("auth.issuers: two issuers have the same issuer")
        if MINTED_ISSUER in self.issuers:
            raise ValueError(f"auth.issuers: {MINTED_ISSUER!r} is the gateway's own issuer")
        self.minter = minter
        self.own = minter or own
        self.known_tiers = frozenset(known_tiers)
        self.cache = VerifiedCache(cache_size, clock)

    @property
    def enabled(self) -> bool:
        """False when no issuer and no signer is known: every bearer is then None."""
        return bool(self.issuers) or self.own is not None

    def not_ready(self) -> list[str]:
        """Issuers holding no keys yet (for /readyz): their users get 401 until keys load."""
        return [name for name, i in self.issuers.items() if not i.ready]

    @asynccontextmanager
    async def running(self):
        """Fetch every issuer's keys and keep them fresh while the app runs."""
        async with AsyncExitStack() as stack:
            for issuer in self.issuers.values():
                await stack.enter_async_context(issuer.running())
            yield self

    async def resolve(self, authorization: str | None) -> Verified | None:
        """The verified caller; None when the bearer is not a JWT; raises InvalidToken."""
        # The scheme is case-insensitive (RFC 9110 section 11.1).
        if not self.enabled or not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        if token.count(".") != 2:
            return None  # the cheap test first: dummy keys and client keys end here
        if len(token) > MAX_TOKEN_BYTES:
            if _B64URL.fullmatch(token[:token.index(".")]):
                raise InvalidToken(f"The token is larger than {MAX_TOKEN_BYTES} bytes.")
            return None
        digest = hashlib.sha256(token.encode()).digest()
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        header = jwt_header(token)
        if header is None:
            return None
        verified = await self._verify(token, header)
        if verified is None:
            return None
        caller, key = verified
        self.cache.put(digest, caller, key)
        return caller

    async def _verify(self, token: str, header: dict
                      ) -> tuple[Verified, SigningKey | None] | None:
        """The caller and the key set's key that verified the token (None: a secret); None
        for another issuer's JWT when only the gateway's realtime signer is known."""
        # The header and iss are read unverified only to pick the verifier and its key (PyJWT
        # parses each token three times over if asked for them: a third of a verification).
        # jwt.decode then checks alg, iss and every claim again, against the key.
        unverified = _segment(token.split(".")[1])
        if unverified is None:
            raise InvalidToken("The token is malformed.")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("The token is unsigned (alg none), which is never accepted.")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise InvalidToken("The token has no issuer (iss).")
        if iss == MINTED_ISSUER and self.own is not None:
            claims = self.own.verify(token)
            kind = claims["kind"]
            return Verified(kind=kind, id=caller_id(kind, iss, claims["sub"],
                                                    claims.get(MINTED_BY)),
                            tier=claims.get("tier"), label="gateway" if kind == "user"
                            else "session", expires_at=int(claims["exp"])), None
        issuer = self.issuers.get(iss)
        if issuer is None and not self.issuers and self.minter is None:
            return None  # no login provider, no minted tokens: JWTs are not identities here
        if issuer is None:
            raise InvalidToken("The token's issuer (iss) is not one this gateway accepts.")
        claims, key = await issuer.verify(token, header)
        return Verified(kind="user", id=caller_id("user", iss, claims["sub"]),
                      tier=issuer.tier(claims, self.known_tiers), label=issuer.issuer,
                      expires_at=int(claims["exp"])), key


"""Tokens the gateway signs itself (`[auth.tokens]`): minted for an app's users, stateless.

HS256 with the operator's secret: every process and VM holding the secret accepts every token,
with nothing stored. During a rotation `previous_secret` still verifies (never signs), so
tokens minted before the switch live out their short TTL.

Every token names who minted it (the `minted_by` claim), and a user is a user of that minter:
"42" minted by two client keys is two users, with two sets of limits and budgets. A key mints
only the tiers it may (`choose_tier`).
"""
from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection
from typing import Any

from ..config.access import MIN_HMAC_SECRET
from ..errors import GatewayError, InvalidRequest, InvalidToken

#: The `iss` (and `aud`) of every minted token: the resolver routes tokens by it.
ISSUER = "openai-gateway"
ALGORITHM = "HS256"
#: `kind` claim values: a user an app's backend vouches for, or a captcha-checked session.
KINDS = ("user", "session")
#: The `aud` of realtime client secrets (realtime_secrets): `verify` refuses them, so such a
#: secret opens realtime sessions and is no API token.
REALTIME_AUDIENCE = ISSUER + "/realtime"
#: The TTL a request that names none gets (capped by max_ttl): short, like OpenAI's
#: ephemeral keys, since a token in a browser can be copied.
DEFAULT_TTL = 900
#: Users are the app's ids ("42", "auth0|abc", "ana@example.com"): no spaces, no controls.
USER_PATTERN = re.compile(r"[A-Za-z0-9._@+|:-]{1,128}")
TIER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
#: The claim naming a token's minter, the namespace of its user: "key:NAME" for the client
#: key NAME (POST /gateway/tokens, `mint-token --client NAME`), and the fixed names below for
#: the gateway's other minters. Tokens minted before the claim existed have none: theirs is
#: a namespace of its own (see `caller.caller_id`).
MINTED_BY = "minted_by"
#: `mint-token` without --client; the playground's "sign in as" (--demo); captcha sessions.
CLI, DEMO, SESSIONS = "cli", "demo", "session"
#: Longest minted_by accepted from a token ("key:" and a client's name).
MAX_MINTED_BY_CHARS = 200


class MintingNotAllowed(GatewayError):
    """The client key may mint no token at all (its mint_tiers is empty)."""

    status, type, code = 403, "invalid_request_error", "minting_not_allowed"


def key_minter(name: str) -> str:
    """The minted_by of tokens a client key mints: its users live in their own namespace."""
    return "key:" + name


def new_secret() -> str:
    """A fresh random secret (for --demo, or to paste into the secret's environment file)."""
    return secrets.token_urlsafe(48)


def check_request(user: Any, tier: Any, ttl: Any, *, max_ttl: int,
                  tiers: Collection[str] | None = None) -> tuple[str, str | None, int]:
    """(user, tier, ttl) as a token will carry them; InvalidRequest naming the param."""
    if not isinstance(user, str) or not USER_PATTERN.fullmatch(user):
        raise InvalidRequest("'user' must be 1-128 characters of letters, digits and . _ @ + | "
                             ": -", param="user")
    if tier is not None:
        if not isinstance(tier, str) or not TIER_PATTERN.fullmatch(tier):
            raise InvalidRequest("'tier' must be 1-64 characters of letters, digits and . _ -",
                                 param="tier")
        if tiers is not None and tier not in tiers:
            raise InvalidRequest(f"The tier '{tier}' is not configured on this gateway.",
                                 param="tier")
    if ttl is None:
        ttl = min(DEFAULT_TTL, max_ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= max_ttl:
        raise InvalidRequest(f"'ttl' must be an integer number of seconds from 1 to {max_ttl}.",
                             param="ttl")
    return user, tier, ttl


def choose_tier(asked: Any, *, own: str | None, allowed: Collection[str] | None) -> Any:
    """The tier a client key's token gets: the one `asked` for, else the key's `own` tier.

    `allowed` is what the key may mint (its mint_tiers in effect; None: any tier). A tier it
    may not mint is a 400 naming `tier` (the request can ask for another); a key that may mint
    none is a 403 (no request of it can succeed). A value that is not a tier name is returned
    as it is, for `check_request` to refuse with the usual message.
    """
    if allowed is None:
        return asked
    if not allowed:
        raise MintingNotAllowed("This client key may not mint tokens (its mint_tiers is empty).")
    may = ", ".join(sorted(allowed))
    if asked is None:
        if own in allowed:
            return own
        raise InvalidRequest(f"Name the token's 'tier': this client key mints only {may}.",
                             param="tier", code="tier_not_allowed")
    if isinstance(asked, str) and asked not in allowed:
        raise InvalidRequest(f"This client key may not mint tokens of tier '{asked[:64]}' (it "
                             f"mints only {may}).", param="tier", code="tier_not_allowed")
    return asked


class TokenMinter:
    """Signs and verifies the gateway's own tokens. Built once from `[auth.tokens]`."""

    def __init__(self, *, secret: str, previous_secret: str = "", max_ttl: int = 3600,
                 leeway: float = 5.0, clock: Callable[[], float] = time.time):
        for name, value in (("secret", secret), ("previous_secret", previous_secret)):
            if (value or name == "secret") and len(value.encode()) < MIN_HMAC_SECRET:
                raise ValueError(f"auth.tokens {name}: shorter than {MIN_HMAC_SECRET} bytes")
        if max_ttl < 1:
            raise ValueError("auth.tokens.max_ttl: must be at least 1 second")
        self._secrets = (secret, previous_secret) if previous_secret else (secret,)
        self.max_ttl, self.leeway = max_ttl, leeway
        self._clock = clock

    def mint(self, user: Any, tier: Any = None, ttl: Any = None, *, minted_by: str,
             kind: str = "user", tiers: Collection[str] | None = None) -> tuple[str, int]:
        """(token, expires_at as Unix seconds); InvalidRequest for a bad user, tier or ttl.

        `minted_by` is the minter (`key_minter(name)`, CLI, DEMO, SESSIONS): the user's
        namespace. `ttl` None is DEFAULT_TTL (at most max_ttl); `tiers`, when given, are the
        only tier names accepted (the configured ones, so a typo is a 400, not a silent default).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not 0 < len(minted_by) <= MAX_MINTED_BY_CHARS:
            raise ValueError(f"minted_by must be 1-{MAX_MINTED_BY_CHARS} characters")
        user, tier, ttl = check_request(user, tier, ttl, max_ttl=self.max_ttl, tiers=tiers)
        claims: dict[str, Any] = {"aud": ISSUER, "sub": user, "kind": kind,
                                  MINTED_BY: minted_by}
        if tier is not None:
            claims["tier"] = tier
        return self.sign(claims, ttl)

    def sign(self, claims: dict[str, Any], ttl: int) -> tuple[str, int]:
        """(token, expires_at): `claims` signed with the current secret, with `iss`, `iat` and
        `exp` (now + ttl) set. For the gateway's other kinds of token, which name their own
        `aud` and `kind`."""
        # PyJWT, and the OpenSSL bindings it loads (about 9 MB), at the first token: a gateway
        # that never signs or reads one does without them.
        import jwt

        now = int(self._clock())
        claims = {"iss": ISSUER, **claims, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self._secrets[0], algorithm=ALGORITHM), now + ttl

    def decode(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token signed with the secret (or the previous one) for `audience`;
        InvalidToken saying why."""
        import jwt  # at the first token, as in `sign`

        from .refusals import refusal

        for secret in self._secrets:
            try:
                return jwt.decode(token, secret, algorithms=[ALGORITHM], audience=audience,
                                  issuer=ISSUER, leeway=self.leeway,
                                  options={"require": REQUIRED_CLAIMS})
            except jwt.InvalidSignatureError as exc:
                last: jwt.PyJWTError = exc  # maybe signed with the other secret
            except jwt.PyJWTError as exc:
                if isinstance(exc, jwt.InvalidAudienceError) and audience == ISSUER \
                        and self._is_realtime(token):
                    raise InvalidToken("This is a realtime client secret: it opens realtime "
                                       "sessions (GET /v1/realtime, POST /v1/realtime/calls) "
                                       "and is not accepted by other routes.") from None
                raise refusal(exc) from None
        raise refusal(last)

    def _is_realtime(self, token: str) -> bool:
        try:
            self.decode(token, REALTIME_AUDIENCE)
        except InvalidToken:
            return False
        return True

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token minted with the secret (or the previous one); InvalidToken.
        `minted_by` is absent from tokens minted before it existed. A realtime client secret
        is refused, saying so."""
        claims = self.decode(token, ISSUER)
        if claims.get("kind") not in KINDS:
            raise InvalidToken("The token is not one this gateway minted (kind).")
        minted_by = claims.get(MINTED_BY)
        if minted_by is not None and not (isinstance(minted_by, str)
                                          and 0 < len(minted_by) <= MAX_MINTED_BY_CHARS):
            raise InvalidToken(f"The token's minter ({MINTED_BY}) is malformed.")
        tier = claims.get("tier")
        if tier is not None and not (isinstance(tier, str) and TIER_PATTERN.fullmatch(tier)):
            raise InvalidToken("The token's tier is malformed.")
        return claims

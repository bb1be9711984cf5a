"""Verifying the JWTs an app's login provider issues (`[[auth.issuers]]`), with PyJWT.

One `Issuer` per configured provider: its `iss`, audience, algorithm allowlist and keys (a
JWKS URL or file, or an HS secret). `verify(token, header)` returns the verified claims and
the key that verified them, or raises `InvalidToken` saying why - never repeating the token.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK
from jwt.algorithms import has_crypto

from ..config.access import MIN_HMAC_SECRET
from ..errors import InvalidToken
from .jwks import KeySet, SigningKey
from .refusals import refusal
from .remote import url_problem

log = logging.getLogger("gateway.auth")

#: Signature algorithms an allowlist may name. "none" (RFC 7518 section 3.6) is never one.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512", "EdDSA"})
SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
#: Claims every accepted token must carry: without exp a token is a credential forever.
REQUIRED_CLAIMS = ("exp", "iss", "sub")
#: Longest tier name taken from a claim; the tier labels metrics and logs.
MAX_TIER_CHARS = 64

def issuer_problems(*, issuer: str, jwks_url: str = "", jwks_file: str = "",
                    secret: str | None = None, algorithms: Collection[str] = ("RS256",),
                    ) -> list[str]:
    """One line per problem of an issuer's config (for `--check`); [] when it is usable.

    `secret` is None when the issuer has no secret_env, else the secret's value.
    """
    out = []
    if not issuer:
        out.append("issuer: is empty; it must equal the tokens' iss claim")
    sources = [name for name, on in (("jwks_url", jwks_url), ("jwks_file", jwks_file),
                                     ("secret_env", secret is not None)) if on]
    if len(sources) != 1:
        out.append(f"needs exactly one of jwks_url, jwks_file, secret_env "
                   f"(got {', '.join(sources) or 'none'})")
    if jwks_url and (problem := url_problem(jwks_url)):
        out.append(f"jwks_url: {problem}")
    algs = set(algorithms)
    if not algs:
        out.append("algorithms: is empty; name the algorithms the provider signs with")
    if unknown := sorted(a for a in algs if a not in ASYMMETRIC | SYMMETRIC):
        out.append(f"algorithms: {unknown} not supported (\"none\" is never accepted); "
                   f"expected some of {sorted(ASYMMETRIC | SYMMETRIC)}")
    # An allowlist that mixes families is how algorithm confusion starts: with RS256 and
    # HS256 both allowed, the public key could be tried as an HMAC secret.
    if secret is not None and algs - SYMMETRIC:
        out.append("algorithms: a secret_env issuer takes only HS256/HS384/HS512")
    if secret is None and algs & SYMMETRIC:
        out.append("algorithms: HS* needs secret_env (a key set never holds shared secrets)")
    if algs & ASYMMETRIC and not has_crypto:
        out.append("algorithms: RS*/PS*/ES*/EdDSA need the 'cryptography' package installed")
    if secret is not None and len(secret.encode()) < MIN_HMAC_SECRET:
        out.append(f"secret_env: the secret is shorter than {MIN_HMAC_SECRET} bytes")
    return out


class Issuer:
    """One login provider. Built once from its settings; `verify` is the per-token path."""

    def __init__(self, *, issuer: str, audience: str = "", jwks_url: str = "",
                 jwks_file: str = "", secret: str | None = None,
                 algorithms: Collection[str] = ("RS256",), leeway: float = 30.0,
                 tier_claim: str = "", jwks_cooldown: float = 30.0,
                 session: Callable[[], aiohttp.ClientSession] | None = None):
        problems = issuer_problems(issuer=issuer, jwks_url=jwks_url, jwks_file=jwks_file,
                                   secret=secret, algorithms=algorithms)
        if problems:
            raise ValueError(f"issuer {issuer!r}: " + "; ".join(problems))
        self.issuer, self.audience = issuer, audience
        self.algorithms = frozenset(algorithms)
        self.leeway, self.tier_claim = leeway, tier_claim
        self._secret = secret
        self.keys = None if secret is not None else KeySet(
            url=jwks_url, file=jwks_file, session=session, cooldown=jwks_cooldown)
        self._options: Any = {"require": list(REQUIRED_CLAIMS), "verify_aud": bool(audience)}

    @property
    def ready(self) -> bool:
        return self.keys is None or self.keys.ready

    @asynccontextmanager
    async def running(self):
        if self.keys is None:
            yield self
            return
        async with self.keys.running():
            if not self.keys.ready:
                log.warning("issuer %s: no signing keys yet; its tokens get 401 until the "
                            "key set loads", self.issuer)
            yield self

    async def verify(self, token: str, header: dict[str, Any]
                     ) -> tuple[dict[str, Any], SigningKey | None]:
        """The token's verified claims and the key set's key that verified them (None for a
        secret_env issuer, whose secret lasts as long as the process); raises InvalidToken."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            named = f" ({alg})" if alg in ASYMMETRIC | SYMMETRIC else ""
            raise InvalidToken(f"The token's algorithm{named} is not allowed for its issuer "
                               f"(allowed: {', '.join(sorted(self.algorithms))}).")
        key: PyJWK | str
        signing: SigningKey | None = None
        if self._secret is not None:
            key = self._secret
        else:
            assert self.keys is not None
            kid = header.get("kid")
            found = await self.keys.key_or_refetch(kid if isinstance(kid, str) else None, alg)
            if found is None:
                raise InvalidToken("The token's signing key (kid) is not one of its issuer's "
                                   "current keys.")
            signing, key = found
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience or None,
                                issuer=self.issuer, leeway=self.leeway, options=self._options)
        except jwt.PyJWTError as exc:
            raise refusal(exc) from None
        return claims, signing

    def tier(self, claims: dict[str, Any], known: Collection[str] = ()) -> str | None:
        """The tier a verified token names through `tier_claim`, or None.

        The claim is looked up by its exact name first (Auth0's namespaced claims hold dots:
        "https://example.com/plan"), then as a dotted path ("app_metadata.plan"). A list
        (Keycloak roles, Cognito groups) gives its first member that is a `known` tier.
        """
        if not self.tier_claim:
            return None
        value: Any = claims.get(self.tier_claim)
        if value is None and "." in self.tier_claim:
            value = claims
            for part in self.tier_claim.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v in known), None)
        if isinstance(value, str) and 0 < len(value) <= MAX_TIER_CHARS:
            return value
        return None

"""The auth components, built from settings once per process.

`Auth(settings, session, demo=...)` holds the bearer resolver (login providers' JWTs and the
gateway's own tokens), the minter and the captcha verifier, the last two None when their
section is off, and the signer of realtime client secrets (`realtime`, always there). The
routes they serve are `http.tokens.token_routes(auth, ...)`.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

import aiohttp

from ..config import Settings
from .bearer import BearerResolver
from .captcha import CaptchaVerifier
from .minted import TokenMinter, new_secret
from .realtime_secrets import RealtimeSecrets


class Auth:
    """What `[auth]` turns on. In demo mode the minter has a random per-start secret when
    none is configured, so the playground's "sign in as" works without set-up."""

    def __init__(self, settings: Settings, session: Callable[[], aiohttp.ClientSession], *,
                 demo: bool = False):
        a = settings.auth
        secret = settings.token_secret or (new_secret() if demo else "")
        self.minter = TokenMinter(secret=secret, previous_secret=settings.token_previous_secret,
                                  max_ttl=a.tokens.max_ttl) if secret else None
        issuers: list = []
        if a.issuers:  # PyJWT and OpenSSL's bindings (about 9 MB) only for a login provider
            from .issuers import Issuer

            issuers = [Issuer(issuer=i.issuer, audience=i.audience, jwks_url=i.jwks_url,
                              jwks_file=i.jwks_file, secret=s or None, algorithms=i.algorithms,
                              leeway=float(i.leeway), tier_claim=i.tier_claim,
                              jwks_cooldown=i.jwks_cooldown, session=session)
                       for i, s in zip(a.issuers, settings.issuer_secrets, strict=True)]
        self.tiers = tuple(settings.tiers)
        # Realtime client secrets are signed with the same secret (a random one per process
        # without it); the resolver knows their signer either way, so that another route
        # refuses one (401, saying why) instead of serving it as an anonymous request.
        self.realtime = RealtimeSecrets(
            secret=secret, previous_secret=settings.token_previous_secret if secret else "",
            max_ttl=settings.realtime.max_ttl)
        self.bearer = BearerResolver(issuers=issuers, minter=self.minter,
                                     known_tiers=self.tiers, own=self.realtime.minter)
        sessions = a.sessions
        self.captcha = CaptchaVerifier(url=sessions.captcha_verify_url,
                                       secret=settings.captcha_secret, session=session,
                                       hostnames=sessions.hostnames) \
            if sessions.captcha_verify_url and self.minter is not None else None
        self.session_tier, self.session_ttl = sessions.tier, sessions.ttl
        self.demo = demo

    @asynccontextmanager
    async def running(self):
        async with self.bearer.running():
            yield self

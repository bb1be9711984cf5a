"""Building the auth components from settings, and their routes.

`Auth(settings, session, demo=...)` holds the bearer resolver (login providers' JWTs and the
gateway's own tokens), the minter and the captcha verifier, each None when its section is off.
`routes()` lists the POST routes the app registers (under CORS and the Origin check).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from ..config.settings import ClientSettings, Settings
from ..http.tokens import demo_token_handler, session_handler, tokens_handler
from .bearer import BearerResolver
from .captcha import CaptchaVerifier
from .issuers import Issuer
from .minted import TokenMinter, new_secret

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Auth:
    """What `[auth]` turns on. In demo mode the minter has a random per-start secret when
    none is configured, so the playground's "sign in as" works without set-up."""

    def __init__(self, settings: Settings, session: Callable[[], aiohttp.ClientSession], *,
                 demo: bool = False):
        a = settings.auth
        secret = settings.token_secret or (new_secret() if demo else "")
        self.minter = TokenMinter(secret=secret, previous_secret=settings.token_previous_secret,
                                  max_ttl=a.tokens.max_ttl) if secret else None
        issuers = [Issuer(issuer=i.issuer, audience=i.audience, jwks_url=i.jwks_url,
                          jwks_file=i.jwks_file, secret=s or None, algorithms=i.algorithms,
                          leeway=float(i.leeway), tier_claim=i.tier_claim,
                          jwks_cooldown=i.jwks_cooldown, session=session)
                   for i, s in zip(a.issuers, settings.issuer_secrets, strict=True)]
        self.tiers = tuple(settings.tiers)
        self.bearer = BearerResolver(issuers=issuers, minter=self.minter,
                                     known_tiers=self.tiers)
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

    def routes(self, *, client_key: Callable[[str | None], ClientSettings | None],
               count_mint: Callable[[web.Request, ClientSettings],
                                    Awaitable[Mapping[str, str]]],
               address_of: Callable[[web.Request], str],
               check_rate: Callable[[str], Awaitable[None]]) -> list[tuple[str, Handler]]:
        """The routes to register. `client_key` and `count_mint`: see `tokens_handler`;
        `address_of` and `check_rate`: see `session_handler`."""
        out: list[tuple[str, Handler]] = []
        if self.minter is None:
            return out
        out.append(("/gateway/tokens", tokens_handler(
            minter=self.minter, client_key=client_key, count=count_mint,
            tiers=self.tiers or None)))
        if self.captcha is not None:
            out.append(("/gateway/session", session_handler(
                verifier=self.captcha, minter=self.minter, tier=self.session_tier,
                ttl=min(self.session_ttl, self.minter.max_ttl), address_of=address_of,
                check_rate=check_rate)))
        if self.demo:
            out.append(("/gateway/demo-token", demo_token_handler(
                minter=self.minter, tiers=self.tiers or None)))
        return out

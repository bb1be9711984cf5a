"""The gateway's own token routes: minted tokens, captcha sessions and the demo's sign-in.

Each factory takes its components as keyword arguments and returns an aiohttp handler;
`token_routes` lists those `[auth]` turns on, and the app registers them (with CORS and the
Origin check around them, like every route). Refusals
are GatewayErrors, rendered in OpenAI's shape by the app's outermost middleware.

- POST /gateway/tokens   a client key in Authorization; {"user", "tier", "ttl"}
                         -> {"token", "expires_at", "user", "tier"}; counted against the
                         key's request limit, only the tiers the key may mint
- POST /gateway/session  {"captcha"} -> {"token", "expires_at"}; limited per address
- POST /gateway/demo-token (--demo only) {"user", "tier"} -> like /gateway/tokens
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

from ..config import ClientSettings
from ..errors import BodyTooLarge, InvalidClientKey, InvalidRequest
from ..identity.auth import Auth
from ..identity.bearer import caller_id
from ..identity.captcha import MAX_RESPONSE_CHARS, CaptchaVerifier
from ..identity.minted import DEMO, ISSUER, SESSIONS, TokenMinter, choose_tier, key_minter
from ..policy.jsonbody import parse_object
from ..policy.refusal import Refusal, shown

log = logging.getLogger("gateway.auth")

#: These bodies are a few fields; anything bigger is not one of them.
MAX_BODY_BYTES = 16384
#: Token answers must not be stored by any cache on the way (RFC 6749 section 5.1).
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_object(request: web.Request, fields: Collection[str]) -> dict[str, Any]:
    """The JSON object body, read as strictly as the API's (policy.jsonbody: no duplicate key,
    bounded nesting); 400 naming the param for that or for a field not in `fields`."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise BodyTooLarge("Request body is too large.")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge("Request body is too large.")
    try:
        doc = parse_object(raw)
    except Refusal as refusal:
        raise InvalidRequest(refusal.message, param=refusal.param) from None
    for name in doc:
        if name not in fields:
            raise InvalidRequest(f"Unknown parameter: '{shown(name, 64)}'.",
                                 param=shown(name, 64))
    return doc


def _token_answer(token: str, expires_at: int, headers: Mapping[str, str] | None = None,
                  **extra: Any) -> web.Response:
    return web.json_response({"token": token, "expires_at": expires_at, **extra},
                             headers={**NO_STORE, **(headers or {})})


def tokens_handler(*, minter: TokenMinter,
                   client_key: Callable[[str | None], ClientSettings | None],
                   count: Callable[[web.Request, ClientSettings], Awaitable[Mapping[str, str]]],
                   tiers: Collection[str] | None = None) -> Handler:
    """POST /gateway/tokens. `client_key(authorization)` is the client key the header
    carries, None when it carries none or an unknown one (401). `count(request, key)` counts
    the request against the key's own request limit, before the body is read, and returns
    the limit headers (raises RateLimited). `tiers`: the tier names a token may name (None:
    any well-formed name); the key narrows them with its mint_tiers."""

    async def handler(request: web.Request) -> web.StreamResponse:
        key = client_key(request.headers.get("Authorization"))
        if key is None:
            raise InvalidClientKey("Minting a token needs a client key: send "
                                   "'Authorization: Bearer <client key>'.")
        headers = await count(request, key)
        body = await read_object(request, ("user", "tier", "ttl"))
        tier = choose_tier(body.get("tier"), own=key.tier, allowed=key.mintable_tiers)
        minted_by = key_minter(key.name)
        token, expires_at = minter.mint(body.get("user"), tier, body.get("ttl"),
                                        minted_by=minted_by, tiers=tiers)
        log.info("client %s minted a token for %s (tier %s), expires at %d", key.name,
                 caller_id("user", ISSUER, body["user"], minted_by), tier, expires_at)
        return _token_answer(token, expires_at, headers, user=body["user"], tier=tier)

    return handler


def session_handler(*, verifier: CaptchaVerifier, minter: TokenMinter, tier: str | None,
                    ttl: int, address_of: Callable[[web.Request], str],
                    check_rate: Callable[[str], Awaitable[None]] | None = None) -> Handler:
    """POST /gateway/session. `address_of(request)` is the client's address (trusted proxies
    applied); `check_rate(address)` raises RateLimited when the address made too many
    sessions, and is called before the body is read or the provider asked."""
    if not 1 <= ttl <= minter.max_ttl:
        raise ValueError(f"auth.sessions.ttl: {ttl} is not within 1..auth.tokens.max_ttl "
                         f"({minter.max_ttl})")

    async def handler(request: web.Request) -> web.StreamResponse:
        address = address_of(request)
        if check_rate is not None:
            await check_rate(address)
        body = await read_object(request, ("captcha",))
        answer = body.get("captcha")
        if not isinstance(answer, str) or not 0 < len(answer) <= MAX_RESPONSE_CHARS:
            raise InvalidRequest(f"'captcha' must be the widget's response, a string of 1 to "
                                 f"{MAX_RESPONSE_CHARS} characters.", param="captcha")
        await verifier.verify(answer, address)
        subject = "session:" + secrets.token_urlsafe(12)
        token, expires_at = minter.mint(subject, tier, ttl, kind="session", minted_by=SESSIONS)
        return _token_answer(token, expires_at)

    return handler


def demo_token_handler(*, minter: TokenMinter, tier: str = "free",
                       tiers: Collection[str] | None = None) -> Handler:
    """POST /gateway/demo-token, for the playground's "sign in as" (register only in --demo:
    anyone who reaches it gets a token for any user)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await read_object(request, ("user", "tier"))
        chosen = body.get("tier", tier)
        token, expires_at = minter.mint(body.get("user"), chosen, None, minted_by=DEMO,
                                        tiers=tiers)
        return _token_answer(token, expires_at, user=body["user"], tier=chosen)

    return handler


def token_routes(auth: Auth, *, client_key: Callable[[str | None], ClientSettings | None],
                 count_mint: Callable[[web.Request, ClientSettings],
                                      Awaitable[Mapping[str, str]]],
                 address_of: Callable[[web.Request], str],
                 check_rate: Callable[[str], Awaitable[None]]) -> list[tuple[str, Handler]]:
    """The POST routes `auth` serves, to register. `client_key` and `count_mint`: see
    `tokens_handler`; `address_of` and `check_rate`: see `session_handler`."""
    out: list[tuple[str, Handler]] = []
    if auth.minter is None:
        return out
    out.append(("/gateway/tokens", tokens_handler(
        minter=auth.minter, client_key=client_key, count=count_mint, tiers=auth.tiers or None)))
    if auth.captcha is not None:
        out.append(("/gateway/session", session_handler(
            verifier=auth.captcha, minter=auth.minter, tier=auth.session_tier,
            ttl=min(auth.session_ttl, auth.minter.max_ttl), address_of=address_of,
            check_rate=check_rate)))
    if auth.demo:
        out.append(("/gateway/demo-token", demo_token_handler(
            minter=auth.minter, tiers=auth.tiers or None)))
    return out
